#!/usr/bin/env bash
# The run's Logs tab in the Prefect UI as a user sees it: a real `prefect server` on 127.0.0.1, `docingest ingest` of
# three notes and a password-protected PDF against it, then headless Chromium (`apt-get install chromium`) takes a
# screenshot of the run's page. Usage: bash bench/ui_logs_screenshot.sh [OUT_DIR] [PORT]   (default /tmp/docingest-ui 4300)
set -u
cd "$(dirname "$0")/.."
out=${1:-/tmp/docingest-ui} port=${2:-4300}
api=http://127.0.0.1:$port/api
export PREFECT_HOME=$out/prefect-home DOCINGEST_HOME=$out/home PREFECT_UI_API_URL=$api
export PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
rm -rf "$out" && mkdir -p "$out/docs"
.venv/bin/prefect server start --host 127.0.0.1 --port "$port" > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
until curl -sf "$api/health" > /dev/null; do sleep 0.5; done
for n in 1 2 3; do printf "# Note %s\n\nThe archive keeps note %s for seven years.\n" $n $n > "$out/docs/n$n.md"; done
.venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; from conftest import write_encrypted_pdf
write_encrypted_pdf(Path(sys.argv[1]), 'secret minutes')" "$out/docs/locked.pdf"
PREFECT_API_URL=$api .venv/bin/docingest ingest "$out/docs" -c uidemo --json > "$out/ingest.json" 2> "$out/ingest.err"
echo "docingest ingest exited $? (1: a document failed, the locked PDF)"
id=$(.venv/bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['flow_run_id'])" "$out/ingest.json")
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1800 --virtual-time-budget=20000 \
  --screenshot="$out/logs.png" "http://127.0.0.1:$port/runs/flow-run/$id?tab=Logs" > "$out/chromium.log" 2>&1
echo "screenshot of flow run $id: $out/logs.png"
