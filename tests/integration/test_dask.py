"""Scale-out: parse-and-chunk tasks on a Dask cluster (prefect-dask) give the same collection as the default runner."""

from __future__ import annotations

import pytest

from docingest.flows.ingest import ingest_documents
from docingest.flows.runners import make_task_runner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILES = ["md/sources/duck.md", "html/sources/example_01.html", "docx/sources/unit_test_headers.docx",
         "csv/sources/csv-comma.csv", "pdf/sources/multi_page.pdf"]


@pytest.fixture
def points(written_store):
    """``points(collection) -> {id: (text, path, vector)}``: a collection in the store the test's runs wrote."""
    def read(collection: str) -> dict[str, tuple]:
        return {p["id"]: (p["payload"]["text"], p["payload"]["path"], [round(x, 4) for x in p["vector"][""]])
                for p in written_store().points(collection, with_vectors=True)}

    return read


def test_dask_local_cluster_gives_the_same_collection(prefect_server, home, tmp_path, task_states, corpus_copy, points):
    import dask
    from distributed import LocalCluster

    docs = corpus_copy(FILES, tmp_path / "docs")
    dask.config.set({"distributed.worker.daemon": False})  # our parse workers are children of Dask's workers
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        on_dask = ingest_documents.with_options(task_runner=make_task_runner("dask", cluster.scheduler_address))(
            source=str(docs), collection="on-dask")
        workers_used = {w["host"] + str(w["id"]) for w in cluster.scheduler_info["workers"].values()}
    assert (on_dask.documents.new, on_dask.documents.failed) == (5, 0)
    assert task_states(on_dask.flow_run_id, "parse-and-chunk") == ["Completed"] * 5  # parsed there, not cached
    assert len(workers_used) == 2

    on_threads = ingest_documents(source=str(docs), collection="on-threads")
    assert on_threads.chunks.upserted == on_dask.chunks.upserted > 0
    assert points("on-dask") == points("on-threads")
