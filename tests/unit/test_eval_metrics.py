"""Retrieval evaluation without Qdrant or a model: metrics, document ranking, BEIR loaders and the report."""

from __future__ import annotations

import math

import pytest

from docingest.evaluate import (
    EvalReport,
    QueryResult,
    build_report,
    doc_key,
    load_qrels,
    load_queries,
    ndcg_at_k,
    rank_documents,
    recall_at_k,
    reciprocal_rank,
    render,
)
from docingest.exceptions import ConfigurationError

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------------------------------- metrics


def test_graded_ndcg_two_relevant_docs_at_ranks_1_and_3():
    # DCG  = 2/log2(1+1) + 1/log2(3+1) = 2/1 + 1/2 = 2.5        (a grade 2 doc at rank 1, a grade 1 doc at rank 3)
    # IDCG = 2/log2(2) + 1/log2(3) = 2 + 0.63093 = 2.63093       (grades sorted best first: ranks 1 and 2)
    # nDCG = 2.5 / 2.63093 = 0.95023
    relevant = {"a": 2, "c": 1}
    assert ndcg_at_k(["a", "b", "c", "d"], relevant, 10) == pytest.approx(2.5 / (2 + 1 / math.log2(3)))
    assert ndcg_at_k(["a", "b", "c", "d"], relevant, 10) == pytest.approx(0.95023, abs=1e-5)


def test_ndcg_edge_cases():
    assert ndcg_at_k(["a", "c"], {"a": 2, "c": 1}, 10) == pytest.approx(1.0)  # the ideal order
    assert ndcg_at_k(["c", "a"], {"a": 2, "c": 1}, 10) < 1.0  # grades count, not just relevance
    assert ndcg_at_k([], {"a": 1}, 10) == 0.0
    assert ndcg_at_k(["a"], {}, 10) == 0.0
    assert ndcg_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0  # cut at k
    # k also cuts the ideal: with k=1 the ideal is the single grade-2 doc, so finding it at rank 1 is perfect.
    assert ndcg_at_k(["a", "x"], {"a": 2, "b": 2, "c": 1}, 1) == pytest.approx(1.0)
    # DCG = 1/log2(3) = 0.63093; IDCG = 1; a repeated id earns nothing the second time.
    assert ndcg_at_k(["x", "a", "a"], {"a": 1}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["a", "a"], {"a": 1, "b": 1}, 10) <= 1.0


def test_recall_at_k():
    relevant = {"a": 2, "b": 1, "c": 1, "z": 0}  # grade 0 is not relevant
    assert recall_at_k(["a", "x", "b"], relevant, 10) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "x", "b"], relevant, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["z"], relevant, 10) == 0.0
    assert recall_at_k([], relevant, 10) == 0.0
    assert recall_at_k(["a"], {}, 10) == 0.0


def test_reciprocal_rank():
    assert reciprocal_rank(["x", "y", "a", "b"], {"a": 1, "b": 2}, 10) == pytest.approx(1 / 3)
    assert reciprocal_rank(["a"], {"a": 1}, 10) == 1.0
    assert reciprocal_rank(["x", "y", "a"], {"a": 1}, 2) == 0.0  # MRR@k: beyond k counts as not found
    assert reciprocal_rank([], {"a": 1}, 10) == 0.0


# --------------------------------------------------------------------------------------------------- ranking


def test_doc_key_stem_and_payload_field():
    assert doc_key({"path": "md/sources/duck.md"}, "stem") == "duck"
    assert doc_key({"path": "duck.md"}) == "duck"  # stem is the default
    assert doc_key({"path": "papers/pone.0234687.nxml"}, "stem") == "pone.0234687"  # only the last suffix goes
    assert doc_key({"path": "data/archive.tar.gz"}, "stem") == "archive.tar"
    assert doc_key({"path": "README"}, "stem") == "README"
    assert doc_key({"path": "dir\\sub\\report.docx"}, "stem") == "report"
    assert doc_key({}, "stem") is None
    assert doc_key({"path": "a/b.md", "doc_id": "1f0e", "lang": "en"}, "path") == "a/b.md"
    assert doc_key({"doc_id": "1f0e"}, "doc_id") == "1f0e"
    assert doc_key({"lang": "en"}, "lang") == "en"  # a field an enricher adds
    assert doc_key({"path": "a.md"}, "uri") is None


def test_rank_documents_orders_by_best_chunk_and_deduplicates():
    hits = [
        (0.9, {"path": "b.md"}),
        (0.8, {"path": "a.md"}),
        (0.7, {"path": "b.md"}),
        (0.6, {"text": "no path"}),
        (0.5, {"path": "sub/c.html"}),
        (0.4, {"path": "a.md"}),
        (0.3, {"path": "d.pdf"}),
    ]
    assert rank_documents(hits, "stem", 10) == ["b", "a", "c", "d"]
    assert rank_documents(hits, "stem", 2) == ["b", "a"]
    assert rank_documents(hits, "path", 10) == ["b.md", "a.md", "sub/c.html", "d.pdf"]
    assert rank_documents([], "stem", 10) == []
    assert rank_documents(list(reversed(hits)), "stem", 3) == ["b", "a", "c"]  # best score first, whatever the order


# --------------------------------------------------------------------------------------------------- loaders


