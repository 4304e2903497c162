"""The upload service against hostile and careless clients, for real (`docingest serve` on loopback): grants,
fairness under a poison upload, search over HTTP, the upload source beside a CLI folder, and a soak."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import jwt
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "hostile-secret-of-at-least-32-bytes-0123456789"
EXE = Path(sys.executable).with_name("docingest")
PE = b"MZ" + b"\x00" * 58 + (64).to_bytes(4, "little") + b"PE\x00\x00" + b"\x00" * 200
DEEP_HTML = ("<html><body>" + "<div>" * 50_000 + "deep" + "</div>" * 50_000 + "</body></html>").encode()


def auth(user: str, collections=("*",), **claims) -> dict[str, str]:
    claims = {"sub": user, "exp": int(time.time()) + 3600, "collections": list(collections), **claims}
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def post_document(client: httpx.Client, headers: dict, collection: str, name: str, data: bytes) -> httpx.Response:
    return client.post("/api/v1/documents", headers=headers, data={"collection": collection},
                       files={"file": (name, data, "application/octet-stream")})


def wait_job(client: httpx.Client, job_id: str, headers: dict, timeout: float = 300, until=("completed", "failed")):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in until:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {until}: {job}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_idle(client: httpx.Client, headers: dict, timeout: float = 120) -> None:
    """Until /metrics shows no job queued or running and no run in progress (the last run's memory handed back to the
    system before the count of runs reaches 0). 120 s: the jobs left when this is called are the poison uploads'
    (their parse ends at its 15 s limit) or none."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = client.get("/metrics", headers=headers).text
        busy = re.search(r'^docingest_jobs\{state="(queued|running)"\} [1-9]', metrics, re.M)
        if not busy and re.search(r"^docingest_job_runs 0\.0$", metrics, re.M):
            break
        assert time.monotonic() < deadline, f"the service is still busy after {timeout:g} s: {metrics[-1500:]}"
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cli(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_a_poison_upload_holds_no_one_else_and_search_answers_over_http(tmp_path, start_service, reap):
    proc, base, env, log = start_service(tmp_path, DOCINGEST_JWT_SECRET=SECRET, DOCINGEST_UPLOAD_PARSE_TIMEOUT_S="90",
                                         DOCINGEST_UPLOAD_JOB_CONCURRENCY="2")
    try:
        client = httpx.Client(base_url=base, timeout=60)
        alice, bob = auth("alice", ["team-a*"]), auth("bob", ["team-b"], read=["team-a"])
        carol = auth("carol", ["team-a"])
        warm = post_document(client, bob, "team-b", "warm.md", b"# Warm\n\nThe canteen opens at eight.\n").json()
        assert wait_job(client, warm["job_id"], bob)["state"] == "completed"  # the model is loaded

        poison = post_document(client, alice, "team-a", "deep.html", DEEP_HTML)
        assert poison.status_code == 201, poison.text
        wait_job(client, poison.json()["job_id"], alice, until=("running",))
        # Not a bound: the asserts below check an order (the small uploads complete while the poison's job still
        # runs), which a slow machine cannot break; the pause only lets its run hand the file to a parse worker.
        time.sleep(2)

        def small_upload(headers: dict, collection: str, name: str, text: bytes) -> float:
            """Seconds until another user's small upload completes, while the poison still parses: what is asserted
            is the order (completed while the poison's job is still running, its parse held for 90 s), not a
            duration."""
            started = time.monotonic()
            made = post_document(client, headers, collection, name, text).json()
            done = wait_job(client, made["job_id"], headers)
            elapsed = time.monotonic() - started
            poisoned = client.get(f"/api/v1/jobs/{poison.json()['job_id']}", headers=alice).json()
            assert done["state"] == "completed" and poisoned["state"] == "running", (done, poisoned)
            return elapsed

        elapsed = small_upload(bob, "team-b", "badges.md",
                               b"# Badges\n\nVisitors collect a temporary badge at the north entrance.\n")
        print(f"small upload beside a poison upload: completed in {elapsed:.1f} s")  # measured ~3-6 s here
        # In the poison's own collection, another user's later upload runs beside the run the poison holds.
        elapsed = small_upload(carol, "team-a", "lockers.md",
                               b"# Lockers\n\nLockers on the second floor are assigned by the front desk.\n")
        print(f"small upload into the poison's own collection: completed in {elapsed:.1f} s")

        # Search over HTTP: the read grant, the same hits as `docingest search --json`.
        answer = client.post("/api/v1/search", headers=bob, json={"collection": "team-b", "query": "visitor badge"})
        assert answer.status_code == 200, answer.text
        found = answer.json()
        assert found["mode"] == "hybrid" and found["hits"][0]["path"].endswith("badges.md")
        assert client.post("/api/v1/search", headers=bob, json={"collection": "team-a", "query": "x"}
                           ).status_code in (200, 404)  # read grant: allowed (empty or not there yet)
        assert client.post("/api/v1/search", headers=alice, json={"collection": "team-b", "query": "x"}
                           ).status_code == 403
        latencies = []
        for _ in range(40):
            t = time.perf_counter()
            client.post("/api/v1/search", headers=bob, json={"collection": "team-b", "query": "canteen hours"})
            latencies.append(time.perf_counter() - t)
        print(f"search over HTTP, 2 chunks: p50 {sorted(latencies)[20] * 1000:.0f} ms")
    finally:
        proc.kill()  # its poison run would hold a graceful stop
        proc.wait()
        reap(tmp_path / "ph")
    cli_hits = cli(env, tmp_path, "search", "visitor badge", "-c", "team-b", "--json")
    assert cli_hits.returncode == 0, cli_hits.stderr
    assert json.loads(cli_hits.stdout)["hits"] == found["hits"]


def test_the_upload_source_and_a_cli_folder_share_a_collection_without_deleting_each_other(tmp_path, service_env,
                                                                                              start_service):
    folder = tmp_path / "curated"
    folder.mkdir()
    (folder / "policy.md").write_text("# Travel policy\n\nBook trains for trips under four hours.\n")
    (folder / "expenses.md").write_text("# Expenses\n\nReceipts are due within thirty days.\n")
    env = service_env(tmp_path, DOCINGEST_JWT_SECRET=SECRET)
    ingest = cli(env, tmp_path, "ingest", str(folder), "-c", "shared", "--json")
    assert ingest.returncode == 0, ingest.stderr

    def paths(client: httpx.Client) -> set[str]:
        found = client.post("/api/v1/search", headers=auth("alice"),
                            json={"collection": "shared", "query": "policy receipts trains badge", "limit": 20})
        assert found.status_code == 200, found.text
        return {hit["path"].rsplit("/", 1)[-1] for hit in found.json()["hits"]}

    def upload(client: httpx.Client, name: str, text: str) -> None:
        made = post_document(client, auth("alice"), "shared", name, text.encode()).json()
        assert wait_job(client, made["job_id"], auth("alice"))["state"] == "completed"

    # The service and the CLI take turns: the embedded store is held by one process at a time.
    proc, base, _, _ = start_service(tmp_path, DOCINGEST_JWT_SECRET=SECRET)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            upload(client, "badges.md", "# Badges\n\nVisitors collect a badge at the north entrance.\n")
            assert paths(client) == {"policy.md", "expenses.md", "badges.md"}
    finally:
        stop(proc)
    (folder / "expenses.md").unlink()
    full = cli(env, tmp_path, "ingest", str(folder), "-c", "shared", "--mode", "full", "--force", "--json")
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout)["documents"]["deleted"] == 1
    proc, base, _, _ = start_service(tmp_path, DOCINGEST_JWT_SECRET=SECRET)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            assert paths(client) == {"policy.md", "badges.md"}  # the CLI's full sync leaves the uploads alone
            upload(client, "parking.md", "# Parking\n\nThe garage closes at ten; policy allows two badges per car.\n")
            assert paths(client) == {"policy.md", "badges.md", "parking.md"}  # and an upload job leaves the folder's
    finally:
        stop(proc)


