"""docingest watch: real processes, real file-system events. Each save pattern, rename and folder moves, deletes,
editors' temporary files, the folder vanishing, SIGTERM, kill -9 then resume; the collection at the end always equals
what a clean ``docingest ingest --mode full`` of the folder makes (ids and payloads)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from docingest.core.store import QdrantLocation, QdrantStore, close_backends

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXE = Path(sys.executable).with_name("docingest")
# Start-up measured here: ~12 s to "ready" for a handful of Markdown files on an idle 2-core machine (~25 s in a
# loaded suite run); 120 s is over 4x that. Each change is searchable in ~0.5-1.5 s; events are awaited 30 s (20x).
READY_S, EVENT_S = 120, 30


def text(n: int, extra: str = "") -> str:
    return f"# Note {n}\n\n" + " ".join(f"Sentence {n}.{j} about subject {n * 11 + j}." for j in range(30)) + extra


def env_for(tmp_path: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCINGEST_", "PREFECT_API"))}
    env.update(DOCINGEST_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect-home"), **more)
    return env


class Watch:
    """A ``docingest watch --json`` process and the events it printed."""

    def __init__(self, source: Path | str, store: Path, tmp_path: Path, *args: str, **env: str) -> None:
        self.stderr_path = tmp_path / f"watch-stderr-{time.monotonic_ns()}.txt"
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115 - open for the process's life; a file, not a pipe
        self.proc = subprocess.Popen(
            [str(EXE), "watch", str(source), "-c", "live", "--qdrant-path", str(store), "--json",
             "--debounce-ms", "150", *args],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env_for(tmp_path, **env))
        self.events: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def wait_for(self, want, timeout: float = EVENT_S) -> dict:
        """The first event (from now on) for which ``want(event)`` is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(event)
            if want(event):
                return event
        raise AssertionError(f"no such event in {timeout} s; saw {self.seen[-10:]}; stderr: {self.errors()[-2000:]}")

    def ready(self) -> dict:
        return self.wait_for(lambda e: e["event"] == "ready", READY_S)

    def expect(self, *wanted: tuple[str, str]) -> None:
        """Each (event, path) arrives, in any order."""
        missing = set(wanted)
        while missing:
            event = self.wait_for(lambda e: (e["event"], e.get("path")) in missing)
            missing.discard((event["event"], event["path"]))

    def quiet(self, seconds: float) -> list[dict]:
        """The events of the next ``seconds`` (expected: none)."""
        deadline, got = time.monotonic() + seconds, []
        while time.monotonic() < deadline:
            try:
                got.append(self.events.get(timeout=0.1))
            except queue.Empty:
                pass
        self.seen += got
        return got

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.stderr.close()
        return code, time.monotonic() - started

    def errors(self) -> str:
        if not self.stderr.closed:
            self.stderr.flush()
        return self.stderr_path.read_text()


def snapshot(store_path: Path) -> dict:
    """Point id -> payload without the write time, of collection "live"."""
    store = QdrantStore(QdrantLocation(path=store_path))
    try:
        return {p["id"]: {k: v for k, v in p["payload"].items() if k != "ingested_at"} for p in store.points("live")}
    finally:
        close_backends()


