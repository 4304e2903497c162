"""The raw embedding limit: the same chunk texts encoded in one call with the same model (torch fp32), after a warm-up.

    python bench/raw_encode.py TEXTS_JSON [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("texts", type=Path)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    from docingest.core.embed import embed_texts, load_model

    texts = json.loads(args.texts.read_text())
    model = load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    embed_texts(model, texts[:64], args.batch_size)  # warm-up
    started = time.perf_counter()
    model.model.encode(texts, batch_size=args.batch_size)
    wall = time.perf_counter() - started
    print(json.dumps({"chunks": len(texts), "wall_s": wall, "chunks_per_s": len(texts) / wall if wall else 0}))


if __name__ == "__main__":
    main()