def test_soak_200_uploads_from_10_users_3_of_them_hostile(tmp_path, start_service):
    part = 64 * 1024
    proc, base, env, log = start_service(
        tmp_path, DOCINGEST_JWT_SECRET=SECRET, DOCINGEST_UPLOAD_PART_SIZE=str(part),
        DOCINGEST_UPLOAD_MAX_BYTES=str(1 << 20), DOCINGEST_UPLOAD_PARSE_TIMEOUT_S="15",
        DOCINGEST_RATE_LIMIT_UPLOADS_PER_MIN="80", DOCINGEST_RATE_LIMIT_REQUESTS_PER_MIN="2000")
    uploads_root = tmp_path / "home" / "uploads"
    good: dict[str, tuple[str, dict, str]] = {}  # job id -> (code word, headers, collection)
    errors: list[str] = []
    try:
        client = httpx.Client(base_url=base, timeout=120)

        def good_user(n: int, uploads: int = 25, round_: str = "") -> None:
            headers, collection = auth(f"user{n}"), f"soak-{n % 3}"
            with httpx.Client(base_url=base, timeout=120) as c:
                for i in range(uploads):
                    code = f"ZQ{n}X{i:03d}K{round_}"  # the warm-up's codes end in W
                    text = (f"# Note {n}-{i}\n\nThe code word of this note is {code}. "
                            + "It records one decision of the planning meeting. " * (1 + i % 5) + "\n").encode()
                    if i % 2:
                        r = post_document(c, headers, collection, f"note-{i}.md", text)
                    else:  # resumable, in one part
                        made = c.post("/api/v1/uploads", headers=headers, json={
                            "filename": f"note-{i}.md", "size": len(text), "collection": collection}).json()
                        c.put(f"/api/v1/uploads/{made['upload_id']}/parts/1", content=text,
                              headers={**headers, "Content-MD5": md5(text)})
                        r = c.post(f"/api/v1/uploads/{made['upload_id']}/complete", headers=headers, json={})
                    if r.status_code not in (200, 201):
                        errors.append(f"user{n} {i}: {r.status_code} {r.text}")
                        continue
                    good[r.json()["job_id"]] = (code, headers, collection)

        # The steady state before memory is measured: the model loaded, every collection's shard open, the users'
        # runs going at once across the collections. (Warmed one collection at a time, the soak's first concurrent
        # runs alone took the service from 880 to 970 MiB on the CI machine; more rounds after them stay level.)
        # Both measurements are taken idle: a run in progress holds its pools. The service used to keep the runs'
        # freed memory mapped once idle (795 -> 881 MiB on the CI machine, failing the bound); it hands it back as
        # the last run ends now: +4 to +31 MiB in ten runs here (713-720 -> 723-744).
        warm_up = [threading.Thread(target=good_user, args=(n, 3, "W")) for n in range(7)]
        for t in warm_up:
            t.start()
        for t in warm_up:  # 21 small uploads (the whole soak took 58 s here, on a loaded 2-core machine)
            t.join(timeout=300)
        assert not any(t.is_alive() for t in warm_up) and not errors, errors[:5]
        for job_id, (_, headers, _) in list(good.items()):
            job = wait_job(client, job_id, headers)
            assert job["state"] == "completed", job
        for k in range(3):
            client.post("/api/v1/search", headers=auth("warm"), json={"collection": f"soak-{k}", "query": "note"})
        warmed = set(good)
        wait_idle(client, auth("warm"))  # measured idle, as at the end: the runs have ended and handed memory back
        rss_start = rss_kib(proc.pid)
        started = time.monotonic()

        def slow_client() -> None:  # slow bodies, oversized bodies, abandoned uploads
            headers = auth("slow")
            with httpx.Client(base_url=base, timeout=120) as c:
                for k in range(3):
                    made = c.post("/api/v1/uploads", headers=headers, json={
                        "filename": f"slow-{k}.md", "size": 2 * part, "collection": "soak-0"}).json()

                    def trickle():
                        for _ in range(30):
                            time.sleep(0.1)
                            yield b"a" * 100

                    r = c.put(f"/api/v1/uploads/{made['upload_id']}/parts/1", content=trickle(),
                              headers={**headers, "Content-MD5": md5(b"a" * 3000)})
                    assert r.status_code == 400  # 3,000 bytes for a 64 KiB part: refused, nothing kept
                big = c.post("/api/v1/uploads", headers={**headers, "Content-Type": "application/json"},
                             content=(b"x" * 65536 for _ in range(64)))
                assert big.status_code == 413

        def name_and_burst_client() -> None:
            headers = auth("burst")
            with httpx.Client(base_url=base, timeout=120) as c:
                for k in range(4):
                    data = f"# Long name {k}\n\nA name longer than any file system allows.\n".encode()
                    r = post_document(c, headers, "soak-1", "漢" * 300 + f"{k}.md", data)
                    assert r.status_code == 201, r.text
                    good[r.json()["job_id"]] = (None, headers, "soak-1")
                codes = [c.post("/api/v1/uploads", headers=headers, json={
                    "filename": "../../burst.md", "size": 500_000, "collection": "soak-1"}).status_code
                    for _ in range(120)]
                assert set(codes) <= {201, 413, 429} and 429 in codes or 413 in codes, codes

        def poison_client() -> None:
            headers = auth("poison", ["soak-2"], priorities=["normal"])
            with httpx.Client(base_url=base, timeout=120) as c:
                answers = [post_document(c, headers, "soak-2", "deep.html", DEEP_HTML).status_code,
                           post_document(c, headers, "soak-2", "report.pdf", PE).status_code,
                           post_document(c, headers, "soak-2", "notes.md", b"\x00\x01binary").status_code,
                           post_document(c, headers, "soak-0", "elsewhere.md", b"# x\n").status_code,
                           c.post("/api/v1/uploads", headers=headers, json={
                               "filename": "x.md", "size": 10, "collection": "soak-2", "priority": "critical"}
                                  ).status_code]
                assert answers == [201, 415, 415, 403, 403], answers
                for n in range(200):
                    c.request(f"X{n}", f"/probe/{n}")

        threads = [threading.Thread(target=good_user, args=(n,)) for n in range(7)]
        threads += [threading.Thread(target=f) for f in (slow_client, name_and_burst_client, poison_client)]
        for t in threads:
            t.start()
        for t in threads:  # the soak: 58 s here in all; the test's limit is 600 s (pyproject.toml)
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads) and not errors, errors[:5]
        assert len(good) == 7 * 3 + 7 * 25 + 4
        for job_id, (_, headers, _) in good.items():
            job = wait_job(client, job_id, headers, timeout=300)
            assert job["state"] == "completed", job
        elapsed = time.monotonic() - started
        for code, headers, collection in good.values():
            if code is None:
                continue
            hits = client.post("/api/v1/search", headers=headers, json={
                "collection": collection, "query": code, "mode": "bm25", "limit": 1}).json()["hits"]
            assert hits and code in hits[0]["text"], (code, hits)
        wait_idle(client, auth("warm"))  # the poison uploads' jobs too: every run has ended
        rss_end = rss_kib(proc.pid)
        metrics = client.get("/metrics", headers=auth("warm")).text
        series = [line for line in metrics.splitlines() if line.startswith("docingest_service_http_requests_total{")]
        print(f"soak: {len(good) - len(warmed)} good uploads ingested and found in {elapsed:.0f} s; service RSS "
              f"{rss_start // 1024} MiB after warm-up, {rss_end // 1024} MiB after the soak; {len(series)} request "
              "series")
        assert len(series) < 40
        assert rss_end <= 1.10 * rss_start, (rss_start, rss_end)
    finally:
        stop(proc)
    leftovers = [str(p) for p in uploads_root.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    private = list(Path(tempfile.gettempdir()).glob(f"docingest-serve-{proc.pid}-*"))  # forms, pymp-*, S3 checks
    assert not private, [str(p) for f in private for p in f.rglob("*")]
