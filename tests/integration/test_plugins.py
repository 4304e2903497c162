"""Plugins installed from tests/plugins (a real `pip install`), used through the flow and the CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from docingest import plugins
from docingest.flows.ingest import ingest_documents
from docingest.options import ChunkOptions, IngestOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXE = Path(sys.executable).with_name("docingest")
PLUGINS = Path(__file__).resolve().parents[1] / "plugins"  # tests/plugins


def pip_install(package: str, target: Path) -> Path:
    """Build and install a plugin package from tests/plugins into its own folder (no index, no deps)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(PLUGINS / package)], check=True,
                   capture_output=True, timeout=300)
    return target


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory):
    """The example plugin package on sys.path (so spawned parse workers see it too) for this module only."""
    target = pip_install("docingest-example-plugin", tmp_path_factory.mktemp("example-plugin"))
    sys.path.insert(0, str(target))
    plugins.clear_cache()
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("docingest_example_plugin", None)
    plugins.clear_cache()


def write_docs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rotation.note").write_text(
        "Title: Rotating the signing keys\nTags: security, operations\n\n"
        "Signing keys are rotated every ninety days by the platform team.\n\n"
        "The old key stays valid for verification during a grace period of one week.\n")
    (folder / "onboarding.note").write_text(
        "Title: Onboarding\n\nNew engineers receive a laptop and a hardware token on their first day.\n")
    (folder / "broken.note").write_text("no title line here\n\njust text\n")
    (folder / "guide.md").write_text("# Deployment guide\n\nDeployments run through the release pipeline.\n")
    return folder


@pytest.fixture
def points(written_store):
    """``points(collection) -> [payload]``: the payloads of a collection in the store the test's runs wrote."""
    return lambda collection: [p["payload"] for p in written_store().points(collection)]


def bump_version(monkeypatch, version: str) -> None:
    """A new release of the example plugin (its classes read the version at import)."""
    monkeypatch.setenv("DOCINGEST_EXAMPLE_PLUGIN_VERSION", version)
    importlib.reload(importlib.import_module("docingest_example_plugin"))
    plugins.clear_cache()


def test_parser_and_enricher_plugins_through_the_flow(prefect_server, home, tmp_path, example_plugin, monkeypatch, points):
    docs = write_docs(tmp_path / "docs")
    # Default isolation: parsing happens in spawned worker processes, which find the plugin on their own.
    result = ingest_documents(source=str(docs), collection="notes")
    assert result.documents.new == 4 and result.documents.failed == 1, result.failures
    [failure] = result.failures
    assert failure.source.endswith("broken.note") and failure.stage == "parse"
    assert "parser plugin 'notes' failed" in failure.error and "Title" in failure.error
    payloads = points("notes")
    by_path = {p["path"]: p for p in payloads}
    assert by_path["rotation.note"]["parser"] == "plugin:notes==0.1.0"
    assert by_path["rotation.note"]["headings"] == ["Rotating the signing keys"]
    assert by_path["guide.md"]["parser"] == "docling"

    # Re-run: nothing changed. A new release of the parser re-processes only the documents of its format.
    again = ingest_documents(source=str(docs), collection="notes")
    assert again.documents.unchanged == 3 and again.chunks.embedded == 0
    bump_version(monkeypatch, "0.2.0")
    bumped = ingest_documents(source=str(docs), collection="notes")
    assert (bumped.documents.changed, bumped.documents.unchanged) == (3, 1), bumped.outcomes
    changed = {o.path for o in bumped.outcomes if o.change and o.change.value == "changed"}
    assert changed == {"rotation.note", "onboarding.note", "broken.note"}
    assert {p["parser"] for p in points("notes") if p["path"].endswith(".note")} == {"plugin:notes==0.2.0"}

    # An enricher shapes every document: all are re-processed, and its fields land in every payload.
    enriched = ingest_documents(source=str(docs), collection="notes",
                                options=IngestOptions(chunk=ChunkOptions(enrichers=["keywords"])))
    assert enriched.documents.changed == 4 and enriched.documents.failed == 1
    payloads = points("notes")
    assert all("keywords" in p and p["word_count"] > 0 for p in payloads)
    rotation = next(p for p in payloads if p["path"] == "rotation.note" and "ninety" in p["text"])
    assert "signing" in rotation["keywords"] and "keys" in rotation["keywords"]


