"""Retrieval evaluation in BEIR format: queries JSONL + qrels TSV against an ingested collection.

Metrics are computed per query over *documents* (a document ranks where its best chunk ranks) and averaged over the
queries that have at least one relevant document: graded nDCG@k (linear gain, log2 discount, as BEIR/pytrec_eval's
``ndcg_cut``), recall@k and MRR@k. Importing this module is cheap: Qdrant, torch and Prefect load in ``evaluate()``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from docingest.exceptions import ConfigurationError, StoreBusyError

if TYPE_CHECKING:
    from rich.console import Console

    from docingest.targets import QdrantTarget

QRELS_HEADER_NAMES = {"query-id", "query_id", "queryid", "qid"}


# --------------------------------------------------------------------------------------------------- loaders


def _lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of the non-blank lines of a UTF-8 file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {what} file {file}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def load_queries(path: str | Path) -> dict[str, str]:
    """BEIR queries: one JSON object ``{"_id": ..., "text": ...}`` per line -> ``{query_id: text}``."""
    queries: dict[str, str] = {}
    for number, line in _lines(path, "queries"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or "_id" not in row or "text" not in row:
            raise ConfigurationError(f"{path}:{number}: a query needs the keys '_id' and 'text'")
        queries[str(row["_id"])] = str(row["text"])
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """BEIR qrels: ``query-id corpus-id score`` per line (tab or whitespace separated, optional header line).

    Returns ``{query_id: {corpus_id: grade}}`` with only the positive grades (score <= 0 means not relevant).
    """
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for number, line in _lines(path, "qrels"):
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if first and parts and parts[0].lower() in QRELS_HEADER_NAMES:
            first = False
            continue
        first = False
        if len(parts) != 3 or not all(parts):
            raise ConfigurationError(f"{path}:{number}: expected 3 columns 'query-id corpus-id score', got {len(parts)}")
        query_id, corpus_id, raw = parts
        try:
            score = int(raw)
        except ValueError:
            raise ConfigurationError(f"{path}:{number}: score {raw!r} is not an integer") from None
        if score > 0:
            qrels.setdefault(query_id, {})[corpus_id] = score
    return qrels


# --------------------------------------------------------------------------------------------------- metrics


def _unique(ranked: Sequence[str], k: int) -> list[str]:
    """The first k distinct ids of a ranking (a repeated id earns nothing the second time)."""
    out: list[str] = []
    for doc in ranked:
        if len(out) >= k:
            break
        if doc not in out:
            out.append(doc)
    return out


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Graded nDCG@k: DCG = sum(grade / log2(rank + 1)), divided by the DCG of the grades sorted best first."""
    grades = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(grades))
    if ideal == 0:
        return 0.0
    dcg = sum(max(relevant.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(_unique(ranked, k)))
    return dcg / ideal


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents (grade > 0) found in the first k."""
    wanted = {doc for doc, grade in relevant.items() if grade > 0}
    if not wanted:
        return 0.0
    return len(wanted.intersection(_unique(ranked, k))) / len(wanted)


def reciprocal_rank(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant document in the first k (0 if none): averaged over queries, MRR@k."""
    for i, doc in enumerate(_unique(ranked, k)):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


# --------------------------------------------------------------------------------------------------- ranking


def doc_key(payload: Mapping[str, Any], match: str = "stem") -> str | None:
    """The id a chunk's document has in the qrels.

    ``match="stem"``: the file stem of ``payload["path"]`` (``md/sources/duck.md`` -> ``duck``; only the last suffix
    is removed). Any other value names a payload field (``path``, ``doc_id``, ``uri``, ...) used as is.
    """
    if match == "stem":
        path = payload.get("path")
        if not path:
            return None
        return PurePosixPath(str(path).replace("\\", "/")).stem or None
    value = payload.get(match)
    return None if value is None or value == "" else str(value)


def rank_documents(hits: Sequence[tuple[float, Mapping[str, Any]]], match: str, k: int) -> list[str]:
    """Chunk hits ``(score, payload)`` -> document keys in the order of their best chunk, deduplicated, first k."""
    ranked: list[str] = []
    seen: set[str] = set()
    for _, payload in sorted(hits, key=lambda hit: -hit[0]):  # stable: equal scores keep their order
        key = doc_key(payload, match)
        if key is None or key in seen:
            continue
        seen.add(key)
        ranked.append(key)
        if len(ranked) >= k:
            break
    return ranked


# --------------------------------------------------------------------------------------------------- report


class QueryResult(BaseModel):
    """One evaluated query."""

    query_id: str
    query: str
    ndcg: float
    recall: float
    rr: float
    ranked: list[str] = Field(description="Top k document keys, best first.")
    relevant: list[str] = Field(description="Relevant document keys, highest grade first.")


class EvalReport(BaseModel):
    """Aggregates (means over evaluated queries) and per-query results of one evaluation."""

    collection: str
    k: int
    match: str
    model: str | None = None
    mode: str = Field(default="dense", description="How documents were retrieved: dense, bm25 or hybrid.")
    queries: int = Field(description="Number of evaluated queries.")
    skipped_queries: list[str] = Field(default_factory=list, description="Ids without qrels or not in the queries.")
    ndcg: float
    recall: float
    mrr: float
    per_query: list[QueryResult] = Field(default_factory=list)

    def worst(self, n: int = 5) -> list[QueryResult]:
        """The n queries with the lowest nDCG (ties: lowest recall, then query id)."""
        return sorted(self.per_query, key=lambda q: (q.ndcg, q.recall, q.query_id))[:n]

    def to_json_dict(self) -> dict[str, Any]:
        """Every aggregate, the worst queries and every per-query result, JSON-ready."""
        out = self.model_dump(mode="json")
        out["worst"] = [q.model_dump(mode="json") for q in self.worst()]
        return out


def build_report(
    collection: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    rankings: Mapping[str, list[str]],
    k: int,
    match: str,
    model: str | None = None,
) -> EvalReport:
    """Score ``rankings`` ({query_id: ranked doc keys}) against ``qrels``; queries without rankings count as empty."""
    evaluated, skipped = split_queries(queries, qrels)
    results = []
    for qid in evaluated:
        relevant = {doc: g for doc, g in qrels[qid].items() if g > 0}
        ranked = list(rankings.get(qid, []))[:k]
        results.append(
            QueryResult(
                query_id=qid,
                query=queries[qid],
                ndcg=ndcg_at_k(ranked, relevant, k),
                recall=recall_at_k(ranked, relevant, k),
                rr=reciprocal_rank(ranked, relevant, k),
                ranked=ranked,
                relevant=sorted(relevant, key=lambda d: (-relevant[d], d)),
            )
        )

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    return EvalReport(
        collection=collection,
        k=k,
        match=match,
        model=model,
        queries=len(results),
        skipped_queries=skipped,
        ndcg=mean([r.ndcg for r in results]),
        recall=mean([r.recall for r in results]),
        mrr=mean([r.rr for r in results]),
        per_query=results,
    )


def split_queries(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]) -> tuple[list[str], list[str]]:
    """(ids to evaluate in queries-file order, skipped ids: no positive qrels, or qrels without a query)."""
    evaluated = [qid for qid in queries if any(g > 0 for g in qrels.get(qid, {}).values())]
    skipped = [qid for qid in queries if qid not in evaluated] + sorted(qid for qid in qrels if qid not in queries)
    return evaluated, skipped


