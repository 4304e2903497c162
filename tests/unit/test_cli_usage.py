import os

import pytest
from typer.testing import CliRunner

from docingest.cli import app

pytestmark = pytest.mark.unit
runner = CliRunner()


@pytest.fixture(autouse=True)
def _own_environment():
    """The CLI quiets Prefect's loggers through the environment of its process: here that is the test session's,
    and later tests' flows would log nothing (their log assertions failed when these ran first)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "ingest" in result.output and "search" in result.output


def test_conflicting_qdrant_options_exit_2_with_one_line(tmp_path):
    result = runner.invoke(app, ["ingest", str(tmp_path), "-c", "x", "--qdrant-path", "q", "--qdrant-url", "http://h"])
    assert result.exit_code == 2
    assert "either --qdrant-path or --qdrant-url" in result.output
    assert "Traceback" not in result.output


def test_missing_collection_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["ingest", str(tmp_path)])
    assert result.exit_code == 2


def test_bad_pdf_mode_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["ingest", str(tmp_path), "-c", "x", "--pdf-mode", "magic"])
    assert result.exit_code == 2


@pytest.mark.parametrize("command", ["ingest", "search", "export", "convert-store", "doctor", "eval", "migrate",
                                     "serve", "plugins"])
def test_help_texts_say_what_an_option_does_not_what_it_measured(command):
    """Benchmark figures live in docs/performance.md: a help text that quotes one goes stale silently."""
    import re

    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert not re.search(r"measured|\d+(\.\d+)? ?% (faster|slower)|\d+(\.\d+)? ?[x×] (faster|slower)", text), text


def test_watch_takes_every_source_store_model_and_option_flag_of_ingest():
    """docs/cli.md names the only ones it leaves out: one-off run controls a live sync has no use for."""
    import typer.main

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]

    def flags(name: str) -> set[str]:
        return {flag for param in commands[name].params for flag in param.opts if flag.startswith("--")}

    one_off = {"--mode", "--force", "--dry-run", "--task-runner", "--dask-address"}
    assert flags("ingest") - flags("watch") == one_off
    assert {"--debounce-ms", "--rescan-s", "--poll-s"} <= flags("watch") - flags("ingest")


def test_watch_refuses_what_it_cannot_watch_with_exit_2(tmp_path):
    runner = CliRunner()
    for args in (["watch", str(tmp_path / "missing"), "-c", "kb"], ["watch", "ftp://host/docs", "-c", "kb"],
                 ["watch", "-c", "kb"], ["watch", str(tmp_path)]):
        result = runner.invoke(app, [*args, "--qdrant-path", str(tmp_path / "store")])
        assert result.exit_code == 2, (args, result.output)
