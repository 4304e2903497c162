"""A home, store, cache or upload folder that cannot be written is one line naming the folder and the setting that
chose it, before any work: exit 2 from the CLI and the service, a failed flow run with that message. Real read-only
and full file systems (tmpfs mounts, so the tests need root, as CI and the developers' machines here have)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _mount(folder: Path, options: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only or full file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return folder


@pytest.fixture
def read_only(tmp_path):
    """A read-only file system (as a container's `/data` mounted `:ro`)."""
    folder = _mount(tmp_path / "ro", "ro,size=1m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    """A file system with no space left (a folder exists on it; no byte can be written)."""
    folder = _mount(tmp_path / "full", "size=256k")
    (folder / "store").mkdir()
    with open(folder / "filler", "wb") as fh, pytest.raises(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# Doors\n\nThe north door opens at seven.\n")
    return folder


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DOCINGEST_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), **settings)
    return env


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr  # no traceback
    return lines[0]


def test_cli_names_a_read_only_home_and_its_setting(tmp_path, read_only, docs):
    home = read_only / "docingest"
    done = subprocess.run([str(BIN / "docingest"), "ingest", str(docs), "-c", "handbook"], capture_output=True,
                          text=True, timeout=300, env=_env(tmp_path, DOCINGEST_HOME=str(home)))
    line = _one_error_line(done)
    assert str(home) in line and "DOCINGEST_HOME" in line and "Read-only file system" in line
    # The read commands say it the same way (the store lives under the home).
    done = subprocess.run([str(BIN / "docingest"), "search", "doors", "-c", "handbook"], capture_output=True,
                          text=True, timeout=300, env=_env(tmp_path, DOCINGEST_HOME=str(home)))
    line = _one_error_line(done)
    assert str(home / "qdrant") in line and "Read-only file system" in line


def test_cli_names_a_full_store_folder_and_its_setting(tmp_path, full_disk, docs):
    store = full_disk / "store"
    done = subprocess.run([str(BIN / "docingest"), "ingest", str(docs), "-c", "handbook"], capture_output=True,
                          text=True, timeout=300,
                          env=_env(tmp_path, DOCINGEST_HOME=str(tmp_path / "home"), DOCINGEST_QDRANT_PATH=str(store)))
    line = _one_error_line(done)
    assert str(store) in line and "DOCINGEST_QDRANT_PATH" in line and "No space left on device" in line
    assert list(store.iterdir()) == []  # nothing written


def test_cli_names_a_parse_cache_that_cannot_be_written(tmp_path, read_only, docs):
    cache = read_only / "results"
    done = subprocess.run([str(BIN / "docingest"), "ingest", str(docs), "-c", "handbook"], capture_output=True,
                          text=True, timeout=300,
                          env=_env(tmp_path, DOCINGEST_HOME=str(tmp_path / "home"),
                                   PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(cache)))
    line = _one_error_line(done)
    assert str(cache) in line and "PREFECT_RESULTS_LOCAL_STORAGE_PATH" in line


def test_service_names_a_read_only_upload_folder(tmp_path, read_only):
    uploads = read_only / "uploads"
    done = subprocess.run([str(BIN / "docingest"), "serve", "--port", "1"], capture_output=True, text=True,
                          timeout=300, env=_env(tmp_path, DOCINGEST_HOME=str(tmp_path / "home"),
                                                DOCINGEST_UPLOAD_DIR=str(uploads), DOCINGEST_JWT_SECRET="s" * 40))
    line = _one_error_line(done)
    assert str(uploads) in line and "DOCINGEST_UPLOAD_DIR" in line and "Read-only file system" in line


def test_a_flow_run_fails_with_the_one_line_before_any_work(prefect_server, tmp_path, read_only, docs, monkeypatch):
    from docingest.flows.ingest import ingest_documents
    from docingest.settings import get_settings

    monkeypatch.setenv("DOCINGEST_HOME", str(read_only / "docingest"))
    get_settings.cache_clear()
    try:
        state = ingest_documents(source=str(docs), collection="handbook", return_state=True)
    finally:
        get_settings.cache_clear()
    assert state.is_failed()
    assert state.message.count("\n") == 0 and "cannot write the docingest home folder" in state.message, state.message
    assert "DOCINGEST_HOME" in state.message
