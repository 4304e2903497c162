#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit and integration (real Prefect, Docling, model, Qdrant).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/system-deps.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# The whole suite (no arguments, as CI runs it) starts with the type checker: mypy, pinned, on src/docingest
# ([tool.mypy] in pyproject.toml), zero errors (~50 s the first time, seconds with its cache).
if [ "$#" = 0 ]; then
    .venv/bin/mypy
fi
# Two pytest workers (pytest-xdist) unless DOCINGEST_TEST_WORKERS says otherwise (0: all in this process): much of
# the suite waits on servers, subprocesses and containers. A module's tests stay on one worker (--dist loadfile), so
# module fixtures (an S3 server, the Docker engine) start once.
workers=${DOCINGEST_TEST_WORKERS:-2}
xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadfile)
exec .venv/bin/python -m pytest "${xdist[@]}" "$@"
