"""prefect.yaml's commented trigger example (reacting to the watch's per-document events) stays valid: uncommented, it
is a deployment whose trigger Prefect accepts (tests/integration/test_watch.py sees those events on a real server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

PREFECT_YAML = Path(__file__).resolve().parents[2] / "prefect.yaml"


def example() -> dict:
    text = PREFECT_YAML.read_text()
    block = text[text.index("  # - name: resync-on-failures"):]
    uncommented = "\n".join(re.sub(r"^  # ?", "  ", line) for line in block.splitlines() if line.startswith("  #"))
    head = text[:text.index("deployments:\n")]
    return yaml.safe_load(head + "deployments:\n" + uncommented + "\n")["deployments"][0]


def test_the_commented_trigger_is_a_valid_deployment_trigger():
    from prefect.events import DeploymentEventTrigger

    deployment = example()
    assert deployment["entrypoint"] == "src/docingest/flows/ingest.py:ingest_documents"
    trigger = DeploymentEventTrigger(**deployment["triggers"][0])
    assert trigger.expect == {"docingest.document.failed"}
    assert trigger.threshold == 5 and trigger.within.total_seconds() == 600
    assert trigger.match.model_dump(exclude_none=True) == {"prefect.resource.id": "docingest.collection.handbook"}

