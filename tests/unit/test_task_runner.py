"""The flow's task runner is chosen when a run starts (flows/runners.py), not when the flow module is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from docingest.exceptions import ConfigurationError
from docingest.flows.runners import SettingsTaskRunner, make_task_runner

pytestmark = pytest.mark.unit


def test_importing_the_flow_with_dask_selected_and_prefect_dask_missing_does_not_raise():
    """prefect_dask made unimportable (None in sys.modules): the import succeeds; the run's start says what is
    missing, in one line."""
    script = ("import sys; sys.modules['prefect_dask'] = None\n"
              "from docingest.flows.ingest import ingest_documents\n"
              "from docingest.exceptions import ConfigurationError\n"
              "try:\n    ingest_documents.task_runner.duplicate()\n"
              "except ConfigurationError as exc:\n    print('refused:', exc)\n")
    env = {**os.environ, "DOCINGEST_TASK_RUNNER": "dask"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: the dask task runner needs prefect-dask" in done.stdout


def test_the_runner_follows_the_settings_at_each_run_start(monkeypatch):
    from docingest.settings import get_settings

    placeholder = SettingsTaskRunner()
    monkeypatch.setenv("DOCINGEST_TASK_RUNNER", "threads")
    get_settings.cache_clear()
    try:
        first = placeholder.duplicate()
        assert type(first) is ThreadPoolTaskRunner and first is not placeholder
        monkeypatch.setitem(sys.modules, "prefect_dask", None)
        monkeypatch.setenv("DOCINGEST_TASK_RUNNER", "dask")
        get_settings.cache_clear()
        with pytest.raises(ConfigurationError, match="needs prefect-dask"):
            placeholder.duplicate()
        with pytest.raises(ConfigurationError, match="unknown task runner 'ray'"):
            make_task_runner("ray")
    finally:
        get_settings.cache_clear()


def test_a_scheduler_address_that_does_not_answer_is_refused_quickly():
    """Nothing listening: at once; a listener that is not a Dask scheduler (it never answers): within the timeout;
    not an address at all: said so. Each names the address, in one line."""
    import socket
    import time

    from docingest.exceptions import ClusterUnreachable
    from docingest.flows.runners import ask_scheduler

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: refused
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable, match=rf"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}: "
                                                 "Connection refused"):
        ask_scheduler(f"tcp://127.0.0.1:{port}", timeout_s=30)
    assert time.monotonic() - started < 5

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ClusterUnreachable, match="no Dask scheduler answered in 0.5 s"):
            ask_scheduler(address, timeout_s=0.5)

    with pytest.raises(ClusterUnreachable, match="not a Dask scheduler address"):
        ask_scheduler("tcp://127.0.0.1", timeout_s=1)