def test_load_queries(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "What do ducks eat?"}\n\n{"_id": 2, "text": "Why?", "metadata": {}}\n')
    assert load_queries(path) == {"q1": "What do ducks eat?", "2": "Why?"}


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ('{"_id": "q1", "text": "ok"}\n{"_id": "q2", "text": \n', 2),
        ('{"_id": "q1", "text": "ok"}\n\n{"text": "no id"}\n', 3),
        ('["q1", "a list"]\n', 1),
    ],
)
def test_load_queries_bad_line_names_file_and_line(tmp_path, content, line):
    path = tmp_path / "queries.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=rf"queries\.jsonl:{line}:"):
        load_queries(path)


def test_load_queries_missing_file(tmp_path):
    with pytest.raises(ConfigurationError, match="missing.jsonl"):
        load_queries(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("header", ["query-id\tcorpus-id\tscore\n", ""])
def test_load_qrels_with_or_without_header(tmp_path, header):
    path = tmp_path / "qrels.tsv"
    path.write_text(header + "q1\tduck\t2\nq1\twiki_duck\t1\nq1\tother\t0\n\nq2  csv-comma   1\nq3\tnothing\t0\n")
    # score 0 stays out; a query with only score-0 rows has no relevant set at all
    assert load_qrels(path) == {"q1": {"duck": 2, "wiki_duck": 1}, "q2": {"csv-comma": 1}}


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("query-id\tcorpus-id\tscore\nq1\tduck\t2\nq2\tduck\n", 3, "3 columns"),
        ("q1\tduck\t2\nq2\tduck\thigh\n", 2, "not an integer"),
        ("q1\tduck\t2\n\nq2\tduck\t1.5\n", 3, "not an integer"),
        ("q1\tduck\t2\textra\n", 1, "3 columns"),
    ],
)
def test_load_qrels_bad_line_names_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "qrels.tsv"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=rf"qrels\.tsv:{line}: .*{message}"):
        load_qrels(path)


def test_load_qrels_missing_file(tmp_path):
    with pytest.raises(ConfigurationError, match="nope.tsv"):
        load_qrels(tmp_path / "nope.tsv")


# --------------------------------------------------------------------------------------------------- report


def _result(qid: str, ndcg: float, recall: float) -> QueryResult:
    return QueryResult(query_id=qid, query=f"query {qid}", ndcg=ndcg, recall=recall, rr=ndcg, ranked=["x"], relevant=["y"])


def test_worst_orders_by_ndcg_then_recall_then_id():
    report = EvalReport(
        collection="c", k=10, match="stem", queries=5, ndcg=0.5, recall=0.5, mrr=0.5,
        per_query=[_result("q5", 0.9, 1.0), _result("q4", 0.2, 0.5), _result("q3", 0.2, 0.1), _result("q2", 0.2, 0.5),
                   _result("q1", 1.0, 1.0)],
    )
    assert [q.query_id for q in report.worst(4)] == ["q3", "q2", "q4", "q5"]
    assert [q.query_id for q in report.worst()] == ["q3", "q2", "q4", "q5", "q1"]


def test_build_report_aggregates_skips_and_serializes():
    queries = {"q1": "ducks", "q2": "patents", "q3": "no qrels", "q4": "only a zero grade"}
    qrels = {"q1": {"duck": 2, "wiki_duck": 1}, "q2": {"turbo": 1}, "q4": {"duck": 0}, "q9": {"duck": 1}}
    rankings = {"q1": ["duck", "x", "wiki_duck"], "q2": []}  # q2 found nothing

    report = build_report("corpus", queries, qrels, rankings, k=10, match="stem", model="m")

    assert report.queries == 2
    assert report.skipped_queries == ["q3", "q4", "q9"]
    q1, q2 = report.per_query
    assert q1.ndcg == pytest.approx(2.5 / (2 + 1 / math.log2(3))) and q1.recall == 1.0 and q1.rr == 1.0
    assert q1.relevant == ["duck", "wiki_duck"] and q1.ranked == ["duck", "x", "wiki_duck"]
    assert (q2.ndcg, q2.recall, q2.rr, q2.ranked) == (0.0, 0.0, 0.0, [])
    assert report.ndcg == pytest.approx(q1.ndcg / 2) and report.recall == 0.5 and report.mrr == 0.5

    data = report.to_json_dict()
    assert {"collection", "k", "match", "queries", "skipped_queries", "ndcg", "recall", "mrr", "worst",
            "per_query"} <= set(data)
    assert [q["query_id"] for q in data["worst"]] == ["q2", "q1"]
    assert data["per_query"][0]["ranked"] == ["duck", "x", "wiki_duck"]


def test_build_report_without_evaluable_queries_is_zero_not_an_error():
    report = build_report("corpus", {"q1": "x"}, {}, {}, k=5, match="stem")
    assert (report.queries, report.ndcg, report.recall, report.mrr) == (0, 0.0, 0.0, 0.0)
    assert report.skipped_queries == ["q1"] and report.worst() == []


def test_render_prints_aggregates_and_worst_queries():
    from rich.console import Console

    report = build_report("corpus", {"q1": "a very long question " * 10, "q2": "short"},
                          {"q1": {"duck": 2}, "q2": {"turbo": 1}}, {"q1": ["x", "y", "duck", "z"], "q2": ["turbo"]},
                          k=10, match="stem")
    console = Console(record=True, width=200)
    render(report, console)
    text = console.export_text()
    for expected in ("nDCG@10", "recall@10", "MRR@10", "worst", "q1", "duck", "x, y, duck", "…"):
        assert expected in text
    assert "a very long question " * 10 not in text  # cut to 60 characters


def test_importing_the_module_stays_cheap():
    import subprocess
    import sys

    code = ("import sys, docingest.evaluate; heavy = [m for m in ('torch', 'qdrant_client', 'prefect', 'docling') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
