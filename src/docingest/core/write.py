"""Embedding and writing one pool of prepared documents: the stage logic the flow runs as Prefect task runs (framework
free). A pool is embedded in one call across its documents; a document the model cannot encode is set apart, never the
pool. Writing upserts the pool's points, then finishes its documents: old versions removed, manifest recorded."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from docingest.core import faults
from docingest.core.embed import LoadedModel, embed_texts
from docingest.core.pipeline import build_points, manifest_record, prepare_document
from docingest.core.plan import Profile
from docingest.datamodel import ChangeKind, DocumentStatus, ManifestRecord, PreparedDocument, SourceDocument, Stage
from docingest.exceptions import ConfigurationError, DocingestError

if TYPE_CHECKING:
    from docingest.core.sources import Source
    from docingest.core.store import QdrantStore
    from docingest.options import IngestOptions


@dataclass
class EmbeddedPool:
    """A pool's documents with their vectors (``vectors[i]`` belongs to ``docs[i]``), and the documents the model
    could not encode with the reason. ``seconds``: time spent encoding."""

    docs: list[PreparedDocument] = field(default_factory=list)
    vectors: list[Any] = field(default_factory=list)
    failed: list[tuple[PreparedDocument, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chunks(self) -> int:
        """Chunks encoded (the documents set apart excluded)."""
        return sum(len(d.chunks) for d in self.docs)


@dataclass
class WrittenPool:
    """What writing a pool did: points upserted, old-version points removed, seconds spent upserting."""

    upserted: int = 0
    deleted: int = 0
    seconds: float = 0.0


def embed_pool(model: LoadedModel, docs: list[PreparedDocument], batch_size: int,
               isolate: bool = True) -> EmbeddedPool:
    """Encode every chunk of ``docs`` in one call (the model sorts by length inside, so large pools pad less). When
    the call fails, each document is encoded alone, so the one that breaks it is set apart with its reason; with
    ``isolate=False`` the error is raised instead (the caller retries the pool first: the error may go away). A
    model that cannot be used at all (ConfigurationError) is the run's problem and is raised."""
    faults.checkpoint("in-embed")
    started = time.perf_counter()
    pool = EmbeddedPool()
    try:
        vectors = embed_texts(model, [c.embed_text for d in docs for c in d.chunks], batch_size)
    except ConfigurationError:
        raise
    except DocingestError as exc:
        if not isolate:
            raise
        if len(docs) == 1:
            pool.failed.append((docs[0], str(exc)))
        else:
            for d in docs:
                try:
                    pool.vectors.append(embed_texts(model, [c.embed_text for c in d.chunks], batch_size))
                    pool.docs.append(d)
                except ConfigurationError:
                    raise
                except DocingestError as one:
                    pool.failed.append((d, str(one)))
        pool.seconds = time.perf_counter() - started
        return pool
    start = 0
    for d in docs:
        pool.docs.append(d)
        pool.vectors.append(vectors[start:start + len(d.chunks)])
        start += len(d.chunks)
    pool.seconds = time.perf_counter() - started
    return pool


@dataclass
class PreparedPool:
    """Documents parsed, chunked and embedded in one place (a pool task on a Dask worker): ``embedded`` holds those
    that reached the encoder (vectors as float32 arrays, one per document), ``others`` those skipped or failed before
    it, with their reasons."""

    embedded: EmbeddedPool = field(default_factory=EmbeddedPool)
    others: list[PreparedDocument] = field(default_factory=list)


def prepare_and_embed(source: Source, items: list[tuple[SourceDocument, ChangeKind]], profile: Profile,
                      options: IngestOptions, model: LoadedModel) -> PreparedPool:
    """Parse and chunk each document (one at a time, in the parse workers under their time and memory limits), then
    encode the chunks of all that succeeded in one call, as the flow's own encoder does with a pool. The chunks come
    back without their ``embed_text`` (headings and text again, needed only by the encoder), which would double what
    travels back to the flow."""
    pool = PreparedPool()
    ready: list[PreparedDocument] = []
    for doc, change in items:
        prepared = prepare_document(source, doc, change, profile, options, model)
        (ready if prepared.status is DocumentStatus.SUCCESS else pool.others).append(prepared)
    if ready:
        pool.embedded = embed_pool(model, ready, options.embed.batch_size)
    for d in ready:
        for chunk in d.chunks:
            chunk.embed_text = ""
    return pool


def finalize_documents(store: QdrantStore, collection: str, replace: list[tuple[str, str | None]],
                       records: list[ManifestRecord]) -> int:
    """After the new versions are written: remove each document's other versions, then record the manifest.

    A ``(doc_id, None)`` entry removes every version (the document became empty), and its manifest record too
    unless ``records`` holds a new one for it (a skip record). Returns the points removed."""
    deleted = store.delete_other_versions_many(collection, replace)
    store.write_manifest(collection, records)
    recorded = {r.doc_id for r in records}
    store.delete_manifest(collection, [doc_id for doc_id, keep in replace if keep is None and doc_id not in recorded])
    return deleted


def write_pool(store: QdrantStore, collection: str, pool: EmbeddedPool, profile: Profile, known: dict[str, ManifestRecord],
               batch_size: int) -> WrittenPool:
    """Upsert the pool's points (deterministic ids: a retry overwrites, never duplicates), then finish its documents:
    their old versions go and their manifest records are written, with a failure record for each document the model
    set apart. A store error is raised (the whole write is safe to repeat)."""
    points = [pt for d, vectors in zip(pool.docs, pool.vectors, strict=True) for pt in build_points(d, vectors, profile)]
    started = time.perf_counter()
    written = WrittenPool(upserted=store.upsert(collection, points, batch_size))
    written.seconds = time.perf_counter() - started
    faults.checkpoint("after-upsert")
    records = [manifest_record(d, profile, known.get(d.document.path), DocumentStatus.SUCCESS) for d in pool.docs]
    replace: list[tuple[str, str | None]] = [(r.doc_id, r.version) for r in records]
    records += [manifest_record(d, profile, known.get(d.document.path), DocumentStatus.FAILURE, Stage.EMBED, error)
                for d, error in pool.failed]
    written.deleted = finalize_documents(store, collection, replace, records)
    faults.checkpoint("after-finalize")
    return written
