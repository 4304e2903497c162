"""``docingest doctor``: check each thing a run depends on and say what works and what does not."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from docingest.targets import QdrantTarget


@dataclass
class Check:
    """One check: ``ok`` False for a required part is a failure; ``required`` False marks an optional capability."""

    name: str
    ok: bool
    detail: str
    required: bool = True
    seconds: float = 0.0


def _run(name: str, fn: Callable[[], str], required: bool = True) -> Check:
    started = time.perf_counter()
    try:
        detail, ok = fn(), True
    except Exception as exc:  # noqa: BLE001 - every failure becomes a line of the report
        detail, ok = " ".join(str(exc).split()) or type(exc).__name__, False
    return Check(name, ok, detail, required, round(time.perf_counter() - started, 3))


def _prefect_api() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return "no PREFECT_API_URL: runs use Prefect's temporary local API"
    with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=10) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
    return f"{url} answers"


def _qdrant(qdrant: QdrantTarget | None) -> str:
    from docingest.core.store import QdrantStore
    from docingest.targets import resolve_location

    location = resolve_location(qdrant)
    try:
        collections = QdrantStore(location).list_collections()
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"{location.describe()}: {exc}") from None
    return f"{location.describe()}: {len(collections)} collections"


def _model() -> str:
    from docingest.core.embed import load_model
    from docingest.settings import get_settings

    settings = get_settings()
    model = load_model(settings.embed.model, settings.embed.device)
    info = model.info
    return f"{info.name}: {info.dimension} dims, max {info.max_seq_length} tokens, on {model.model.device}"


def _pdf_models() -> str:
    from docingest.core.parse import accurate_models_status

    ok, why = accurate_models_status()
    if not ok:
        raise RuntimeError(f"accurate PDF mode unavailable ({why}); fast mode works without models")
    return why


def _ocr() -> str:
    from docingest.core import ocr

    if not ocr.tesseract_available():
        raise RuntimeError("tesseract not installed: images and scanned PDF pages are skipped "
                           "(apt install tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd)")
    langs = ocr.installed_languages()
    note = "" if "osd" in langs else "; no 'osd' data: rotated scans are read as they lie (apt install tesseract-ocr-osd)"
    return f"tesseract {ocr.tesseract_version()}; languages: {', '.join(langs) or '?'}{note}"


def _source(source: str | None, source_block: str | None) -> str:
    from docingest.blocks.sources import open_source_block
    from docingest.core.sources import open_source

    src = open_source_block(source_block) if source_block else open_source(source or ".")
    n = sum(1 for _ in src.iter_documents())
    return f"{src.uri}: {n} documents listed"


def _s3_endpoint() -> str:
    from docingest.core.sources.s3 import make_client
    from docingest.settings import get_settings

    s = get_settings()
    client, endpoint = make_client(s.s3.endpoint, s.s3.access_key.get_secret_value() if s.s3.access_key else None,
                                   s.s3.secret_key.get_secret_value() if s.s3.secret_key else None, s.s3.region)
    try:
        buckets = client.list_buckets()
    except Exception as exc:  # noqa: BLE001
        code = getattr(exc, "code", None)
        raise RuntimeError(f"S3 {endpoint}: {code or type(exc).__name__}: check endpoint and credentials") from None
    return f"S3 {endpoint}: credentials accepted, {len(buckets)} buckets"


def _pushgateway(url: str) -> str:
    with urllib.request.urlopen(f"{url.rstrip('/')}/-/ready", timeout=10) as response:
        return f"{url}: HTTP {response.status}"


def _result_storage() -> str:
    from docingest.settings import get_settings
    from docingest.targets import resolve_result_storage

    name = get_settings().prefect.result_storage
    block = resolve_result_storage(name)
    return f"{name}: {type(block).__name__} ready"


def run_checks(source: str | None = None, source_block: str | None = None,
               qdrant: QdrantTarget | None = None) -> list[Check]:
    """Every check, in the order a run meets them; optional capabilities (PDF models, OCR) never fail the report."""
    from docingest.settings import get_settings

    settings = get_settings()
    checks = [
        _run("prefect api", _prefect_api),
        _run("qdrant", lambda: _qdrant(qdrant)),
        _run("embedding model", _model),
        _run("pdf models (accurate mode)", _pdf_models, required=False),
        _run("ocr engine", _ocr, required=False),
    ]
    if source or source_block:
        checks.append(_run("source", lambda: _source(source, source_block)))
    elif settings.s3.endpoint or settings.s3.access_key:
        checks.append(_run("s3 credentials", _s3_endpoint))
    if settings.git.token:
        checks.append(Check("git token", True, "DOCINGEST_GIT_TOKEN is set (checked when a git source is fetched)"))
    if (pushgateway := settings.pushgateway_url) is not None:
        checks.append(_run("pushgateway", lambda: _pushgateway(pushgateway)))
    if settings.prefect.result_storage:
        checks.append(_run("result storage", _result_storage))
    return checks


def report(checks: list[Check]) -> dict:
    return {"ok": all(c.ok for c in checks if c.required), "checks": [asdict(c) for c in checks]}
