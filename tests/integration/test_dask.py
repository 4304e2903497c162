"""Scale-out on Dask: the workers parse, chunk and embed pools of documents, the flow plans and writes. The same
collection as the default runner on a LocalCluster and on a real cluster (`dask scheduler` and `dask worker`
processes on loopback), also when a worker or every worker dies mid-run; a wrong scheduler address fails before
anything is written; hostile documents stay inside a worker's parse sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from docingest.core.dask_worker import EVENT_TOPIC
from docingest.datamodel import DocumentStatus
from docingest.flows.ingest import ingest_documents
from docingest.flows.runners import make_task_runner
from docingest.options import IngestOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILES = ["md/sources/duck.md", "html/sources/example_01.html", "docx/sources/unit_test_headers.docx",
         "csv/sources/csv-comma.csv", "pdf/sources/multi_page.pdf"]
MIN_COSINE = 0.9999  # a worker's torch runs one thread, the flow's two: sums in another order, the same vectors


@pytest.fixture
def collection(written_store):
    """``collection(name) -> {id: (payload without its write time, vector)}``: a collection of the test's store."""
    def read(name: str) -> dict[str, tuple[dict, np.ndarray]]:
        store = written_store()
        return {p["id"]: ({k: v for k, v in p["payload"].items() if k != "ingested_at"},
                          np.asarray(p["vector"][""], dtype=np.float32))
                for p in store.points(store.resolve(name), with_vectors=True)}

    return read


def assert_same(on_dask: dict, default: dict) -> None:
    """Point for point the default runner's collection: the same ids and payloads, vectors with cosine >= 0.9999."""
    assert on_dask.keys() == default.keys() and on_dask
    for point_id, (payload, vector) in default.items():
        assert on_dask[point_id][0] == payload
        assert float(np.dot(on_dask[point_id][1], vector)) >= MIN_COSINE  # both normalized


