"""Plugins: parsers, chunkers, embedders and enrichers from other packages, found through entry points.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."docingest.parsers"]
    notes = "my_package:NotesParser"

The entry point names a class (instantiated without arguments) or an object. Every plugin declares ``name``,
``version`` and ``capabilities``; a parser also declares ``formats`` (file extensions). What each group must provide:

- ``docingest.parsers``: ``parse(path: Path, options: ParseOptions) -> DoclingDocument | str`` (a ``str`` is read
  as Markdown). Installed parsers are used for their formats automatically, before Docling's own.
- ``docingest.chunkers``: ``chunk(document: DoclingDocument, max_tokens: int, count_tokens) -> list`` of dicts (or
  objects) with ``text`` and optionally ``headings``, ``pages``, ``embed_text``. Chosen with ``--chunker NAME``.
- ``docingest.embedders``: ``dimension``, ``max_seq_length``, ``embed(texts: list[str]) -> list of vectors``, and
  optionally ``tokenizer`` (a Hugging Face tokenizer folder or name for chunk sizes; default: the bundled model's).
  Chosen with ``--model plugin:NAME``.
- ``docingest.enrichers``: ``enrich(chunks: list[Chunk], path: str) -> list[dict]`` (payload fields per chunk).
  Chosen with ``--enricher NAME`` (repeatable).

The settings fingerprint includes the name and version of every plugin that shaped a document, so a new plugin
version re-processes what it touched (a parser: only the documents of its formats).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from docingest.exceptions import ConfigurationError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from docingest.options import IngestOptions

GROUPS: dict[str, str] = {
    "parser": "docingest.parsers",
    "chunker": "docingest.chunkers",
    "embedder": "docingest.embedders",
    "enricher": "docingest.enrichers",
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "parser": ("parse", "formats"),
    "chunker": ("chunk",),
    "embedder": ("embed", "dimension", "max_seq_length"),
    "enricher": ("enrich",),
}


class PluginError(ConfigurationError):
    """A plugin that cannot be used: missing, broken at import, or not providing what its group needs."""


@dataclass
class PluginInfo:
    """One installed plugin, loaded (``obj``) or broken (``error``)."""

    kind: str
    entry_name: str
    target: str
    package: str
    package_version: str
    obj: Any = None
    error: str | None = None
    name: str = ""
    version: str = ""
    capabilities: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        return f"{self.kind} plugin {self.entry_name!r} ({GROUPS[self.kind]}, from {self.package} {self.package_version})"

    def fingerprint_part(self) -> str:
        return f"{self.kind}:{self.name}=={self.version}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"group": GROUPS[self.kind], "kind": self.kind, "name": self.name or self.entry_name,
                "version": self.version, "capabilities": self.capabilities, "formats": self.formats,
                "package": self.package, "package_version": self.package_version, "target": self.target,
                "ok": self.ok, "error": self.error}

    def require(self) -> Any:
        if self.error:
            raise PluginError(f"{self.label} is broken: {self.error}; fix or uninstall it, or set "
                              f"DOCINGEST_DISABLED_PLUGINS={self.entry_name}")
        return self.obj


_cache: dict[str, list[PluginInfo]] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget discovered plugins (after installing one in a running process, e.g. in tests)."""
    with _lock:
        _cache.clear()


def disabled() -> set[str]:
    from docingest.settings import get_settings

    return set(get_settings().disabled_plugins)


def _load(kind: str, ep: EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    info = PluginInfo(kind=kind, entry_name=ep.name, target=ep.value,
                      package=dist.metadata["Name"] if dist else "?", package_version=dist.version if dist else "?")
    try:
        loaded = ep.load()
        obj = loaded() if isinstance(loaded, type) else loaded
    except Exception as exc:  # noqa: BLE001 - any failure of a plugin's import is reported, naming the plugin
        info.error = f"failed to load {ep.value}: {type(exc).__name__}: {exc}"
        return info
    missing = [a for a in ("name", "version", *REQUIRED[kind]) if not hasattr(obj, a)]
    if missing:
        info.error = f"{ep.value} does not provide {', '.join(missing)}"
        return info
    info.obj, info.name, info.version = obj, str(obj.name), str(obj.version)
    info.capabilities = [str(c) for c in getattr(obj, "capabilities", []) or []]
    if kind == "parser":
        info.formats = sorted({str(f).lower().lstrip(".") for f in obj.formats})
        if not info.formats:
            info.error = f"{ep.value} declares no formats"
    return info


def discover(kind: str | None = None, include_disabled: bool = False) -> list[PluginInfo]:
    """Installed plugins of one kind (or all), loaded once per process; broken ones carry their error."""
    from importlib.metadata import entry_points

    kinds = [kind] if kind else list(GROUPS)
    found: list[PluginInfo] = []
    off = disabled()
    for k in kinds:
        with _lock:
            if k not in _cache:
                eps = sorted(entry_points(group=GROUPS[k]), key=lambda e: e.name)
                _cache[k] = [_load(k, ep) for ep in eps]
            found.extend(p for p in _cache[k] if include_disabled or p.entry_name not in off)
    return found


def get(kind: str, name: str) -> PluginInfo:
    """The usable plugin ``name`` of a kind; PluginError naming it when missing or broken."""
    for p in discover(kind):
        if p.entry_name == name or p.name == name:
            p.require()
            return p
    installed = ", ".join(p.entry_name for p in discover(kind)) or "none installed"
    raise PluginError(f"no {kind} plugin named {name!r} ({GROUPS[kind]}: {installed}); `docingest plugins` lists them")


def parsers_by_format() -> dict[str, PluginInfo]:
    """Extension -> parser plugin. Broken parsers and two parsers claiming one format are errors (PluginError):
    otherwise which parser handled a document would depend on what happened to load."""
    table: dict[str, PluginInfo] = {}
    for p in discover("parser"):
        p.require()
        for fmt in p.formats:
            if fmt in table:
                raise PluginError(f"parser plugins {table[fmt].entry_name!r} and {p.entry_name!r} both handle .{fmt}; "
                                  f"disable one with DOCINGEST_DISABLED_PLUGINS")
            table[fmt] = p
    return table


def parser_for(extension: str) -> PluginInfo | None:
    return parsers_by_format().get(extension.lower().lstrip("."))


def check(options: IngestOptions) -> None:
    """Every plugin a run would use loads (PluginError naming the first that does not): installed parsers, the
    chosen chunker, enrichers and embedder."""
    parsers_by_format()
    if options.chunk.chunker:
        get("chunker", options.chunk.chunker)
    for name in options.chunk.enrichers:
        get("enricher", name)
    model = options.embed.model or ""
    if model.startswith("plugin:"):
        get("embedder", model.removeprefix("plugin:"))
