"""BM25 vectors and fusion, on both store backends (Qdrant Edge, and qdrant-client's local mode standing in for a
server): a sparse vector comes back as it was encoded, and hybrid scores are the reciprocal rank fusion of the dense
and BM25 rankings."""

from __future__ import annotations

import uuid

import pytest

from docingest.core.sparse import SPARSE_VECTOR, encoder, sparse_text
from docingest.core.store import Search
from docingest.core.store.backend import RRF_K
from docingest.exceptions import ConfigurationError

pytestmark = pytest.mark.unit

TEXTS = ["The valve XQ-77-ZEBRA must be replaced every two years.",
         "Zebras are striped horses that live on the savanna.",
         "Replacement valves are ordered from the maintenance catalogue.",
         "Train travel is preferred for trips under five hours.",
         "Running runners ran: stemming makes these one term."]
DENSE = [[1.0, 0.0, 0.0], [0.9, 0.4, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]


@pytest.fixture
def store(store):
    """The conftest's store (once per engine) holding the five texts; test_store_congruence compares the engines."""
    physical = store.ensure_collection("h", 3, sparse=(SPARSE_VECTOR,))
    sparse = encoder().documents(TEXTS)
    store.upsert(physical, [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, t)), "vector": v, "sparse": {SPARSE_VECTOR: s},
                             "payload": {"text": t, "n": i, "sparse_model": "bm25:english"}}
                            for i, (t, v, s) in enumerate(zip(TEXTS, DENSE, sparse, strict=True))])
    return store


def test_the_sparse_encoding_round_trips_through_the_store(store):
    stored = {p["payload"]["n"]: p["vector"][SPARSE_VECTOR] for p in store.points("h", with_vectors=True)}
    for n, (indices, values) in enumerate(encoder().documents(TEXTS)):
        back = dict(zip(stored[n]["indices"], stored[n]["values"], strict=True))
        assert back == pytest.approx(dict(zip(indices, values, strict=True)))
    assert store.sparse_vectors("h") == {SPARSE_VECTOR} and store.sparse_language("h") == "english"


def test_bm25_finds_exact_terms_and_stems(store):
    bm25 = encoder()
    hits = store.find("h", Search(limit=5, sparse=bm25.query("xq-77-zebra")))
    assert hits[0][1]["n"] == 0
    run = store.find("h", Search(limit=5, sparse=bm25.query("run")))
    assert [p["n"] for _, p in run] == [4]  # "running", "runners" and "ran"... at least "running" stems to run
    assert store.find("h", Search(limit=5, sparse=bm25.query("the and of"))) == []  # stopwords only: nothing


def test_hybrid_scores_are_the_reciprocal_rank_fusion_of_both_rankings(store):
    query_dense, query_sparse = [1.0, 0.2, 0.1], encoder().query("replacement valve")
    dense = [p["n"] for _, p in store.find("h", Search(limit=5, dense=query_dense))]
    sparse = [p["n"] for _, p in store.find("h", Search(limit=5, sparse=query_sparse))]
    expected = {}
    for ranking in (dense, sparse):
        for rank, n in enumerate(ranking):
            expected[n] = expected.get(n, 0.0) + 1 / (RRF_K + rank)
    fused = store.find("h", Search(limit=5, dense=query_dense, sparse=query_sparse, fusion="rrf"))
    assert {p["n"]: s for s, p in fused} == pytest.approx(expected)
    assert [s for s, _ in fused] == sorted((s for s, _ in fused), reverse=True)
    dbsf = store.find("h", Search(limit=5, dense=query_dense, sparse=query_sparse, fusion="dbsf"))
    assert {p["n"] for _, p in dbsf} == set(expected) and dbsf[0][1]["n"] in (0, 2)


def test_sparse_text_is_headings_then_text_and_unknown_languages_are_refused():
    assert sparse_text(["Guide", "Setup"], "Install it.") == "Guide\nSetup\nInstall it."
    with pytest.raises(ConfigurationError, match="klingon"):
        encoder("klingon")
    assert encoder("german").name == "bm25:german"
