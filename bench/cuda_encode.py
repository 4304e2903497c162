"""Chunks/s on a CUDA device for the bench's corpora, and the embedding batch sizes that saturate it.

The device machine (the `device` tool: one GPU, 16 CPUs, PyTorch and sentence-transformers, no network, no Docling,
no Prefect) cannot parse the corpora, and the working tree it receives is limited to 64 MiB. So the work is split:

    python bench/cuda_encode.py prepare [--out .device-data] [--corpora small,gen,shared] [--corpus DIR ...]

here, with docingest installed: each corpus is generated (or copied) as bench/run.py lays it out, parsed and chunked
with the naive script's converter and chunker (the texts bench/raw_encode.py encodes), and written as gzipped JSON;
the bundled all-MiniLM-L6-v2 is copied with its weights stored as float16 (45 MB instead of 91 MB, to fit the limit;
`measure` casts them back, so fp32 runs the same arithmetic at the same speed, on weights rounded to fp16), and the
fp32 CPU vectors of a sample of each corpus are kept to check the device's vectors against. Then, on the device:

    python3 bench/cuda_encode.py measure [--data .device-data] [--out $OUT/cuda-encode.json]

(`run` with `carry: [".device-data"]`, `PYTHONPATH=src` so docingest's own encode call is measured too). For each
corpus and each of fp32 and fp16: the tokenizer alone on the device's CPUs, the raw encode (one call over every
chunk, as bench/raw_encode.py) at each batch size, docingest's embed stage (`core.embed.embed_texts` on pools of
1,024 chunks in corpus order, as the writer hands them over) at the default batch size and at the best, peak GPU
memory, and the smallest batch size within 5 % of the best chunks/s (the one that saturates the device). Every
encode is timed after a warm-up, with the device synchronized, as the median of ``--repeats`` runs. ``--device cpu``
runs the same measurement here (the smoke test does, on a tiny corpus).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_BATCH = 64  # EmbedOptions.batch_size
POOL = 1024  # EmbedOptions.pool_size: the most chunks the writer hands to one encode call
SAMPLE = 64  # texts per corpus whose CPU fp32 vectors are kept as the reference
DOCS = {"small": 1400, "gen": 1000}  # documents of the generated corpora, as in docs/performance.md's tables
SATURATED = 0.95  # a batch size saturates the device when it reaches this share of the best chunks/s


# --- prepare (here) ---------------------------------------------------------------------------------------------


def prepare(out: Path, corpora: list[str]) -> dict:
    import naive  # bench/, beside this file
    import numpy as np
    from run import prepare_corpus
    from sentence_transformers import SentenceTransformer

    from docingest.core.embed import resolve_model_location

    out.mkdir(parents=True, exist_ok=True)
    location, revision = resolve_model_location(MODEL)
    model = SentenceTransformer(location, device="cpu")
    converter, chunker = naive.converter_and_chunker(model.tokenizer)
    manifest = {"model": {"name": MODEL, "revision": revision, "weights": "float16 copy of the fp32 weights"},
                "corpora": {}, "prepared": time.strftime("%Y-%m-%d %H:%M"), "sample": SAMPLE}
    for spec in corpora:
        with tempfile.TemporaryDirectory(prefix="docingest-cuda-") as work:
            corpus = Path(work) / "corpus"
            label = prepare_corpus(*corpus_spec(spec), corpus)
            started = time.perf_counter()
            texts, failed = [], 0
            for path in naive.corpus_files(corpus):
                try:
                    texts += naive.chunk_texts(chunker, converter.convert(path).document)
                except Exception:  # noqa: BLE001 - like the naive script: what does not convert is skipped
                    failed += 1
            chunk_s = time.perf_counter() - started
        with gzip.open(out / f"texts-{label}.json.gz", "wt", encoding="utf-8") as fh:
            json.dump(texts, fh)
        sample = spread_sample(texts, SAMPLE)
        np.save(out / f"reference-{label}.npy",
                model.encode(sample, batch_size=DEFAULT_BATCH, normalize_embeddings=True).astype(np.float32))
        manifest["corpora"][label] = {"chunks": len(texts), "characters": sum(map(len, texts)), "failed": failed,
                                      "parse_and_chunk_s_here": round(chunk_s, 1)}
        print(f"{label}: {len(texts)} chunks ({failed} files failed), {chunk_s:.0f} s", file=sys.stderr)
    copy_model_fp16(Path(location), out / "model")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def spread_sample(texts: list[str], n: int) -> list[str]:
    """``n`` texts spread over the corpus: the ones whose CPU vectors ``prepare`` keeps and ``measure`` checks."""
    return texts[:: max(1, len(texts) // n)][:n]


def corpus_spec(spec: str) -> tuple[str, int]:
    """("gen", 1000) from "gen", ("gen", 10000) from "gen:10000"; "shared" or a folder as given."""
    kind, _, count = spec.partition(":")
    if kind in DOCS:
        return kind, int(count) if count else DOCS[kind]
    return spec, 0


def copy_model_fp16(source: Path, target: Path) -> None:
    """The model folder without its README, the safetensors weights stored as float16."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("README.md", ".gitattributes", "*.bin", "onnx",
                                                                  "openvino", "*.h5", "*.ot", "*.msgpack"))
    weights = target / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}, weights,
              metadata={"format": "pt"})


