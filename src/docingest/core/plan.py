"""Plan: resolve what shapes the output (the fingerprint) and compare each document with the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePosixPath

from docingest import __version_schema__, plugins
from docingest.core.chunk import effective_max_tokens
from docingest.core.embed import ModelInfo, backend_fingerprint
from docingest.core.formats import OCR_EXTENSIONS
from docingest.core.ids import fingerprint
from docingest.core.parse import check_supported, resolve_ocr, resolve_pdf_mode
from docingest.datamodel import ChangeKind, DocumentStatus, ManifestRecord, SourceDocument
from docingest.exceptions import DeleteGuardError, UnsupportedDocumentError
from docingest.options import IngestOptions, PdfMode, SyncMode


@dataclass(frozen=True)
class Profile:
    """Options resolved against this machine: what actually shapes chunks and vectors."""

    pdf_mode: PdfMode
    ocr: bool
    max_tokens: int
    model: ModelInfo
    fingerprint: str
    format_fingerprints: tuple[tuple[str, str], ...] = ()  # extension -> fingerprint, for parser plugins' formats
    ocr_fingerprint: str | None = None  # for the kinds OCR can touch (images, PDFs); None: the same as the others
    # Fingerprints that mean the same output for documents OCR cannot touch: before OCR counted only for images and
    # PDFs, every document's fingerprint held whether Tesseract was installed. Accepted, so nothing re-embeds.
    legacy_fingerprints: tuple[str, ...] = ()
    # BM25 language of the sparse vectors ("bm25:english"), None for dense only. Not in the fingerprint: the sparse
    # vectors follow it point by point (each point records the model that made its sparse vector), so changing it,
    # or upgrading a dense-only collection, re-encodes sparse vectors from the stored text and never re-embeds.
    sparse_language: str | None = None

    def fingerprint_for(self, path: str) -> str:
        """The fingerprint of one document: a parser plugin's name and version count for its formats only, and the
        OCR settings (and whether Tesseract is installed) for images and PDFs only."""
        ext = PurePosixPath(path).suffix.lower().lstrip(".")
        for fmt, fp in self.format_fingerprints:
            if fmt == ext:
                return fp
        if self.ocr_fingerprint is not None and ext in OCR_EXTENSIONS:
            return self.ocr_fingerprint
        return self.fingerprint

    def current(self, path: str, recorded: str) -> bool:
        """Whether a manifest's fingerprint still describes what this profile would produce for the document."""
        return recorded == self.fingerprint_for(path) or (
            recorded in self.legacy_fingerprints and self.fingerprint_for(path) == self.fingerprint)


def resolve_profile(options: IngestOptions, model: ModelInfo) -> Profile:
    pdf_mode = resolve_pdf_mode(options.parse.pdf_mode)
    ocr = resolve_ocr(options.parse.ocr, options.parse.ocr_lang)
    max_tokens = effective_max_tokens(options.chunk, model.max_seq_length)
    parts: dict[str, object] = {
        "schema": __version_schema__,
        "pdf_mode": pdf_mode.value,
        # Documents OCR cannot touch keep the fingerprint they had when OCR was not installed: installing Tesseract
        # or changing --ocr-lang re-processes images and PDFs only (they get ocr_parts below).
        "ocr": False,
        "ocr_lang": None,
        "max_tokens": max_tokens,
        "merge_peers": options.chunk.merge_peers,
        "model": model.name,
        "model_revision": model.revision,
    }
    if model.backend != "torch":  # only then: existing collections keep their fingerprint
        parts["model_backend"] = backend_fingerprint(model.backend)
    # Plugins (only when used, so fingerprints without plugins stay as they were): name and version of each.
    if options.chunk.chunker:
        parts["chunker"] = plugins.get("chunker", options.chunk.chunker).fingerprint_part()
    if options.chunk.enrichers:
        parts["enrichers"] = [plugins.get("enricher", n).fingerprint_part() for n in options.chunk.enrichers]
    formats = tuple(sorted((fmt, fingerprint({**parts, "parser": p.fingerprint_part()}))
                           for fmt, p in plugins.parsers_by_format().items()))
    # Without OCR images are skipped and PDFs keep their text layer, as before: the same fingerprint as the rest.
    ocr_parts = {**parts, "ocr": options.parse.ocr.value, "ocr_lang": options.parse.ocr_lang,
                 "ocr_pdf_pages": True, "ocr_dpi": options.parse.ocr_dpi} if ocr else None
    legacy = tuple(sorted({fingerprint({**parts, "ocr": True, "ocr_lang": options.parse.ocr_lang})} - {
        fingerprint(parts)}))
    language = options.store.bm25_language.strip().lower()
    if language != "none":
        from docingest.core.sparse import encoder

        encoder(language)  # an unknown language stops the run here, before any work
    return Profile(pdf_mode=pdf_mode, ocr=ocr, max_tokens=max_tokens, model=model, fingerprint=fingerprint(parts),
                   format_fingerprints=formats, ocr_fingerprint=fingerprint(ocr_parts) if ocr_parts else None,
                   legacy_fingerprints=legacy, sparse_language=None if language == "none" else language)


