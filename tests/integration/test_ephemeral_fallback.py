"""The CLI's fast path (a temporary Prefect server launched before Prefect is imported) when that server dies."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration]


def test_a_dead_early_server_falls_back_to_prefects_own_temporary_server(monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from docingest import ephemeral

    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])  # e.g. its port was taken meanwhile
    early = ephemeral.EarlyServer(ephemeral._free_port(), dead, by_environment=True)
    monkeypatch.setenv(ephemeral.TEMPORARY_API, early.api_url)
    with temporary_settings(updates={PREFECT_API_URL: early.api_url}):  # what the fast path set before the import
        assert ephemeral.temporary_api()
        assert ephemeral.adopt(early, timeout=30) is False
        with ephemeral.run_settings(early):
            url = PREFECT_API_URL.value()
            assert url != early.api_url and ephemeral.temporary_api()  # Prefect's own, also temporary
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
            with get_client(sync_client=True) as client:
                assert client.api_healthcheck() is None  # it answers


def test_a_configured_prefect_server_is_not_temporary(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from docingest import ephemeral

    monkeypatch.setenv(ephemeral.TEMPORARY_API, "http://127.0.0.1:1/api")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert not ephemeral.temporary_api()
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert ephemeral.temporary_api()
