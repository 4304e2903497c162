#!/usr/bin/env bash
# Create .venv in the repository root (if missing) and install docingest with pinned dependencies.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: docingest needs Python 3.11-3.13 (set PYTHON=/path/to/python)" >&2
  return 2
}

if [ ! -x .venv/bin/python ]; then
  py=$(pick_python)
  echo "creating .venv with $($py --version)" >&2
  "$py" -m venv .venv
fi
# torch first, from the pinned version (a CPU build where one is offered locally), so nothing pulls a CUDA build.
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet -c constraints.txt torch
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
echo "installed: $(.venv/bin/docingest --help >/dev/null && echo 'docingest console script in .venv/bin')" >&2