def test_embedder_and_chunker_plugins_from_the_cli(tmp_path, example_plugin, prefect_home):
    docs = write_docs(tmp_path / "docs")
    (docs / "broken.note").unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DOCINGEST_"))}
    env.update(PYTHONPATH=str(example_plugin), PREFECT_HOME=prefect_home(tmp_path / "prefect-home"))
    work = tmp_path / "work"
    work.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(EXE), *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    listing = cli("plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    found = {(p["group"], p["name"]): p for p in json.loads(listing.stdout)["plugins"]}
    assert set(found) == {("docingest.parsers", "notes"), ("docingest.chunkers", "paragraphs"),
                          ("docingest.embedders", "hashing"), ("docingest.enrichers", "keywords")}
    assert found[("docingest.parsers", "notes")]["formats"] == ["note"]
    assert found[("docingest.parsers", "notes")]["package"] == "docingest-example-plugin"

    run = cli("ingest", str(docs), "-c", "hashed", "--model", "plugin:hashing", "--chunker", "paragraphs", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["documents"]["new"] == 3
    hits = cli("search", "how often are signing keys rotated", "-c", "hashed", "--json")
    assert hits.returncode == 0, hits.stderr[-3000:]
    top = json.loads(hits.stdout)["hits"][0]
    assert top["path"] == "rotation.note" and "ninety days" in top["text"]  # one paragraph per chunk
    # A misspelt plugin name: exit 2, one line naming it and what is installed.
    wrong = cli("ingest", str(docs), "-c", "hashed", "--enricher", "keyword")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        "error: no enricher plugin named 'keyword' (docingest.enrichers: keywords); `docingest plugins` lists them"]


def test_a_broken_plugin_is_named_not_a_traceback(tmp_path, prefect_home):
    broken = pip_install("docingest-broken-plugin", tmp_path / "broken-plugin")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nSome text.\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DOCINGEST_"))}
    env.update(PYTHONPATH=str(broken), PREFECT_HOME=prefect_home(tmp_path / "prefect-home"))

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(EXE), *args], cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True,
                              timeout=300)

    listing = cli("plugins")
    assert listing.returncode == 1
    assert "parser plugin 'broken' (docingest-broken-plugin)" in listing.stderr
    assert "No module named 'docingest_missing_dependency'" in listing.stderr

    run = cli("ingest", str(docs), "-c", "c")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: parser plugin 'broken' (docingest.parsers, from docingest-broken-plugin 0.0.1) "
                           "is broken: failed to load docingest_broken_plugin:Parser: ModuleNotFoundError"), line
    assert "DOCINGEST_DISABLED_PLUGINS=broken" in line

    disabled = cli("ingest", str(docs), "-c", "c", "--json", DOCINGEST_DISABLED_PLUGINS="broken")
    assert disabled.returncode == 0, disabled.stderr[-2000:]
    assert json.loads(disabled.stdout)["documents"]["new"] == 1


def test_model_migration_switches_the_alias_and_search_never_breaks(prefect_server, home, tmp_path, example_plugin, written_store):
    """ingest (bundled model, 384 dims) -> migrate to plugin:hashing (64 dims) while searches run -> migrate back."""
    import threading

    from typer.testing import CliRunner

    from docingest.cli import app
    from docingest.migrate import migrate_collection
    from docingest.retrieval import collection_model, search

    docs = write_docs(tmp_path / "docs")
    (docs / "broken.note").unlink()
    first = ingest_documents(source=str(docs), collection="mig")
    assert first.documents.new == 3
    store = written_store()
    assert store.resolve("mig") == "mig__v1"

    stop, errors, searches = threading.Event(), [], []

    def keep_searching():
        while not stop.is_set():
            try:
                hits = search("signing keys rotation", "mig", limit=3)
                searches.append(hits[0].path if hits else None)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(exc))

    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    try:
        result = migrate_collection("mig", "plugin:hashing")
    finally:
        stop.set()
        searcher.join()
    assert result.switched and (result.old, result.new) == ("mig__v1", "mig__v2") and result.old_deleted
    assert result.sources == [f"file://{docs}"] and result.documents == 3 and result.failed == 0
    assert errors == [] and len(searches) > 3 and None not in searches  # search worked before, during and after
    assert store.resolve("mig") == "mig__v2" and "mig__v1" not in store.list_collections()
    assert collection_model(store, "mig")[0] == "plugin:hashing"
    assert search("signing keys rotation", "mig", limit=1)[0].path == "rotation.note"

    # The flow addresses the alias and keeps the collection's (migrated) model: a plain incremental sync finds
    # everything unchanged. The old model, given explicitly, no longer fits, and the error says what to do.
    again = ingest_documents(source=str(docs), collection="mig")
    assert again.documents.unchanged == 3 and again.chunks.embedded == 0
    with pytest.raises(Exception, match="docingest migrate"):
        ingest_documents(source=str(docs), collection="mig",
                         options=IngestOptions(embed={"model": "sentence-transformers/all-MiniLM-L6-v2"}))

    # Back to the bundled model from the CLI, keeping the previous collection.
    done = CliRunner().invoke(app, ["migrate", "-c", "mig", "--model", "all-minilm-l6-v2", "--keep-old", "--json",
                                    "--qdrant-path", str(home / "qdrant")])
    assert done.exit_code == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["old"], data["new"], data["switched"], data["old_deleted"]) == ("mig__v2", "mig__v3", True, False)
    assert store.resolve("mig") == "mig__v3" and "mig__v2" in store.list_collections()


def test_migrating_a_plain_collection_made_before_aliases(prefect_server, home, tmp_path, example_plugin, written_store):
    docs = write_docs(tmp_path / "docs")
    (docs / "broken.note").unlink()
    store = written_store()
    store.ensure_collection("legacy", 64, alias=False)  # what earlier versions created: no alias
    hashing = IngestOptions(embed={"model": "plugin:hashing"})
    assert ingest_documents(source=str(docs), collection="legacy", options=hashing).documents.new == 3
    assert store.resolve("legacy") == "legacy"  # still the plain collection: the flow keeps using it

    from docingest.migrate import migrate_collection

    result = migrate_collection("legacy", "all-minilm-l6-v2", keep_old=True)
    assert result.switched and (result.old, result.new) == ("legacy", "legacy__v2")
    assert result.old_deleted  # a plain collection must go for its name to become the alias (keep_old cannot apply)
    assert store.resolve("legacy") == "legacy__v2" and store.count("legacy") == store.count("legacy__v2") > 0
    again = ingest_documents(source=str(docs), collection="legacy")
    assert again.documents.unchanged == 3