def classify(doc: SourceDocument, known: ManifestRecord | None, profile: Profile) -> ChangeKind:
    """new / changed / unchanged. A document is unchanged only if its bytes and the fingerprint match a finished record."""
    if known is None:
        return ChangeKind.NEW
    same = known.content_hash == doc.content_hash and profile.current(doc.path, known.fingerprint)
    finished = known.status in (DocumentStatus.SUCCESS, DocumentStatus.UNCHANGED, DocumentStatus.SKIPPED)
    return ChangeKind.UNCHANGED if same and finished else ChangeKind.CHANGED


class Action(str, Enum):
    PROCESS = "process"
    UNCHANGED = "unchanged"
    SKIP = "skip"
    DEAD_LETTER = "dead_letter"


@dataclass
class PlannedDocument:
    doc: SourceDocument
    change: ChangeKind
    action: Action
    known: ManifestRecord | None = None
    reason: str | None = None


@dataclass
class Plan:
    """What a run will do, per document, computed before any work."""

    scope: str
    mode: SyncMode
    documents: list[PlannedDocument] = field(default_factory=list)
    deleted: list[ManifestRecord] = field(default_factory=list)
    known: int = 0

    def by_action(self, action: Action) -> list[PlannedDocument]:
        return [p for p in self.documents if p.action is action]

    def counts(self) -> dict[str, int]:
        active = [p for p in self.documents if p.action is not Action.SKIP]
        return {
            "seen": len(self.documents),
            "new": sum(p.change is ChangeKind.NEW for p in active),
            "changed": sum(p.change is ChangeKind.CHANGED for p in active),
            "unchanged": sum(p.change is ChangeKind.UNCHANGED for p in active),
            "deleted": len(self.deleted),
            "skipped": len(self.documents) - len(active),
            "dead_letter": len(self.by_action(Action.DEAD_LETTER)),
        }

    def to_json_dict(self, collection: str) -> dict:
        def paths(kind: ChangeKind) -> list[str]:
            return [p.doc.path for p in self.documents if p.action is Action.PROCESS and p.change is kind]

        return {
            "collection": collection,
            "source": self.scope,
            "mode": self.mode.value,
            "dry_run": True,
            "counts": self.counts(),
            "new": paths(ChangeKind.NEW),
            "changed": paths(ChangeKind.CHANGED),
            "deleted": [r.path for r in self.deleted],
            "skipped": [{"path": p.doc.path, "reason": p.reason} for p in self.by_action(Action.SKIP)],
            "dead_letter": [p.doc.path for p in self.by_action(Action.DEAD_LETTER)],
        }


def make_plan(
    scope: str, documents: list[SourceDocument], known: dict[str, ManifestRecord], profile: Profile,
    options: IngestOptions,
) -> Plan:
    """Classify every document against the manifest; in full mode, list what vanished. Raises DeleteGuardError."""
    plan = Plan(scope=scope, mode=options.mode, known=len(known))
    for doc in documents:
        record = known.get(doc.path)
        change = classify(doc, record, profile)
        if doc.skip_reason:
            plan.documents.append(PlannedDocument(doc, change, Action.SKIP, record, doc.skip_reason))
            continue
        try:
            check_supported(doc.path, options.parse)
        except UnsupportedDocumentError as exc:
            plan.documents.append(PlannedDocument(doc, change, Action.SKIP, record, str(exc)))
            continue
        if change is ChangeKind.UNCHANGED:
            plan.documents.append(PlannedDocument(doc, change, Action.UNCHANGED, record))
        elif (
            record is not None
            and record.status is DocumentStatus.FAILURE
            and record.content_hash == doc.content_hash
            and record.fingerprint == profile.fingerprint_for(doc.path)
            and record.attempts >= options.max_doc_attempts
        ):
            reason = f"dead-lettered after {record.attempts} failed attempts: {record.error}"
            # Same bytes and settings as its last failed attempt: unchanged, and not retried until it changes.
            plan.documents.append(PlannedDocument(doc, ChangeKind.UNCHANGED, Action.DEAD_LETTER, record, reason))
        else:
            plan.documents.append(PlannedDocument(doc, change, Action.PROCESS, record))
    if options.mode is SyncMode.FULL:
        # The scope is the source *and* its include/exclude filters: a run narrowed by filters (an upload's folder,
        # `--include "*.md"`) never deletes what lies outside them.
        from docingest.core.sources.local import matches

        include, exclude = options.source.include, options.source.exclude
        in_scope = {path: r for path, r in known.items() if matches(path, include) and not matches(path, exclude)}
        present = {d.path for d in documents}
        plan.deleted = [r for path, r in sorted(in_scope.items()) if path not in present]
        guarded = len(in_scope) if options.delete_guard_of == "filters" else len(known)
        ratio = len(plan.deleted) / guarded if guarded else 0.0
        if plan.deleted and ratio > options.max_delete_ratio and not options.force:
            raise DeleteGuardError(
                f"refusing to delete {len(plan.deleted)} of {guarded} documents ({ratio:.0%}) in scope {scope}: "
                f"more than max_delete_ratio {options.max_delete_ratio:g}; check the source, or run it with force"
            )
    return plan
