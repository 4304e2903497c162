"""The peers' virtual environment: created once outside the repository, then reused while its inputs are unchanged.

    python bench/peers/venv.py     # create it (or find it) and print its Python

It lives in ``~/.cache/docingest/bench/peers-<hash>`` (``$XDG_CACHE_HOME`` is honoured), the hash taken over
bench/pyproject.toml, constraints.txt and the Python version, so editing a pin makes a new one. It uses the Python that
runs the bench, installs torch first (the CPU build where one is offered locally, as scripts/install.sh does), then
``bench[peers]`` with docingest's constraints.txt, so every library the peers share with docingest is the same version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_PROJECT = REPO / "bench" / "pyproject.toml"
CONSTRAINTS = REPO / "constraints.txt"
READY = "docingest-bench-ready"  # written last: a folder without it is a creation that did not finish


def peer_venv_dir() -> Path:
    """Where the environment for the current pins and Python lives."""
    digest = hashlib.sha256()
    for source in (BENCH_PROJECT, CONSTRAINTS):
        digest.update(source.read_bytes())
    digest.update(sys.version.encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "docingest" / "bench" / f"peers-{digest.hexdigest()[:12]}"


def ensure_peer_python() -> Path:
    """The peers' Python, creating its environment first if it is missing or was left half made."""
    venv = peer_venv_dir()
    python = venv / "bin" / "python"
    if (venv / READY).exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    started = time.perf_counter()
    log(f"creating the peers' environment in {venv} (once; several minutes)")
    step([sys.executable, "-m", "venv", str(venv)])
    step([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip>=24"])
    step([str(python), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), "torch"])
    with tempfile.TemporaryDirectory() as project:  # a copy, so building it leaves no build/ or egg-info in bench/
        shutil.copy(BENCH_PROJECT, project)
        step([str(python), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), f"{project}[peers]"])
    step([str(python), "-m", "pip", "install", "--quiet", "--no-deps", *no_deps_pins()])
    step([str(python), "-c", "import llama_index.core, llama_index.readers.docling, llama_index.node_parser.docling, "
                             "llama_index.embeddings.huggingface, llama_index.vector_stores.qdrant"])
    (venv / READY).write_text(f"created in {time.perf_counter() - started:.0f} s\n")
    log(f"peers' environment ready after {time.perf_counter() - started:.0f} s")
    return python


def no_deps_pins() -> list[str]:
    """Packages installed without their dependencies (bench/pyproject.toml says why)."""
    config = tomllib.loads(BENCH_PROJECT.read_text())
    return config["tool"]["docingest-bench"]["peers-no-deps"]


def step(cmd: list[str]) -> None:
    """Run one creation step, its output on stderr (the bench's stdout stays for its results)."""
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def log(message: str) -> None:
    print(f"[peers venv] {message}", file=sys.stderr, flush=True)


def installed_versions(python: Path, packages: list[str]) -> dict[str, str]:
    """The versions of ``packages`` installed in the environment of ``python`` (for the report)."""
    code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    out = subprocess.run([str(python), "-c", code, *packages], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


if __name__ == "__main__":
    print(ensure_peer_python())
