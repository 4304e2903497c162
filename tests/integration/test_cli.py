"""The CLI contract: JSON shapes, exit codes, one-line errors; once in-process and once as the real console script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docingest.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
runner = CliRunner()


@pytest.fixture
def handbook(tmp_path) -> Path:
    docs = tmp_path / "handbook"
    docs.mkdir()
    (docs / "keys.md").write_text(
        "# Security handbook\n\n## Rotating keys\n\nTo rotate the API keys, run `vault rotate` and restart the gateway."
        " Old keys stay valid for one hour.\n"
    )
    (docs / "holidays.md").write_text("# Holidays\n\nThe office is closed on public holidays and between Christmas"
                                      " and New Year.\n")
    return docs


def invoke(args):
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def test_ingest_and_search_json_contract(prefect_server, home, handbook):
    code, stdout, _ = invoke(["ingest", str(handbook), "--collection", "handbook", "--json"])
    assert code == 0
    data = json.loads(stdout)  # stdout is exactly one JSON object
    assert data["collection"] == "handbook"
    assert data["documents"] == {"seen": 2, "new": 2, "changed": 0, "unchanged": 0, "deleted": 0, "failed": 0,
                                 "skipped": 0}
    assert data["chunks"]["embedded"] == data["chunks"]["upserted"] >= 2
    assert data["failures"] == [] and data["skipped"] == []
    assert isinstance(data["duration_s"], float) and data["flow_run_id"]

    code, stdout, _ = invoke(["search", "how do I rotate the keys", "--collection", "handbook", "--limit", "5",
                              "--json"])
    assert code == 0
    hits = json.loads(stdout)["hits"]
    assert json.loads(stdout)["mode"] == "hybrid"
    assert len(hits) == 2
    assert set(hits[0]) == {"score", "source", "path", "chunk_index", "text", "headings"}
    assert hits[0]["path"] == "keys.md" and "vault rotate" in hits[0]["text"]
    assert hits[0]["headings"] == ["Security handbook", "Rotating keys"]
    assert hits[0]["source"].startswith("file://") and hits[0]["score"] > hits[1]["score"]

    code, stdout, _ = invoke(["ingest", str(handbook), "--collection", "handbook", "--json"])
    assert code == 0 and json.loads(stdout)["documents"]["unchanged"] == 2


def test_exit_1_when_some_documents_fail(prefect_server, home, handbook):
    (handbook / "broken.pptx").write_bytes(b"PK\x03\x04 truncated")
    code, stdout, _ = invoke(["ingest", str(handbook), "-c", "partial", "--json"])
    assert code == 1
    data = json.loads(stdout)
    assert data["documents"]["failed"] == 1
    assert data["failures"][0]["source"].endswith("broken.pptx") and data["failures"][0]["stage"] == "parse"


def test_human_output_has_summary_table(prefect_server, home, handbook):
    code, stdout, _ = invoke(["ingest", str(handbook), "-c", "human"])
    assert code == 0
    assert "unchanged" in stdout and "human" in stdout
    code, stdout, _ = invoke(["search", "holidays", "-c", "human"])
    assert code == 0 and "holidays.md" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "/definitely/not/here", "-c", "x"], "source not found"),
        (["ingest", ".", "-c", "x", "--qdrant-url", "http://127.0.0.1:9"], "Qdrant at http://127.0.0.1:9"),
        (["search", "anything", "-c", "never-created"], "unknown collection"),
        (["search", "anything", "-c", "x", "--qdrant-url", "http://127.0.0.1:9"], "Qdrant at http://127.0.0.1:9"),
        (["ingest", ".", "-c", "bad/name"], "invalid collection name"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(prefect_server, home, args, message):
    code, stdout, stderr = invoke(args)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr + stdout
    assert len(stderr.strip().splitlines()) == 1


def test_console_script_on_embedded_defaults(tmp_path, handbook, prefect_home):
    """The installed `docingest` command in a fresh process: ephemeral Prefect, local Qdrant under .docingest/."""
    exe = Path(sys.executable).with_name("docingest")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DOCINGEST_"))}
    env["PREFECT_HOME"] = prefect_home(tmp_path / "prefect-home")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([str(exe), "ingest", str(handbook), "-c", "handbook", "--json"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["documents"]["new"] == 2
    assert (work / ".docingest" / "qdrant" / "collections" / "handbook__v1").is_dir()  # behind the alias handbook
    proc = subprocess.run([str(exe), "search", "rotate keys", "-c", "handbook", "--json"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["hits"][0]["path"] == "keys.md"


def test_doctor_reports_what_works_and_what_does_not(home, handbook, monkeypatch, free_port):
    from docingest.settings import get_settings

    code, stdout, _ = invoke(["doctor", str(handbook), "--json"])
    data = json.loads(stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert code == 0 and data["ok"], data
    assert {"prefect api", "qdrant", "embedding model", "pdf models (accurate mode)", "ocr engine", "source"} <= set(
        checks)
    assert "384 dims" in checks["embedding model"]["detail"]
    assert checks["source"]["detail"].endswith("2 documents listed")
    assert checks["pdf models (accurate mode)"]["required"] is False  # optional: reported, never fails the doctor

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DOCINGEST_QDRANT_URL", dead)
    monkeypatch.setenv("DOCINGEST_PUSHGATEWAY_URL", dead)
    get_settings.cache_clear()
    code, stdout, _ = invoke(["doctor", "--json"])
    checks = {c["name"]: c for c in json.loads(stdout)["checks"]}
    assert code == 1
    assert not checks["qdrant"]["ok"] and checks["qdrant"]["detail"].startswith(dead)
    assert not checks["pushgateway"]["ok"] and checks["embedding model"]["ok"]
    code, stdout, _ = invoke(["doctor"])
    assert code == 1 and "FAIL" in stdout and "qdrant" in stdout


def test_a_model_whose_weights_do_not_load_stops_the_run_with_exit_2(prefect_server, home, handbook, tmp_path):
    """Its dimension comes from its config files, so the run starts; the weights fail at the first embedding, and
    that is the run's configuration error (one line, exit 2), not a failure of every document."""
    import shutil

    from docingest.core.embed import resolve_model_location

    bundled, _ = resolve_model_location("sentence-transformers/all-MiniLM-L6-v2")
    broken = tmp_path / "broken-model"
    shutil.copytree(bundled, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    code, stdout, stderr = invoke(["ingest", str(handbook), "-c", "broken-model", "--model", str(broken), "--json"])
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: cannot load embedding model") and len(stderr.strip().splitlines()) == 1


def test_a_cli_run_is_resolved_once(prefect_server, home, handbook, monkeypatch):
    """Preflight, the dry run's plan, the warm-up and the flow share one RunSpec: the source is opened and the model
    found once per command, and the options the flow runs with are the resolved, frozen ones."""
    from docingest.flows import runspec

    opened, specs = [], []
    real_open, real_resolve = runspec.open_source, runspec.resolve_spec

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return real_open(*args, **kwargs)

    def recording_resolve(inputs):
        specs.append(real_resolve(inputs))
        return specs[-1]

    monkeypatch.setattr(runspec, "open_source", counting_open)
    monkeypatch.setattr(runspec, "resolve_spec", recording_resolve)
    from docingest.flows import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "resolve_spec", recording_resolve)
    code, stdout, _ = invoke(["ingest", str(handbook), "-c", "once", "--window", "7", "--json"])
    assert code == 0 and json.loads(stdout)["documents"]["new"] == 2
    assert opened == [str(handbook)]  # one source for preflight, warm-up and the flow
    assert len({id(s) for s in specs}) == 1 and specs[0].options.window == 7
    with pytest.raises(Exception, match="frozen"):
        specs[0].options.window = 8  # options are never changed in place

    opened.clear()
    code, stdout, _ = invoke(["ingest", str(handbook), "-c", "once", "--dry-run", "--json"])
    assert code == 0 and json.loads(stdout)["counts"]["unchanged"] == 2 and opened == [str(handbook)]


def test_cli_defaults_and_help_come_from_the_options_models():
    """One source of truth: the CLI's help shows the options models' descriptions and defaults."""
    from docingest.options import IngestOptions, ParseOptions

    result = CliRunner().invoke(app, ["ingest", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stdout).split())  # the words, without rich's box
    assert f"[default: {ParseOptions().timeout_s}]" in text and f"[default: {IngestOptions().max_delete_ratio}]" in text
    assert "Per-document time limit for parse and chunk" in text
    assert "[default: 1024]" in text and "[default: english]" in text
