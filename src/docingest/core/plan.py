"""Plan: resolve what shapes the output (the fingerprint) and compare each document with the manifest."""

from __future__ import annotations

from dataclasses import dataclass

from docingest import __version_schema__
from docingest.core.chunk import effective_max_tokens
from docingest.core.embed import ModelInfo
from docingest.core.ids import fingerprint
from docingest.core.parse import resolve_ocr, resolve_pdf_mode
from docingest.datamodel import ChangeKind, DocumentStatus, ManifestRecord, SourceDocument
from docingest.options import IngestOptions, PdfMode


@dataclass(frozen=True)
class Profile:
    """Options resolved against this machine: what actually shapes chunks and vectors."""

    pdf_mode: PdfMode
    ocr: bool
    max_tokens: int
    model: ModelInfo
    fingerprint: str


def resolve_profile(options: IngestOptions, model: ModelInfo) -> Profile:
    pdf_mode = resolve_pdf_mode(options.parse.pdf_mode)
    ocr = resolve_ocr(options.parse.ocr)
    max_tokens = effective_max_tokens(options.chunk, model.max_seq_length)
    parts = {
        "schema": __version_schema__,
        "pdf_mode": pdf_mode.value,
        "ocr": ocr,
        "ocr_lang": options.parse.ocr_lang if ocr else None,
        "max_tokens": max_tokens,
        "merge_peers": options.chunk.merge_peers,
        "model": model.name,
        "model_revision": model.revision,
    }
    return Profile(pdf_mode=pdf_mode, ocr=ocr, max_tokens=max_tokens, model=model, fingerprint=fingerprint(parts))


def classify(doc: SourceDocument, known: ManifestRecord | None, profile: Profile) -> ChangeKind:
    """new / changed / unchanged. A document is unchanged only if its bytes and the fingerprint match a finished record."""
    if known is None:
        return ChangeKind.NEW
    same = known.content_hash == doc.content_hash and known.fingerprint == profile.fingerprint
    finished = known.status in (DocumentStatus.SUCCESS, DocumentStatus.UNCHANGED, DocumentStatus.SKIPPED)
    return ChangeKind.UNCHANGED if same and finished else ChangeKind.CHANGED
