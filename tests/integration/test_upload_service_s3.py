"""The upload service on an S3 store with identity-provider tokens, under load: `docingest serve` (uvicorn) with
DOCINGEST_UPLOAD_BUCKET on a moto S3 server and DOCINGEST_JWT_JWKS_URL on a loopback JWKS endpoint, all on 127.0.0.1.

moto runs in its own process with S3's minimum part size lowered to 1 KiB (real S3: 5 MiB), so a few KiB make a
multi-part upload; everything else is S3's multipart protocol as the service speaks it to AWS or MinIO.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import jwt
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PART = 1024
AUDIENCE = "docingest"
WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "juniper"]


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def hs256(claims: dict, key: bytes) -> str:
    """An HS256 token made by hand (PyJWT itself refuses a PEM key as an HMAC secret)."""
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'}).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing}.{b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())}"


class IdentityProvider:
    """An RSA key pair whose public half is served as a JWKS document on a loopback port."""

    def __init__(self, port: int) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()
        self.fetches = 0
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                provider.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, user: str, key=None, audience: str = AUDIENCE, collections=("*",)) -> str:
        return jwt.encode({"sub": user, "aud": audience, "exp": int(time.time()) + 3600,
                           "collections": list(collections), "priorities": ["critical", "normal"]}, key or self.key,
                          algorithm="RS256", headers={"kid": "k1"})

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}


@pytest.fixture
def s3(tmp_path, free_port, wait_http):
    from minio import Minio

    port = free_port()
    log = tmp_path / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=dict(os.environ, S3_UPLOAD_PART_MIN_SIZE=str(PART)), stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", proc, log)
        client = Minio(f"127.0.0.1:{port}", access_key="testing", secret_key="testing-secret", secure=False)
        client.make_bucket("uploads")
        yield f"http://127.0.0.1:{port}", client
    finally:
        proc.terminate()
        proc.wait(20)


def test_s3_store_jwks_tokens_and_fifty_concurrent_uploads(s3, tmp_path, free_port, start_service, written_store):
    endpoint, bucket = s3
    idp = IdentityProvider(free_port())
    proc, base, env, log = start_service(
        tmp_path, DOCINGEST_UPLOAD_BUCKET="s3://uploads/svc", DOCINGEST_S3_ENDPOINT=endpoint,
        DOCINGEST_S3_ACCESS_KEY="testing", DOCINGEST_S3_SECRET_KEY="testing-secret", DOCINGEST_JWT_JWKS_URL=idp.url,
        DOCINGEST_JWT_AUDIENCE=AUDIENCE, DOCINGEST_UPLOAD_PART_SIZE=str(PART), DOCINGEST_RATE_LIMIT_REQUESTS_PER_MIN="150")
    try:
        client = httpx.Client(base_url=base, timeout=60)
        assert client.get("/health").json() == {"ok": True}  # no token: up or down only
        outside = client.post("/api/v1/uploads", headers={"Authorization": "Bearer " + idp.token(
            "alice", collections=["team-*"])}, json={"filename": "a.md", "size": 3, "collection": "field"})
        assert outside.status_code == 403 and outside.json() == {"detail": "forbidden"}  # grants hold for JWKS too
        health = client.get("/health", headers=idp.auth("alice")).json()
        # Prefect's temporary API starts with the first job, never for a health probe.
        assert health["ok"] and health["storage_kind"] == "s3" and health["prefect"] is None and health["qdrant"], \
            health

        # Tokens: only the identity provider's key and our audience are accepted.
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = idp.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        forged = [
            idp.token("alice", key=other_key),  # signed by someone else's key under the provider's key id
            idp.token("alice", audience="another-service"),
            hs256({"sub": "alice", "aud": AUDIENCE}, public_pem),  # algorithm confusion: the public key as a secret
            "not-a-jwt",
        ]
        for bad in forged:
            assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {bad}"}).status_code == 401, bad
        assert client.get("/api/v1/jobs", headers=idp.auth("alice")).json() == {"jobs": []}

        # A 3-part upload into S3 with one corrupted part retried; the status comes from S3's own part list.
        data = ("# Glacier survey\n\n" + "\n\n".join(
            f"Section {i}: the survey team measured the moraine every spring with differential GPS and drones."
            for i in range(25))).encode()[: 3 * PART - 7]
        up = client.post("/api/v1/uploads", headers=idp.auth("alice"), json={
            "filename": "survey.md", "size": len(data), "collection": "field", "priority": "critical"}).json()
        uid = up["upload_id"]
        parts = [data[i:i + PART] for i in range(0, len(data), PART)]
        assert len(parts) == 3
        bad = client.put(f"/api/v1/uploads/{uid}/parts/2", content=b"x" + parts[1][1:],
                         headers={**idp.auth("alice"), "Content-MD5": md5(parts[1])})
        assert bad.status_code == 400
        for n in (1, 3):
            assert client.put(f"/api/v1/uploads/{uid}/parts/{n}", content=parts[n - 1],
                              headers={**idp.auth("alice"), "Content-MD5": md5(parts[n - 1])}).status_code == 200
        status = client.get(f"/api/v1/uploads/{uid}", headers=idp.auth("alice")).json()
        assert (status["received"], status["missing"]) == ([1, 3], [2])
        assert client.get(f"/api/v1/uploads/{uid}", headers=idp.auth("bob")).status_code == 404
        assert client.put(f"/api/v1/uploads/{uid}/parts/2", content=parts[1],
                          headers={**idp.auth("alice"), "Content-MD5": md5(parts[1])}).status_code == 200
        done = client.post(f"/api/v1/uploads/{uid}/complete", headers=idp.auth("alice"),
                           json={"sha256": hashlib.sha256(data).hexdigest()})
        assert done.status_code == 200, done.text
        stored = bucket.get_object("uploads", f"svc/sources/field/{uid}/survey.md").read()
        assert stored == data
        assert not list(bucket._list_multipart_uploads("uploads").uploads or [])  # no parts left behind

        # An executable named .pdf is refused after assembly and leaves nothing in the bucket's sources.
        exe = b"\x7fELF\x02\x01\x01" + b"\x00" * 1500
        evil = client.post("/api/v1/uploads", headers=idp.auth("alice"), json={
            "filename": "../report.pdf", "size": len(exe), "collection": "field"}).json()
        for n, chunk in enumerate((exe[:PART], exe[PART:]), start=1):
            client.put(f"/api/v1/uploads/{evil['upload_id']}/parts/{n}", content=chunk,
                       headers={**idp.auth("alice"), "Content-MD5": md5(chunk)})
        refused = client.post(f"/api/v1/uploads/{evil['upload_id']}/complete", headers=idp.auth("alice"), json={})
        assert refused.status_code == 415 and "executable" in refused.json()["detail"]
        assert not [o.object_name for o in bucket.list_objects("uploads", prefix="svc/sources/", recursive=True)
                    if evil["upload_id"] in o.object_name]

        # Load: 50 uploads at once by 5 users (2 parts each, parts sent concurrently too); every one is ingested
        # exactly once.
        def upload(i: int) -> tuple[str, str, str]:
            user = f"user{i % 5}"
            text = (f"# Station {i} log\n\nStation {i} records the {WORDS[i % 10]} sensor series {i * 7919}. "
                    + "The logger stores readings every ten minutes and uploads them at midnight. " * 20).encode()
            text = text[: PART + 200 + i]
            c = httpx.Client(base_url=base, timeout=120)
            made = c.post("/api/v1/uploads", headers=idp.auth(user), json={
                "filename": f"station-{i:02d}.md", "size": len(text), "collection": "load"})
            assert made.status_code == 201, made.text
            up_id = made.json()["upload_id"]
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                codes = list(pool.map(lambda n: c.put(
                    f"/api/v1/uploads/{up_id}/parts/{n}", content=text[(n - 1) * PART: n * PART],
                    headers={**idp.auth(user), "Content-MD5": md5(text[(n - 1) * PART: n * PART])}).status_code,
                    (1, 2)))
            assert codes == [200, 200]
            fin = c.post(f"/api/v1/uploads/{up_id}/complete", headers=idp.auth(user), json={})
            assert fin.status_code == 200, fin.text
            return user, fin.json()["job_id"], f"{up_id}/station-{i:02d}.md"

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            uploads = list(pool.map(upload, range(50)))
        assert len({job for _, job, _ in uploads}) == 50
        deadline = time.monotonic() + 400
        while True:
            jobs = {j["job_id"]: j for u in {u for u, _, _ in uploads}
                    for j in client.get("/api/v1/jobs", headers=idp.auth(u)).json()["jobs"]}
            if all(jobs[j]["state"] in ("completed", "failed") for _, j, _ in uploads):
                break
            assert time.monotonic() < deadline, [j["state"] for j in jobs.values()]
            time.sleep(1)
        finished = [jobs[j] for _, j, _ in uploads]
        assert [j["state"] for j in finished] == ["completed"] * 50, [j for j in finished if j["state"] != "completed"]
        assert all(j["counts"]["new"] == 1 and j["chunks"] >= 1 for j in finished)
        runs = {j["flow_run_id"] for j in finished}
        assert len(runs) < 50  # waiting jobs of one collection run together, not one flow run each

        # Per-user request limit: 150 a minute here, then 429 with Retry-After.
        codes = [client.get("/api/v1/jobs", headers=idp.auth("mallory")).status_code for _ in range(151)]
        assert codes[:150] == [200] * 150 and codes[150] == 429
        assert idp.fetches <= 3  # keys are cached, not fetched per request

        metrics = client.get("/metrics", headers=idp.auth("alice")).text
        assert 'docingest_jobs{state="completed"} 51.0' in metrics
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    # Nothing lost or duplicated: exactly the 50 documents, each chunk once, as many points as the jobs reported.
    store = written_store(tmp_path / "home" / "qdrant")  # the service's DOCINGEST_HOME (service_env)
    keys = [(p["payload"]["path"], p["payload"]["chunk_index"]) for p in store.points(store.resolve("load"))]
    assert len(keys) == len(set(keys)) == sum(j["chunks"] for j in finished)
    assert {path for path, _ in keys} == {doc for _, _, doc in uploads}