# --- measure (on the device) ------------------------------------------------------------------------------------


def measure(data: Path, device: str, dtypes: list[str], batch_sizes: list[int], repeats: int) -> dict:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on the device machine, or pass --device cpu")
    manifest = json.loads((data / "manifest.json").read_text())
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "hardware": hardware(device), "manifest": manifest,
              "batch_sizes": batch_sizes, "repeats": repeats, "corpora": {}}
    for dtype in dtypes:
        torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
        model = SentenceTransformer(str(data / "model"), device=device, model_kwargs={"dtype": torch_dtype})
        model.to(torch_dtype).eval()
        for label in manifest["corpora"]:
            with gzip.open(data / f"texts-{label}.json.gz", "rt", encoding="utf-8") as fh:
                texts = json.load(fh)
            row = report["corpora"].setdefault(label, {"chunks": len(texts)})
            row.setdefault("tokenize_s", tokenize_seconds(model, texts))
            reference = np.load(data / f"reference-{label}.npy")
            sample = spread_sample(texts, manifest["sample"])
            row[dtype] = measure_corpus(model, texts, device, batch_sizes, repeats)
            vectors = encode(model, sample, DEFAULT_BATCH, device)
            row[dtype]["min_cosine_to_cpu_fp32"] = round(float(np.min(np.sum(vectors * reference, axis=1))), 5)
            print(f"{label} {dtype}: best {row[dtype]['best']['chunks_per_s']:.0f} chunks/s at "
                  f"{row[dtype]['best']['batch_size']}, saturated from {row[dtype]['saturating_batch_size']}; "
                  f"tokenizer alone {row['tokenize_s']:.2f} s", file=sys.stderr)
        model.to("cpu")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return report


def measure_corpus(model, texts: list[str], device: str, batch_sizes: list[int], repeats: int) -> dict:
    """The raw encode at each batch size, the batch size that saturates, and docingest's pools at 64 and the best."""
    encode(model, texts[: 2 * max(batch_sizes)], max(batch_sizes), device)  # warm-up: kernels, the allocator
    raw = {}
    for bs in batch_sizes:
        wall, peak = timed(lambda bs=bs: encode(model, texts, bs, device), device, repeats)
        raw[str(bs)] = {"wall_s": round(wall, 4), "chunks_per_s": round(len(texts) / wall, 1), "peak_gpu_mib": peak}
    best_bs, best = max(((int(bs), r["chunks_per_s"]) for bs, r in raw.items()), key=lambda x: x[1])
    pools = {}
    for bs in sorted({DEFAULT_BATCH, best_bs}):
        wall, _ = timed(lambda bs=bs: docingest_pools(model, texts, bs), device, repeats)
        pools[str(bs)] = {"wall_s": round(wall, 4), "chunks_per_s": round(len(texts) / wall, 1),
                          "over_raw_best": round(len(texts) / wall / best, 3)}
    return {"raw_encode": raw, "best": {"batch_size": best_bs, "chunks_per_s": best},
            "saturating_batch_size": min(int(bs) for bs, r in raw.items() if r["chunks_per_s"] >= SATURATED * best),
            "docingest_pools": pools}