def clean_run(source: Path | str, tmp_path: Path, **env: str) -> dict:
    """What a clean ``docingest ingest --mode full`` of the source's present state makes."""
    store = tmp_path / f"clean-{time.monotonic_ns()}"
    done = subprocess.run([str(EXE), "ingest", str(source), "-c", "live", "--qdrant-path", str(store), "--json",
                           "--mode", "full"], env=env_for(tmp_path, **env), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return snapshot(store)


@pytest.fixture
def folder(tmp_path, reap):
    """Four notes; afterwards, whatever a SIGKILLed watch left running (its temporary Prefect API) is killed."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(4):
        (docs / f"note{n}.md").write_text(text(n))
    yield docs
    reap(tmp_path / "prefect-home")


@pytest.mark.timeout(600)
def test_saves_renames_moves_and_deletes_end_as_a_clean_run(folder, tmp_path):
    store = tmp_path / "store"
    watch = Watch(folder, store, tmp_path)
    ready = watch.ready()
    assert ready["documents"] == 4 and ready["watching"] == "inotify"

    # A new file, written at once.
    saved = time.time()
    (folder / "new.md").write_text(text(10))
    indexed = watch.wait_for(lambda e: e.get("path") == "new.md")
    assert indexed["event"] == "indexed" and indexed["change"] == "new" and indexed["chunks"] >= 1
    assert indexed["at"] > saved

    # Write to a temporary file, then rename it over the document (most editors' safe save).
    tmp = folder / ".note0.md.tmp"
    tmp.write_text(text(0, " Saved through a temporary file."))
    os.replace(tmp, folder / "note0.md")
    assert watch.wait_for(lambda e: e.get("path") == "note0.md")["change"] == "changed"

    # Truncate and rewrite in pieces, pausing longer than the quiet period between them: whatever was indexed
    # in between, the final bytes win.
    with open(folder / "note1.md", "w") as fh:
        for piece in (text(1)[:40], text(1)[40:120], text(1)[120:] + " Rewritten in pieces."):
            fh.write(piece)
            fh.flush()
            time.sleep(0.4)
    watch.wait_for(lambda e: e.get("path") == "note1.md")

    # Editors' backup, swap, lock and temporary files: never a document, never an event.
    transient = ("note2.md~", ".note2.md.swp", ".#note2.md", "draft.tmp", "4913")
    for name in transient:
        (folder / name).write_text("transient")
    assert [e for e in watch.quiet(1.5) if e.get("path") in transient] == []

    # Delete; rename.
    (folder / "note3.md").unlink()
    watch.expect(("deleted", "note3.md"))
    (folder / "note2.md").rename(folder / "renamed.md")
    watch.expect(("deleted", "note2.md"), ("indexed", "renamed.md"))

    # A whole folder moved in, then one moved out.
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "a.md").write_text(text(20))
    (outside / "deep" / "b.md").write_text(text(21))
    shutil.move(str(outside), str(folder / "moved"))
    watch.expect(("indexed", "moved/a.md"), ("indexed", "moved/deep/b.md"))
    shutil.move(str(folder / "moved"), str(tmp_path / "away"))
    watch.expect(("deleted", "moved/a.md"), ("deleted", "moved/deep/b.md"))

    code, took = watch.stop()
    assert code == 0, watch.errors()[-2000:]
    assert took < 10
    for name in transient:
        (folder / name).unlink()
    assert snapshot(store) == clean_run(folder, tmp_path)


@pytest.mark.timeout(600)
def test_kill_9_in_a_burst_then_watch_again_equals_a_clean_run(folder, tmp_path, reap):
    store = tmp_path / "store"
    watch = Watch(folder, store, tmp_path)
    watch.ready()
    burst = tmp_path / "burst"
    burst.mkdir()
    for n in range(30):
        (burst / f"b{n:02}.md").write_text(text(100 + n))
    shutil.copytree(burst, folder / "burst")
    watch.wait_for(lambda e: e["event"] == "indexed")  # the burst's run is writing
    watch.stop(signal.SIGKILL)
    reap(tmp_path / "prefect-home")
    (folder / "note0.md").unlink()  # and a change while nothing watched

    again = Watch(folder, store, tmp_path)
    assert again.ready()["documents"] == 33
    assert again.stop()[0] == 0
    assert snapshot(store) == clean_run(folder, tmp_path)


@pytest.mark.timeout(600)
def test_a_vanished_folder_pauses_the_watch_and_deletes_nothing(folder, tmp_path):
    store = tmp_path / "store"
    watch = Watch(folder, store, tmp_path)
    watch.ready()
    aside = tmp_path / "aside"
    folder.rename(aside)
    paused = watch.wait_for(lambda e: e["event"] in ("paused", "deleted"))
    assert paused["event"] == "paused", paused
    assert [e for e in watch.quiet(2) if e["event"] == "deleted"] == []
    (aside / "while-away.md").write_text(text(30))
    aside.rename(folder)  # back: reconciled, the file added meanwhile indexed, nothing deleted
    watch.expect(("indexed", "while-away.md"))
    (folder / "after.md").write_text(text(31))  # and events flow again
    watch.expect(("indexed", "after.md"))
    assert [e for e in watch.seen if e["event"] == "deleted"] == []
    assert watch.stop()[0] == 0
    assert snapshot(store) == clean_run(folder, tmp_path)


@pytest.mark.timeout(600)
def test_without_file_system_events_it_polls_and_says_so_once(folder, tmp_path):
    store = tmp_path / "store"
    watch = Watch(folder, store, tmp_path, "--poll-s", "0.5", DOCINGEST_FAULT="watch-limit")
    assert watch.ready()["watching"] == "polling"
    (folder / "polled.md").write_text(text(40))
    watch.expect(("indexed", "polled.md"))
    (folder / "note1.md").unlink()
    watch.expect(("deleted", "note1.md"))
    assert watch.stop()[0] == 0
    warnings = [line for line in watch.errors().splitlines() if "polling" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "max_user_watches" in warnings[0]
    assert snapshot(store) == clean_run(folder, tmp_path)


@pytest.mark.timeout(600)
def test_each_document_is_a_prefect_event_on_a_real_server(folder, tmp_path, prefect_server):
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    watch = Watch(folder, tmp_path / "store", tmp_path, PREFECT_API_URL=api)
    watch.ready()
    (folder / "evented.md").write_text(text(50))
    indexed = watch.wait_for(lambda e: e.get("path") == "evented.md")
    (folder / "note0.md").unlink()
    watch.expect(("deleted", "note0.md"))
    assert watch.stop()[0] == 0

    def events() -> dict[str, dict]:
        answer = httpx.post(f"{api}/events/filter", json={"filter": {"event": {"prefix": ["docingest.document."]},
                                                                     "any_resource": {"id": ["docingest.collection.live"]}},
                                                          "limit": 50}, timeout=10)
        answer.raise_for_status()
        return {e["payload"]["path"]: e for e in answer.json()["events"]}

    deadline, got = time.monotonic() + EVENT_S, {}
    while time.monotonic() < deadline and not {"evented.md", "note0.md"} <= set(got):
        got = events()
        time.sleep(0.5)
    assert got["evented.md"]["event"] == "docingest.document.indexed"
    assert got["evented.md"]["payload"]["chunks"] == indexed["chunks"]
    assert got["evented.md"]["resource"]["prefect.resource.id"] == "docingest.collection.live"
    assert got["note0.md"]["event"] == "docingest.document.deleted"
    related = got["evented.md"]["related"]
    assert related and related[0]["prefect.resource.role"] == "flow-run"  # the batch's flow run, in the UI


def canonical(results: dict) -> tuple:
    """Search results with each group of equal scores as a set: the order within a tie is not defined."""
    hits = sorted(results["hits"], key=lambda h: (-round(h["score"], 6), h["source"], h["chunk_index"]))
    return results["mode"], [(round(h["score"], 6), h["source"], h["chunk_index"], h["text"]) for h in hits]


@pytest.mark.timeout(600)
def test_reads_from_other_processes_go_through_the_watch_with_the_same_results(folder, tmp_path):
    store = tmp_path / "store"
    watch = Watch(folder, store, tmp_path)
    watch.ready()
    assert (store / "docingest.sock").stat().st_mode & 0o777 == 0o600  # owner-only

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(EXE), *args, "--qdrant-path", str(store)], env=env_for(tmp_path),
                              capture_output=True, text=True, timeout=120)

    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "subject 23"}\n{"_id": "q2", "text": "Note 3"}\n')
    (tmp_path / "qrels.tsv").write_text("q1\tnote2\t1\nq2\tnote3\t1\n")
    evaluation = ("eval", "-c", "live", "--queries", str(tmp_path / "queries.jsonl"), "--qrels",
                  str(tmp_path / "qrels.tsv"), "--json", "--mode", "dense")  # dense: no RRF ties to order
    held_search = cli("search", "subject 23", "-c", "live", "--json")
    held_export = cli("export", "-c", "live")
    held_eval = cli(*evaluation)
    unknown = cli("search", "x", "-c", "nope")
    writer = cli("ingest", str(folder), "-c", "live")
    import docingest  # the Python API in this (third) process: through the socket too

    held_python = docingest.search("subject 23", "live", qdrant_path=str(store))
    assert held_search.returncode == 0 and held_export.returncode == 0, held_search.stderr + held_export.stderr
    assert held_eval.returncode == 0, held_eval.stderr
    assert unknown.returncode == 2 and "unknown collection" in unknown.stderr
    assert writer.returncode == 2 and "in use by process" in writer.stderr and "docingest watch" in writer.stderr
    assert watch.stop()[0] == 0
    assert not (store / "docingest.sock").exists()

    own_search, own_export = cli("search", "subject 23", "-c", "live", "--json"), cli("export", "-c", "live")
    # Same hits, scores and mode; hits with equal scores (RRF makes ties) may come in either order, on any two calls
    assert canonical(json.loads(held_search.stdout)) == canonical(json.loads(own_search.stdout))
    assert held_export.stdout == own_export.stdout and len(held_export.stdout.splitlines()) >= 4
    assert json.loads(held_eval.stdout) == json.loads(cli(*evaluation).stdout)
    own_python = docingest.search("subject 23", "live", qdrant_path=str(store))
    assert canonical({"mode": held_python.mode, "hits": [h.model_dump() for h in held_python]}) == \
        canonical({"mode": own_python.mode, "hits": [h.model_dump() for h in own_python]})
    close_backends()


# -- buckets and repositories: a cheap check every --poll-s; bucket notifications through `serve --watch` ------------

S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
SECRET = "test-secret-of-at-least-32-bytes-0123456789"


def put(client, bucket: str, key: str, body: str) -> None:
    import io

    data = body.encode()
    client.put_object(bucket, key, io.BytesIO(data), len(data))


@pytest.fixture
def bucket(s3_endpoint, tmp_path, reap):
    """A bucket on the loopback S3 with three notes under docs/: (client, bucket, the environment that reaches it)."""
    from minio import Minio

    client = Minio(s3_endpoint.removeprefix("http://"), access_key="testing", secret_key="testing-secret",
                   secure=False)
    name = f"live-{time.monotonic_ns()}"
    client.make_bucket(name)
    for n in range(3):
        put(client, name, f"docs/note{n}.md", text(n))
    yield client, name, {"DOCINGEST_S3_ENDPOINT": s3_endpoint, **S3_KEYS}
    reap(tmp_path / "prefect-home")
    reap(tmp_path / "ph")


@pytest.mark.timeout(600)
def test_a_bucket_is_checked_every_poll_and_ends_as_a_clean_run(bucket, tmp_path):
    client, name, env = bucket
    store = tmp_path / "store"
    watch = Watch(f"s3://{name}/docs", store, tmp_path, "--poll-s", "0.5", **env)
    ready = watch.ready()
    assert ready["documents"] == 3 and ready["watching"] == "polling every 0.5 s"

    put(client, name, "docs/new.md", text(10))
    put(client, name, "docs/note0.md", text(0, " Changed in the bucket."))
    client.remove_object(name, "docs/note1.md")
    put(client, name, "elsewhere/outside.md", text(30))  # outside the prefix: not this watch's
    put(client, name, "docs/note2.md~", "an editor's backup")
    watch.expect(("indexed", "new.md"), ("indexed", "note0.md"), ("deleted", "note1.md"))
    assert {e["path"]: e["change"] for e in watch.seen if e["event"] == "indexed"} == {"new.md": "new",
                                                                                      "note0.md": "changed"}
    assert [e for e in watch.quiet(1.5) if e["event"] != "skipped"] == []

    code, took = watch.stop()
    assert code == 0 and took < 10, watch.errors()[-2000:]
    client.remove_object(name, "docs/note2.md~")
    assert snapshot(store) == clean_run(f"s3://{name}/docs", tmp_path, **env)


@pytest.mark.timeout(600)
def test_a_new_commit_is_synced_and_ends_as_a_clean_run(git_origin, git, tmp_path, reap):
    origin, work = git_origin(tmp_path)
    for n in range(3):
        (work / f"note{n}.md").write_text(text(n))
    git("add", "-A", cwd=work)
    git("commit", "-qm", "three notes", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    url, store = f"file://{origin}", tmp_path / "store"
    try:
        watch = Watch(url, store, tmp_path, "--poll-s", "0.5")
        assert watch.ready()["documents"] == 3

        (work / "note0.md").write_text(text(0, " Changed in a commit."))
        (work / "note1.md").unlink()
        (work / "new.md").write_text(text(10))
        git("add", "-A", cwd=work)
        git("commit", "-qm", "change, delete, add", cwd=work)
        git("push", "-q", "origin", "main", cwd=work)
        watch.expect(("indexed", "note0.md"), ("deleted", "note1.md"), ("indexed", "new.md"))
        assert watch.quiet(1.5) == []  # the next checks see the same commit: nothing runs again

        code, _ = watch.stop()
        assert code == 0, watch.errors()[-2000:]
        assert snapshot(store) == clean_run(url, tmp_path)
    finally:
        reap(tmp_path / "prefect-home")


def minio_event(name: str, bucket: str, key: str) -> dict:
    """A bucket notification as MinIO's webhook target posts it (the key URL-encoded, as S3 event records have it)."""
    from urllib.parse import quote

    record = {"eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": "2026-12-08T00:00:00Z",
              "eventName": name, "userIdentity": {"principalId": "minio"},
              "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
                     "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minio"}, "arn": f"arn:aws:s3:::{bucket}"},
                     "object": {"key": quote(key), "size": 10, "eTag": "0" * 32, "sequencer": "1"}}}
    return {"EventName": name, "Key": f"{bucket}/{key}", "Records": [record]}


