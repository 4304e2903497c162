"""The Python API for scripts and notebooks: ``docingest.ingest`` and ``docingest.search``.

Both work in a plain script and inside a running event loop (Jupyter, IPython, an async app): there the flow runs
in a helper thread and the call blocks until it is done, like any other cell.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import BaseModel

from docingest.datamodel import IngestResult, SearchResults
from docingest.exceptions import ConfigurationError
from docingest.options import IngestOptions

if TYPE_CHECKING:
    from docingest.core.progress import ProgressEvent
    from docingest.targets import QdrantTarget

T = TypeVar("T")

_SECTIONS = ("source", "parse", "chunk", "embed", "store")


def _flat_fields() -> dict[str, str | None]:
    """Option name -> its section (None: top level). Names that occur in two sections are left out."""
    pairs: list[tuple[str, str | None]] = [(name, None) for name in IngestOptions.model_fields if name not in _SECTIONS]
    for section in _SECTIONS:
        model = cast("type[BaseModel]", IngestOptions.model_fields[section].annotation)  # a section is a model
        pairs += [(name, section) for name in model.model_fields]
    names = [name for name, _ in pairs]
    return {name: section for name, section in pairs if names.count(name) == 1}


def build_options(options: IngestOptions | dict | None = None, **flat: Any) -> IngestOptions:
    """IngestOptions from flat keyword arguments (``pdf_mode="fast"``, ``workers=4``, ``preset=...``), nested
    dicts (``parse={...}``) or an IngestOptions, merged in that order of precedence (flat wins)."""
    base = options.model_dump(exclude_unset=True) if isinstance(options, IngestOptions) else dict(options or {})
    table = _flat_fields()
    for name, value in flat.items():
        if name in _SECTIONS and isinstance(value, dict):
            base.setdefault(name, {}).update(value)
        elif name in table:
            section = table[name]
            if section is None:
                base[name] = value
            else:
                base.setdefault(section, {})[name] = value
        else:
            import difflib

            close = difflib.get_close_matches(name, list(table), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"unknown option {name!r}{hint}")
    from pydantic import ValidationError

    try:
        return IngestOptions.model_validate(base)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigurationError(f"invalid option {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` here, or in a helper thread when this thread runs an event loop (Prefect's sync engine and
    Docling must not run on the loop's thread)."""
    if not _in_running_loop():
        return fn(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="docingest") as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except Exception:  # noqa: BLE001
        return False


class _Bar:
    """A tqdm bar (a widget in notebooks where ipywidgets is installed, text otherwise) fed by progress events."""

    def __init__(self, label: str) -> None:
        from tqdm.auto import tqdm

        from docingest.core import progress

        self.progress = progress
        self.bar = tqdm(total=None, desc=label, unit="doc", leave=True)
        progress.add_listener(self)

    def __call__(self, event: ProgressEvent) -> None:
        if self.bar.total != event.total:
            self.bar.total = event.total
        self.bar.n = event.done
        self.bar.set_postfix_str(event.path[-40:], refresh=True)

    def close(self) -> None:
        self.progress.remove_listener(self)
        self.bar.close()


def ingest(
    source: str | None = None,
    collection: str | None = None,
    *,
    options: IngestOptions | dict | None = None,
    progress: bool | None = None,
    qdrant_path: str | None = None,
    qdrant_url: str | None = None,
    source_block: str | None = None,
    collection_block: str | None = None,
    qdrant_block: str | None = None,
    embedder_block: str | None = None,
    result_storage: str | None = None,
    **option_values: Any,
) -> IngestResult:
    """Sync ``source`` into ``collection`` with the ingest flow and return its typed result.

    Options are keyword arguments by their name (``pdf_mode="fast"``, ``workers=4``, ``preset="high-throughput"``,
    ``mode="full"``, ``model=...``, ``enrichers=[...]``; see IngestOptions), or ``options=``. ``progress``: draw a
    progress bar (default: in notebooks and terminals). ``result.to_dataframe()`` gives one row per document.
    Raises ConfigurationError for bad options or targets; a circuit-breaker stop returns the partial result with
    ``result.aborted`` set.
    """
    from docingest.exceptions import CircuitBreakerOpen
    from docingest.flows.ingest import ingest_documents

    opts = build_options(options, **option_values)
    if progress is None:
        progress = _in_notebook() or sys.stderr.isatty()
    kwargs = dict(source=source, collection=collection, options=opts,
                  qdrant=_target(qdrant_path, qdrant_url),
                  source_block=source_block, collection_block=collection_block, qdrant_block=qdrant_block,
                  embedder_block=embedder_block, result_storage=result_storage)
    bar = _Bar(f"ingest {collection or collection_block}") if progress else None
    try:
        return _call(ingest_documents, **kwargs)
    except CircuitBreakerOpen as exc:
        if exc.result is None:  # the flow always attaches its partial result
            raise
        return exc.result
    finally:
        if bar is not None:
            bar.close()


def search(query: str, collection: str, limit: int = 5, *, qdrant_path: str | None = None,
           qdrant_url: str | None = None, model: str | None = None, mode: str | None = None,
           fusion: str = "rrf") -> SearchResults:
    """The ``limit`` chunks that best match ``query`` (a list of SearchHit with ``to_dataframe()``).

    ``mode``: ``dense`` (the embedding model), ``bm25`` (exact terms) or ``hybrid`` (both, fused with ``fusion``:
    ``rrf`` or ``dbsf``); default hybrid where the collection has BM25 vectors, else dense (``results.note`` says
    so). ``results.mode`` is the mode used."""
    from docingest.retrieval import search as run_search

    return _call(run_search, query, collection, limit=limit, qdrant=_target(qdrant_path, qdrant_url), model=model,
                 mode=mode, fusion=fusion)


def _target(qdrant_path: str | None, qdrant_url: str | None) -> QdrantTarget | None:
    """The call's QdrantTarget (None: the settings'); both given: ConfigurationError, in these arguments' words."""
    from pydantic import ValidationError

    from docingest.exceptions import ConfigurationError
    from docingest.targets import QdrantTarget

    try:
        return QdrantTarget.given(qdrant_path, qdrant_url)
    except ValidationError:
        raise ConfigurationError("give either qdrant_path or qdrant_url, not both") from None