def encode(model, texts: list[str], batch_size: int, device: str):
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    synchronize(device)
    return vectors.astype("float32")


def docingest_pools(model, texts: list[str], batch_size: int) -> None:
    """docingest's embed stage as a run calls it: ``embed_texts`` on pools of up to POOL chunks, in order."""
    from docingest.core.embed import LoadedModel, ModelInfo, embed_texts

    loaded = LoadedModel(ModelInfo(name=MODEL, location="", revision="", dimension=384, max_seq_length=256),
                         model=model)
    for start in range(0, len(texts), POOL):
        embed_texts(loaded, texts[start : start + POOL], batch_size)


def timed(fn, device: str, repeats: int) -> tuple[float, float | None]:
    """Median wall seconds of ``repeats`` calls, and the peak GPU memory (MiB) they reached."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    walls = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        walls.append(time.perf_counter() - started)
    peak = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    return statistics.median(walls), peak


def tokenize_seconds(model, texts: list[str]) -> float:
    """The model's tokenizer alone (on the CPU), as an encode call runs it, in batches of 1,024."""
    started = time.perf_counter()
    for start in range(0, len(texts), 1024):
        model.tokenizer(texts[start : start + 1024], padding=True, truncation="longest_first",
                        max_length=model.max_seq_length, return_tensors="pt")
    return round(time.perf_counter() - started, 3)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def hardware(device: str) -> dict:
    import sentence_transformers
    import torch
    import transformers

    info = {"device": device, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda}
    return info


def print_table(report: dict) -> None:
    hw = report["hardware"]
    print(f"{hw.get('gpu', hw['device'])}, {hw['cpus']} CPUs, torch {hw['torch']}")
    sizes = [str(b) for b in report["batch_sizes"]]
    print(f"{'corpus':<22}{'dtype':<6}{'chunks':>7}  " + "".join(f"{s:>7}" for s in sizes) + "   sat  pools@64")
    for label, row in report["corpora"].items():
        for dtype in ("fp32", "fp16"):
            if dtype in row:
                r = row[dtype]
                rates = "".join(f"{r['raw_encode'][s]['chunks_per_s']:>7.0f}" for s in sizes)
                pools = r["docingest_pools"].get(str(DEFAULT_BATCH), {}).get("chunks_per_s", 0)
                print(f"{label:<22}{dtype:<6}{row['chunks']:>7}  {rates}{r['saturating_batch_size']:>6}{pools:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="here: corpora to chunk texts, the model as fp16, reference vectors")
    prep.add_argument("--out", type=Path, default=REPO / ".device-data")
    prep.add_argument("--corpora", default="small,gen,shared",
                      help="comma-separated: small (1,400 abstracts), gen (1,000 generated documents), shared "
                      "(docling-testdata), gen:N or small:N (N documents), or folders")
    meas = sub.add_parser("measure", help="on the device: chunks/s per corpus, dtype and batch size")
    meas.add_argument("--data", type=Path, default=REPO / ".device-data")
    meas.add_argument("--out", type=Path)
    meas.add_argument("--device", default="cuda")
    meas.add_argument("--dtypes", default="fp32,fp16")
    meas.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    meas.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.corpora.split(","))
        return
    report = measure(args.data, args.device, args.dtypes.split(","),
                     [int(b) for b in args.batch_sizes.split(",")], args.repeats)
    print_table(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