# --------------------------------------------------------------------------------------------------- evaluate


def evaluate(
    collection: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    k: int = 10,
    match: str = "stem",
    qdrant: QdrantTarget | None = None,
    candidates: int | None = None,
    mode: str | None = None,
    fusion: str = "rrf",
) -> EvalReport:
    """Run every query against ``collection`` with the model it was built with and score the document rankings.

    All queries are embedded in one call; each runs one Qdrant query for ``candidates`` chunks (default
    ``max(50, k * 10)``), which are folded into a document ranking (``rank_documents``). ``mode`` is dense, bm25 or
    hybrid (fused with ``fusion``), by default as ``docingest search`` chooses. Raises ConfigurationError for an
    unknown collection or bad ``k``/``candidates``/``mode``.
    """
    if k < 1:
        raise ConfigurationError(f"k must be at least 1, got {k}")
    candidates = candidates if candidates is not None else max(50, k * 10)
    if candidates < k:
        raise ConfigurationError(f"candidates ({candidates}) must be at least k ({k})")

    from docingest.core.embed import embed_texts, load_model
    from docingest.retrieval import choose_mode, make_search
    from docingest.settings import get_settings
    from docingest.targets import open_store

    try:
        store = open_store(qdrant)
    except StoreBusyError:  # held by another process (a watch, the service): evaluated there, through its socket
        from docingest import store_socket
        from docingest.targets import held_socket

        if (holder := held_socket(qdrant)) is None:
            raise
        args = {"collection": collection, "queries": queries, "qrels": qrels, "k": k, "match": match,
                "candidates": candidates, "mode": mode, "fusion": fusion}
        return EvalReport.model_validate(store_socket.result_of(holder, "evaluate", args))
    store.require_collection(collection)
    physical = store.resolve(collection)
    used, language, _ = choose_mode(store, physical, mode, fusion)
    recorded, backend = store.collection_model(physical)
    settings = get_settings()
    name = recorded or settings.embed.model

    evaluated, _ = split_queries(queries, qrels)
    rankings: dict[str, list[str]] = {}
    if evaluated:
        texts = [queries[qid] for qid in evaluated]
        vectors = embed_texts(load_model(name, settings.embed.device, backend), texts) if used != "bm25" \
            else [None] * len(texts)
        for qid, text, vector in zip(evaluated, texts, vectors, strict=True):
            hits = store.find(physical, make_search(used, vector, text, language, candidates, fusion, candidates))
            rankings[qid] = rank_documents(hits, match, k)
    report = build_report(collection, queries, qrels, rankings, k, match, model=name)
    report.mode = used
    return report


