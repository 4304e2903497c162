"""A run, resolved once: where it writes, what it reads, the model, the profile and the options, frozen.

``resolve_spec`` is the one function that turns a run's inputs (source or source block, collection or collection
block, Qdrant override or block, embedder block, options, preset) into a :class:`RunSpec`. Preflight, the dry run,
warm-up and the flow all read a run through it; the Python API, ``migrate`` and the upload service run the flow, so
they do too. The CLI resolves a run before Prefect's temporary server is up and pins that spec (``pinned``), so the
flow it then starts with the same inputs takes it instead of opening the source and the model a second time.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

from docingest import plugins
from docingest.core.embed import LoadedModel, load_model
from docingest.core.plan import Profile, resolve_profile
from docingest.core.sources import Source, open_source
from docingest.core.store import QdrantLocation, QdrantStore
from docingest.exceptions import ConfigurationError
from docingest.folders import check_writable, home_folder, store_folder
from docingest.options import IngestOptions, Preset
from docingest.settings import get_settings
from docingest.targets import QdrantTarget, resolve_target


@dataclass(frozen=True)
class RunSpec:
    """What a run is. ``options`` are the resolved ones: the preset's values filled in, the collection's model
    adopted, the embedder block's batch size applied; nothing changes them afterwards (options are frozen models)."""

    collection: str
    location: QdrantLocation
    physical: str | None  # the physical collection behind the alias, as it was when the run was resolved
    source: Source
    model: LoadedModel
    profile: Profile
    options: IngestOptions

    @property
    def exists(self) -> bool:
        """Whether the collection existed when the run was resolved."""
        return self.physical is not None


@dataclass(frozen=True)
class RunInputs:
    """A run's inputs as given (the key a pinned spec is found by)."""

    source: str | None = None
    collection: str | None = None
    options: IngestOptions | None = None
    qdrant: QdrantTarget | None = None
    qdrant_block: str | None = None
    source_block: str | None = None
    embedder_block: str | None = None
    collection_block: str | None = None
    preset: Preset | None = None


_PINNED: contextvars.ContextVar[tuple[RunInputs, RunSpec] | None] = contextvars.ContextVar("docingest_run_spec",
                                                                                           default=None)


def resolve_spec(inputs: RunInputs) -> RunSpec:
    """The run these inputs describe (a pinned spec for the same inputs is returned as it is)."""
    pinned = _PINNED.get()
    if pinned is not None and pinned[0] == inputs:
        return pinned[1]
    options = with_preset(inputs.options, inputs.preset)
    plugins.check(options)  # misspelt plugin names fail first, before any store or model is opened
    collection, location = resolve_target(inputs.collection, inputs.qdrant, inputs.qdrant_block,
                                          inputs.collection_block)
    settings = get_settings()
    check_writable(home_folder(settings), *([store_folder(location.path, settings)] if location.path else []))
    store = QdrantStore(location)
    physical = store.resolve(collection) if store.collection_exists(collection) else None
    if physical is not None:
        options = adopt_collection_model(inputs, options, store, physical)
    name, device = settings.embed.model, settings.embed.device
    if inputs.embedder_block:  # block over settings; an explicit options.embed.model over both
        from docingest.blocks.embedder import EmbedderSettings
        from docingest.blocks.loading import load_block

        embedder = load_block(inputs.embedder_block, EmbedderSettings)
        name, device = embedder.model, embedder.device or device
        options = options.model_copy(update={"embed": options.embed.model_copy(
            update={"batch_size": embedder.batch_size})})
    source = open_run_source(inputs.source, options, inputs.source_block)
    model = load_model(options.embed.model or name, device, options.embed.backend)
    return RunSpec(collection=collection, location=location, physical=physical, source=source, model=model,
                   profile=resolve_profile(options, model.info), options=options)


@contextlib.contextmanager
def pinned(inputs: RunInputs, spec: RunSpec) -> Iterator[RunSpec]:
    """Within this block, ``resolve_spec(inputs)`` is ``spec`` (in this thread and the contexts copied from it)."""
    token = _PINNED.set((inputs, spec))
    try:
        yield spec
    finally:
        _PINNED.reset(token)


def with_preset(options: IngestOptions | None, preset: Preset | None = None) -> IngestOptions:
    """The options a run uses: ``preset`` (if given) replaces ``options.preset``, whose values fill every option
    that was not set explicitly."""
    options = options or IngestOptions()
    if preset is not None:
        options = options.model_copy(update={"preset": Preset(preset)})
    return options.resolved()


def adopt_collection_model(inputs: RunInputs, options: IngestOptions, store: QdrantStore,
                           physical: str) -> IngestOptions:
    """An existing collection keeps the model (and backend) it was built or migrated with, unless a model is given
    explicitly (options, an embedder block, or DOCINGEST_EMBED_MODEL): a sync after ``docingest migrate`` must not
    re-embed everything with the default model."""
    if options.embed.model or inputs.embedder_block or "model" in get_settings().embed.model_fields_set:
        return options
    name, backend = store.collection_model(physical)
    if name is None:
        return options
    update: dict = {"model": name}
    given = inputs.options
    backend_given = given is not None and ("backend" in given.embed.model_fields_set or given.preset is not None)
    if not backend_given and inputs.preset is None:
        update["backend"] = backend
    return options.model_copy(update={"embed": options.embed.model_copy(update=update)})


def open_run_source(source: str | None, options: IngestOptions, source_block: str | None) -> Source:
    if source_block:
        from docingest.blocks.sources import open_source_block  # Prefect's blocks: imported only when one is named

        return open_source_block(source_block, options.source)
    if not source:
        raise ConfigurationError("give a source or a source block")
    return open_source(source, options.source)