@pytest.fixture
def cli(bin_dir, home, tmp_path, prefect_home):
    """``cli(*args, wait=True, **env)``: `docingest` in a subprocess with the test's DOCINGEST_HOME and a Prefect home
    of its own (its temporary API); a CompletedProcess, or with ``wait=False`` the running Popen (stdout and stderr
    to files beside it)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DOCINGEST_", "PREFECT_API"))}
    base.update(DOCINGEST_HOME=str(home), PREFECT_HOME=prefect_home(tmp_path / "cli-prefect-home"))
    runs = []

    def run(*args: str, wait: bool = True, **env: str) -> subprocess.Popen | subprocess.CompletedProcess:
        n = len(runs)
        out, err = (tmp_path / f"cli-{n}.out").open("w"), (tmp_path / f"cli-{n}.err").open("w")
        proc = subprocess.Popen([str(bin_dir / "docingest"), *args], env={**base, **env}, stdout=out, stderr=err)
        proc.out_path, proc.err_path = Path(out.name), Path(err.name)  # type: ignore[attr-defined]
        runs.append(proc)
        if not wait:
            return proc
        proc.wait(300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.out_path.read_text(),
                                           proc.err_path.read_text())

    yield run
    for proc in runs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def wait_for_files(*paths: Path, proc: subprocess.Popen, limit_s: float = 180) -> None:
    """Until every path exists (a held fault's report); fails if ``proc`` ends first."""
    deadline = time.monotonic() + limit_s
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, proc.err_path.read_text()[-3000:]  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, [p for p in paths if not p.exists()]
        time.sleep(0.2)


def test_dask_local_cluster_gives_the_same_collection(prefect_server, home, tmp_path, task_states, corpus_copy,
                                                      collection):
    import dask
    from distributed import LocalCluster

    docs = corpus_copy(FILES, tmp_path / "docs")
    dask.config.set({"distributed.worker.daemon": False})  # our parse workers are children of Dask's workers
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        on_dask = ingest_documents.with_options(task_runner=make_task_runner("dask", cluster.scheduler_address))(
            source=str(docs), collection="on-dask")
        workers_used = {w["host"] + str(w["id"]) for w in cluster.scheduler_info["workers"].values()}
    assert (on_dask.documents.new, on_dask.documents.failed) == (5, 0)
    # One task run per pool of documents (here one document each: 5 documents on 2 threads), parsed, chunked and
    # embedded there; the flow ran no parse, embed or encode task of its own.
    assert task_states(on_dask.flow_run_id, "parse, chunk and embed") == ["Completed"] * 5
    assert task_states(on_dask.flow_run_id, "parse-and-chunk") == task_states(on_dask.flow_run_id, "embed") == []
    assert len(workers_used) == 2

    on_threads = ingest_documents(source=str(docs), collection="on-threads")
    assert on_threads.chunks.upserted == on_dask.chunks.upserted > 0
    assert_same(collection("on-dask"), collection("on-threads"))


def test_a_real_cluster_gives_the_default_runners_collection_and_keeps_poison_in_the_sandbox(
        dask_cluster, prefect_server, home, tmp_path, corpus_copy, collection):
    cluster = dask_cluster(2, DOCINGEST_FAULT="hog:hog.md")  # hog.md eats memory in whichever parse worker reads it
    docs = corpus_copy(FILES, tmp_path / "docs")
    on_dask = ingest_documents.with_options(task_runner=make_task_runner("dask", cluster.address))(
        source=str(docs), collection="on-dask")
    assert (on_dask.documents.new, on_dask.documents.failed) == (5, 0)
    ingest_documents(source=str(docs), collection="on-threads")
    assert_same(collection("on-dask"), collection("on-threads"))

    # The existing hostile documents, on the workers: a parser that hangs (Docling on very deep HTML) and one that
    # eats memory fail alone, under the same time and memory limits as on the default runner.
    depth = 50_000
    (docs / "deep.html").write_text("<html><body>" + "<div>" * depth + "deep" + "</div>" * depth + "</body></html>")
    (docs / "hog.md").write_text("# Hog\n\nThis one eats memory.\n")
    (docs / "duck.md").write_text((docs / "duck.md").read_text() + "\n\nOne more paragraph about ducks.\n")
    again = ingest_documents.with_options(task_runner=make_task_runner("dask", cluster.address))(
        source=str(docs), collection="on-dask", options=IngestOptions(parse={"timeout_s": 5, "max_memory_mb": 1200}))
    failures = {f.source.rsplit("/", 1)[-1]: f.error for f in again.failures}
    assert set(failures) == {"deep.html", "hog.md"}, failures
    assert failures["deep.html"].startswith("timeout: parsing took longer than 5 s")
    assert failures["hog.md"].startswith("memory limit: parser used")
    assert (again.documents.changed, again.documents.unchanged) == (1, 4)
    # Each worker loaded the model once, for both runs.
    loads = cluster.events(EVENT_TOPIC)
    assert sorted(e["worker"] for e in loads) == sorted({e["worker"] for e in loads}) and len(loads) == 2, loads
    assert all(e["error"] is None for e in loads)


def test_a_worker_killed_mid_run_has_its_pool_done_by_the_other(dask_cluster, cli, prefect_server, tmp_path,
                                                                corpus_copy, collection):
    held = tmp_path / "held"
    cluster = dask_cluster(0)
    cluster.add_worker("doomed", DOCINGEST_FAULT="hold:in-embed:1", DOCINGEST_FAULT_REPORT=str(held))
    cluster.add_worker("survivor")
    cluster.wait_for_workers(2)
    docs = corpus_copy(FILES, tmp_path / "docs")
    run = cli("ingest", str(docs), "-c", "on-dask", "--task-runner", "dask", "--dask-address", cluster.address,
              "--json", wait=False)
    wait_for_files(held, proc=run)  # the doomed worker is encoding a pool
    cluster.kill("doomed")
    assert run.wait(300) == 0, run.err_path.read_text()[-3000:]
    result = json.loads(run.out_path.read_text())
    assert (result["documents"]["new"], result["documents"]["failed"]) == (5, 0)
    ingest_documents(source=str(docs), collection="clean")
    assert_same(collection("on-dask"), collection("clean"))


def test_every_worker_gone_fails_the_run_with_nothing_half_written_and_the_next_run_resumes(
        dask_cluster, cli, prefect_server, written_store, tmp_path, corpus_copy, collection):
    cluster = dask_cluster(0)
    reports = [tmp_path / "held-1", tmp_path / "held-2"]
    for n, report in enumerate(reports, 1):  # each worker finishes one pool and holds in its second
        cluster.add_worker(f"worker-{n}", DOCINGEST_FAULT="hold:in-embed:2", DOCINGEST_FAULT_REPORT=str(report))
    cluster.wait_for_workers(2)
    docs = corpus_copy(FILES, tmp_path / "docs")
    args = ("ingest", str(docs), "-c", "on-dask", "--task-runner", "dask", "--dask-address", cluster.address, "--json")
    run = cli(*args, wait=False, DOCINGEST_DASK_WORKER_WAIT_S="3")
    wait_for_files(*reports, proc=run)
    cluster.kill("worker-1")
    cluster.kill("worker-2")
    assert run.wait(300) == 2
    stderr = run.err_path.read_text().strip()
    assert len(stderr.splitlines()) == 1 and "had no worker for 3 s" in stderr, stderr

    # Nothing half-written: every document of the manifest has its points, every point its manifest record.
    store = written_store()
    physical = store.resolve("on-dask")
    points: dict[str, list[dict]] = {}
    for p in store.points(physical):
        points.setdefault(p["payload"]["path"], []).append(p["payload"])
    manifest = store.manifest(physical, docs.resolve().as_uri())
    assert 0 < len(manifest) < len(FILES) and manifest.keys() == points.keys()
    for path, record in manifest.items():
        assert record.status is DocumentStatus.SUCCESS
        assert {p["version"] for p in points[path]} == {record.version} and len(points[path]) == record.chunks
    from docingest.core.store import close_backends

    close_backends()  # the next run's process opens the store

    cluster.add_worker("worker-3")
    cluster.wait_for_workers(1)
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout)["documents"]
    assert (result["unchanged"], result["new"], result["failed"]) == (len(manifest), len(FILES) - len(manifest), 0)
    ingest_documents(source=str(docs), collection="clean")
    assert_same(collection("on-dask"), collection("clean"))


def test_a_wrong_scheduler_address_exits_2_before_anything_is_written(cli, written_store, tmp_path, corpus_copy):
    docs = corpus_copy(FILES[:1], tmp_path / "docs")
    started = time.monotonic()
    done = cli("ingest", str(docs), "-c", "nowhere", "--task-runner", "dask", "--dask-address", "tcp://127.0.0.1:1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: cannot reach the Dask scheduler at tcp://127.0.0.1:1: Connection refused"], done.stderr
    assert not written_store().collection_exists("nowhere")
    print(f"refused in {time.monotonic() - started:.1f} s")
