"""docingest.ingest / docingest.search: in scripts, inside a running event loop, and the example notebook."""

from __future__ import annotations

import asyncio

import pytest

import docingest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILES = ["md/sources/duck.md", "md/sources/nested.md", "html/sources/wiki_duck.html", "pdf/sources/multi_page.pdf"]


def test_ingest_and_search_inside_a_running_event_loop(prefect_server, home, tmp_path, corpus_copy):
    docs = corpus_copy(FILES, tmp_path / "docs")

    async def notebook_cell():  # what Jupyter does: synchronous calls on a thread that runs an event loop
        result = docingest.ingest(str(docs), "api", isolation="none", workers=1, progress=True)
        hits = docingest.search("what do ducks eat", "api", limit=3)
        return result, hits

    result, hits = asyncio.run(notebook_cell())
    assert isinstance(result, docingest.IngestResult) and result.documents.new == 4
    import pypdfium2

    assert result.pages == len(pypdfium2.PdfDocument(docs / "multi_page.pdf")) > 1  # parsed in this process too
    frame = result.to_dataframe()
    assert list(frame.columns) == ["source", "path", "status", "change", "stage", "error", "chunks"]
    assert sorted(frame["path"]) == ["duck.md", "multi_page.pdf", "nested.md", "wiki_duck.html"]
    assert set(frame["status"]) == {"success"} and frame["chunks"].sum() == result.chunks.upserted
    assert len(hits) == 3 and all(isinstance(h, docingest.SearchHit) for h in hits)
    hits_frame = hits.to_dataframe()
    assert hits_frame["score"].is_monotonic_decreasing and "duck" in hits_frame["path"].iloc[0]

    again = docingest.ingest(str(docs), "api", isolation="none", progress=False)  # a plain script call
    assert again.documents.unchanged == 4 and again.chunks.embedded == 0 and again.pages == 0


def test_unknown_and_invalid_options_are_configuration_errors():
    from docingest.api import build_options
    from docingest.exceptions import ConfigurationError

    opts = build_options(pdf_mode="fast", workers=3, preset="memory-efficient", enrichers=["x"], include=["*.md"])
    assert (opts.parse.pdf_mode.value, opts.workers, opts.chunk.enrichers, opts.source.include) == (
        "fast", 3, ["x"], ["*.md"])
    assert opts.resolved().window == 4 and opts.resolved().workers == 3  # explicit wins over the preset
    with pytest.raises(ConfigurationError, match="unknown option 'worker'; did you mean 'workers'"):
        build_options(worker=3)
    with pytest.raises(ConfigurationError, match="invalid option parse.pdf_mode"):
        build_options(pdf_mode="fastest")


def test_example_notebook_runs_top_to_bottom(tmp_path, monkeypatch, prefect_home, repo_root):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("DOCINGEST_HOME", str(tmp_path / ".docingest"))
    monkeypatch.setenv("PREFECT_HOME", prefect_home(tmp_path / "prefect-home"))
    for var in [v for v in __import__("os").environ if v.startswith("PREFECT_API")]:
        monkeypatch.delenv(var)  # the notebook's kernel uses its own ephemeral API, like a user's would
    notebook = nbformat.read(repo_root / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(repo_root / "examples")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "duck.md" in text and "unchanged" in text


def test_a_plain_script_without_a_main_guard_ingests_with_worker_processes(home, tmp_path):
    """The README's snippet pasted into a file as it is: parse workers (separate processes) must not run it again."""
    import subprocess
    import sys

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Keys\n\nRotate the keys every ninety days.\n")
    (docs / "b.md").write_text("# Lunch\n\nSoup on Fridays.\n")
    script = tmp_path / "ingest_script.py"
    marker = tmp_path / "runs.txt"
    script.write_text(
        "import docingest\n"
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        f"result = docingest.ingest({str(docs)!r}, 'script', progress=False)\n"
        "print('NEW', result.documents.new, 'FAILED', result.documents.failed)\n"
        "print('HIT', docingest.search('how often are keys rotated', 'script', limit=1)[0].path)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NEW 2 FAILED 0" in proc.stdout and "HIT a.md" in proc.stdout
    assert marker.read_text() == "ran\n"  # the script ran once: no worker re-imported it