# --------------------------------------------------------------------------------------------------- render


def _cut(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render(report: EvalReport, console: Console) -> None:
    """Print the aggregates and the 5 worst queries as two small tables."""
    from rich.table import Table

    k = report.k
    model = f", model {report.model}" if report.model else ""
    console.print(f"Retrieval evaluation of [bold]{report.collection}[/] ({report.mode} search, documents by "
                  f"{report.match}{model})")
    summary = Table()
    for column in (f"nDCG@{k}", f"recall@{k}", f"MRR@{k}", "queries"):
        summary.add_column(column, justify="right")
    summary.add_row(f"{report.ndcg:.3f}", f"{report.recall:.3f}", f"{report.mrr:.3f}", str(report.queries))
    console.print(summary)
    if report.skipped_queries:
        console.print(f"skipped {len(report.skipped_queries)} queries without qrels or text: "
                      + ", ".join(report.skipped_queries[:10]) + (" ..." if len(report.skipped_queries) > 10 else ""))
    worst = report.worst(5)
    if not worst:
        return
    table = Table(title=f"{len(worst)} worst queries")
    table.add_column("id", no_wrap=True)
    table.add_column("query", no_wrap=True)
    table.add_column(f"nDCG@{k}", justify="right")
    table.add_column(f"recall@{k}", justify="right")
    table.add_column("relevant")
    table.add_column("top 3")
    for q in worst:
        table.add_row(q.query_id, _cut(q.query), f"{q.ndcg:.3f}", f"{q.recall:.3f}",
                      q.relevant[0] if q.relevant else "", ", ".join(q.ranked[:3]))
    console.print(table)
