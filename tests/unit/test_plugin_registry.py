"""Plugin discovery, validation, error messages and fingerprints, with fake entry points (no install)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from docingest import plugins
from docingest.core.embed import ModelInfo
from docingest.core.plan import resolve_profile
from docingest.options import ChunkOptions, IngestOptions, ParseOptions
from docingest.settings import get_settings

pytestmark = pytest.mark.unit

MODEL = ModelInfo(name="m", location="/m", revision="r1", dimension=384, max_seq_length=256)


class Notes:
    name, version, capabilities, formats = "notes", "1.0", ["parse"], [".NOTE", "nt"]

    def parse(self, path, options):
        return "# x"


class Keywords:
    name, version, capabilities = "keywords", "2.0", ["enrich"]

    def enrich(self, chunks, path):
        return [{} for _ in chunks]


class NoParse:
    name, version, formats = "noparse", "0.1", ["zz"]


def fail_import():
    raise ImportError("No module named 'missing_dep'")


class FakeEntryPoint:
    def __init__(self, name, obj, group):
        self.name, self.obj, self.group, self.value = name, obj, group, f"pkg:{name}"
        self.dist = SimpleNamespace(metadata={"Name": "fake-pkg"}, version="9.9")

    def load(self):
        return self.obj() if self.obj is fail_import else self.obj


@pytest.fixture
def installed(monkeypatch):
    table: dict[str, list] = {}

    def entry_points(group):
        return table.get(group, [])

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    monkeypatch.delenv("DOCINGEST_DISABLED_PLUGINS", raising=False)
    get_settings.cache_clear()
    plugins.clear_cache()

    def add(kind, name, obj):
        group = plugins.GROUPS[kind]
        table.setdefault(group, []).append(FakeEntryPoint(name, obj, group))
        plugins.clear_cache()

    yield add
    plugins.clear_cache()


def test_discovery_normalizes_formats_and_instantiates_classes(installed):
    installed("parser", "notes", Notes)
    [info] = plugins.discover("parser")
    assert info.ok and isinstance(info.obj, Notes) and info.formats == ["note", "nt"]
    assert info.package == "fake-pkg" and info.fingerprint_part() == "parser:notes==1.0"
    assert plugins.parser_for(".note") is info and plugins.parser_for("md") is None


def test_broken_plugins_are_named(installed, monkeypatch):
    installed("parser", "broken", fail_import)
    installed("parser", "noparse", NoParse)
    errors = {p.entry_name: p.error for p in plugins.discover("parser")}
    assert errors["broken"] == "failed to load pkg:broken: ImportError: No module named 'missing_dep'"
    assert errors["noparse"] == "pkg:noparse does not provide parse"
    with pytest.raises(plugins.PluginError, match=r"parser plugin 'broken' \(docingest.parsers, from fake-pkg 9.9\) "
                       r"is broken: .*DOCINGEST_DISABLED_PLUGINS=broken"):
        plugins.parsers_by_format()
    monkeypatch.setenv("DOCINGEST_DISABLED_PLUGINS", "broken, noparse")
    get_settings.cache_clear()
    assert plugins.parsers_by_format() == {}


def test_two_parsers_for_one_format_are_refused(installed):
    installed("parser", "notes", Notes)
    installed("parser", "notes2", type("Notes2", (Notes,), {"name": "notes2"}))
    with pytest.raises(plugins.PluginError, match=r"'notes' and 'notes2' both handle .note"):
        plugins.parsers_by_format()


def test_unknown_plugin_lists_the_installed_ones(installed):
    installed("enricher", "keywords", Keywords)
    with pytest.raises(plugins.PluginError, match=r"no enricher plugin named 'kw' \(docingest.enrichers: keywords\)"):
        plugins.get("enricher", "kw")
    assert plugins.get("enricher", "keywords").obj.name == "keywords"


def test_fingerprints_follow_the_plugins_that_shaped_a_document(installed):
    fast = ParseOptions(pdf_mode="fast")
    before = resolve_profile(IngestOptions(parse=fast), MODEL)
    installed("parser", "notes", Notes)
    installed("enricher", "keywords", Keywords)
    with_parser = resolve_profile(IngestOptions(parse=fast), MODEL)
    # A parser plugin changes the fingerprint of its formats only.
    assert with_parser.fingerprint == before.fingerprint
    assert with_parser.fingerprint_for("a/b.md") == before.fingerprint
    assert with_parser.fingerprint_for("a/b.note") != before.fingerprint
    # An enricher shapes every document.
    enriched = resolve_profile(IngestOptions(parse=fast, chunk=ChunkOptions(enrichers=["keywords"])), MODEL)
    assert enriched.fingerprint != before.fingerprint
    assert enriched.fingerprint_for("b.note") not in (enriched.fingerprint, with_parser.fingerprint_for("b.note"))
