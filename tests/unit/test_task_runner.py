"""The flow's task runner is chosen when a run starts (flows/runners.py), not when the flow module is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from docingest.exceptions import ConfigurationError
from docingest.flows.runners import SettingsTaskRunner, make_task_runner

pytestmark = pytest.mark.unit


def test_importing_the_flow_with_dask_selected_and_prefect_dask_missing_does_not_raise():
    """prefect_dask made unimportable (None in sys.modules): the import succeeds; the run's start says what is
    missing, in one line."""
    script = ("import sys; sys.modules['prefect_dask'] = None\n"
              "from docingest.flows.ingest import ingest_documents\n"
              "from docingest.exceptions import ConfigurationError\n"
              "try:\n    ingest_documents.task_runner.duplicate()\n"
              "except ConfigurationError as exc:\n    print('refused:', exc)\n")
    env = {**os.environ, "DOCINGEST_TASK_RUNNER": "dask"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: the dask task runner needs prefect-dask" in done.stdout


def test_the_runner_follows_the_settings_at_each_run_start(monkeypatch):
    from docingest.settings import get_settings

    placeholder = SettingsTaskRunner()
    monkeypatch.setenv("DOCINGEST_TASK_RUNNER", "threads")
    get_settings.cache_clear()
    try:
        first = placeholder.duplicate()
        assert type(first) is ThreadPoolTaskRunner and first is not placeholder
        monkeypatch.setitem(sys.modules, "prefect_dask", None)
        monkeypatch.setenv("DOCINGEST_TASK_RUNNER", "dask")
        get_settings.cache_clear()
        with pytest.raises(ConfigurationError, match="needs prefect-dask"):
            placeholder.duplicate()
        with pytest.raises(ConfigurationError, match="unknown task runner 'ray'"):
            make_task_runner("ray")
    finally:
        get_settings.cache_clear()