@pytest.mark.timeout(600)
def test_serve_keeps_a_folder_and_a_bucket_live_and_takes_minio_notifications(bucket, folder, tmp_path,
                                                                               start_service):
    import httpx
    import jwt

    client, name, env = bucket

    def bearer(*collections: str) -> dict[str, str]:
        claims = {"sub": "minio", "exp": int(time.time()) + 3600, "collections": list(collections)}
        return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}

    # Polling a bucket once an hour: what reaches the bucket's collection in seconds came by notification.
    proc, base, _, log = start_service(tmp_path, "--watch", f"{folder}=notes", "--watch", f"s3://{name}/docs=bucket",
                                       "--poll-s", "3600", DOCINGEST_JWT_SECRET=SECRET, **env)
    http = httpx.Client(base_url=base, timeout=30)

    def until(check, what: str, limit_s: float = READY_S):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if (got := check()) is not None:
                return got
            time.sleep(0.3)
        raise AssertionError(f"{what} not within {limit_s} s; log: {log.read_text()[-3000:]}")

    def paths(collection: str, query: str) -> set[str]:
        answer = http.post("/api/v1/search", json={"collection": collection, "query": query, "limit": 20},
                           headers=bearer("*"))
        assert answer.status_code == 200, answer.text
        return {hit["path"] for hit in answer.json()["hits"]}

    try:
        def ready() -> list | None:
            watches = http.get("/api/v1/watches", headers=bearer("*")).json()["watches"]
            return watches if [w["state"] for w in watches] == ["ready", "ready"] else None

        assert {w["collection"]: w["documents"] for w in until(ready, "both watches ready")} == {"notes": 4,
                                                                                                 "bucket": 3}
        assert http.get("/api/v1/watches", headers=bearer("notes")).json()["watches"][0]["collection"] == "notes"

        (folder / "saved.md").write_text(text(40))
        until(lambda: True if "saved.md" in paths("notes", "subject 443") else None, "the saved file searchable", 30)

        put(client, name, "docs/pushed.md", text(50))
        created = minio_event("s3:ObjectCreated:Put", name, "docs/pushed.md")
        assert http.post("/api/v1/notifications/s3", json=created).status_code == 401
        assert http.post("/api/v1/notifications/s3", json=created, headers=bearer("notes")).status_code == 403
        elsewhere = minio_event("s3:ObjectCreated:Put", "not-watched", "docs/x.md")
        answer = http.post("/api/v1/notifications/s3", json=elsewhere, headers=bearer("bucket"))
        assert (answer.status_code, answer.json()["ignored"]) == (202, 1)
        answer = http.post("/api/v1/notifications/s3", json=created, headers=bearer("bucket"))
        assert (answer.status_code, answer.json()) == (202, {"queued": 1, "ignored": 0, "collections": ["bucket"]})
        until(lambda: True if "pushed.md" in paths("bucket", "subject 553") else None, "the pushed object", 30)

        client.remove_object(name, "docs/pushed.md")
        removed = minio_event("s3:ObjectRemoved:Delete", name, "docs/pushed.md")
        assert http.post("/api/v1/notifications/s3", json=removed, headers=bearer("bucket")).status_code == 202
        until(lambda: True if "pushed.md" not in paths("bucket", "subject 553") else None, "the removal", 30)
    finally:
        http.close()
        proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        code = proc.wait(timeout=60)
    # uvicorn shuts down gracefully (the watches first), then re-raises the signal: "terminated by SIGTERM".
    assert code in (0, -signal.SIGTERM) and time.monotonic() - stopping < 10, f"exit {code}: {log.read_text()[-3000:]}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
