#!/usr/bin/env bash
# Set everything up, then run the main job on embedded defaults: ingest a sample folder, then search it.
# Uses the shared Docling test corpus when it sits beside the repository, else the bundled examples/sample-docs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/system-deps.sh ocr   # Tesseract (OCR of images and scans) when root with apt; else says how
export HF_HUB_OFFLINE=1
sources=(examples/sample-docs)
[ -d ../shared/corpus/docling-testdata ] && sources+=(../shared/corpus/docling-testdata)
for docs in "${sources[@]}"; do   # two sources, one collection: each is its own scope
  echo "== docingest ingest $docs --collection demo" >&2
  set +e
  .venv/bin/docingest ingest "$docs" --collection demo
  code=$?
  set -e
  [ "$code" -le 1 ] || exit "$code"   # 1 = some documents failed (listed above); the run itself finished
done
echo "== docingest search 'how do I rotate the keys' --collection demo" >&2
.venv/bin/docingest search "how do I rotate the keys" --collection demo --limit 3
echo "== docingest search 'what do ducks eat' --collection demo" >&2
.venv/bin/docingest search "what do ducks eat" --collection demo --limit 3
