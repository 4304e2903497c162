"""Fixtures of the integration tests that start servers on loopback."""

from __future__ import annotations

import pytest
from support import free_port


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the module's tests."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch, home):
    """The environment that points docingest at the loopback S3 server, and a minio client for it."""
    from minio import Minio

    from docingest.settings import get_settings

    monkeypatch.setenv("DOCINGEST_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    get_settings.cache_clear()
    return Minio(s3_endpoint.removeprefix("http://"), access_key="testing", secret_key="testing-secret", secure=False)
