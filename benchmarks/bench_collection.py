"""Collections at scale (ours only: the original has no collections): 1,000,000 CLIP-like vectors.

    python -m benchmarks.bench_collection                    # 1M x 512 and a 10M-row item table
    python -m benchmarks.bench_collection --rows 200000 --metadata-rows 0     # a quicker look

Steps, each timed in a fresh process (peak RSS from getrusage, so faiss's own memory counts):

1. vectors: ``--rows`` x ``--dim`` float16 rows written as ten ``img_emb_N.npy`` files, as
   clip-retrieval writes them: clustered (``--clusters``) in a narrow cone around one axis, as
   CLIP image features are (tests/support/_fake_collections.py);
2. ``from_arrays`` over those files, memory-mapped: write time and peak RSS;
3. ``build_index(kind="auto")``: time, peak RSS, the kind and parameters it chose, the recall@10 it
   measured while tuning;
4. ``open`` time; text-like queries of the benchmark's own (another cone, shifted from the images'
   by a fixed gap, each aimed at a cluster; not those the tuning made up): recall@10 of the index
   against ``search(exact=True)``; one query at a time, the median time of each, and their ratio
   (the exact scan reads every float16 row of the memory-mapped shards);
5. an item table of ``--metadata-rows`` rows (a collection of 4-d rows), then ``open`` plus
   ``paths`` and ``captions`` of 10 random rows, in a fresh process.

Prints a markdown table and, with --json, the raw figures.
"""

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROWS = 1_000_000
DEFAULT_DIM = 512
DEFAULT_CLUSTERS = 2000
DEFAULT_METADATA_ROWS = 10_000_000
DEFAULT_QUERIES = 500
TIMED_QUERIES = 20  # one at a time, for the latency ratio
FILES = 10  # img_emb_N.npy files of the input
SEED = 0


def _fake() -> Any:
    path = REPO / "tests" / "support" / "_fake_collections.py"
    spec = importlib.util.spec_from_file_location("_clip_bench_fake_collections", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _step_vectors(args: argparse.Namespace) -> Dict[str, Any]:
    space = _fake().Space(args.dim, args.clusters, SEED)
    started = time.perf_counter()
    per_file = -(-args.rows // FILES)
    for number, start in enumerate(range(0, args.rows, per_file)):
        count = min(per_file, args.rows - start)
        rows = np.concatenate(
            [space.images(min(65536, count - s), start + s) for s in range(0, count, 65536)]
        ).astype(np.float16)
        np.save(Path(args.work) / f"img_emb_{number}.npy", rows)
    return {"seconds": time.perf_counter() - started}


def _inputs(work: Path) -> List[np.ndarray]:
    names = sorted(work.glob("img_emb_*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
    return [np.load(name, mmap_mode="r") for name in names]


def _step_write(args: argparse.Namespace) -> Dict[str, Any]:
    import clip.collection

    work = Path(args.work)
    parts = _inputs(work)
    total = sum(len(part) for part in parts)
    paths = [f"https://example.com/images/{row:08d}.jpg" for row in range(total)]
    started = time.perf_counter()
    clip.collection.from_arrays(work / "big.clip", parts, paths, progress=False)
    return {"seconds": time.perf_counter() - started, "peak_mib": _peak_mib()}


def _step_index(args: argparse.Namespace) -> Dict[str, Any]:
    import clip.collection

    before = _peak_mib()
    started = time.perf_counter()
    info = clip.collection.build_index(Path(args.work) / "big.clip", progress=False)
    return {
        "seconds": time.perf_counter() - started,
        "peak_mib": _peak_mib(),
        "peak_before_mib": before,
        "kind": info["kind"],
        "params": info["params"],
        "cells": info["cells"],
        "tuned_recall": info["recall_at_10"],
        "index_mib": info["bytes"] / 2**20,
    }


def _median_seconds(function: Any, queries: np.ndarray) -> float:
    times = []
    for query in queries:
        started = time.perf_counter()
        function(query[None])
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _step_search(args: argparse.Namespace) -> Dict[str, Any]:
    import clip.collection

    fake = _fake()
    space = fake.Space(args.dim, args.clusters, SEED)
    started = time.perf_counter()
    found = clip.collection.open(Path(args.work) / "big.clip")
    open_seconds = time.perf_counter() - started
    queries = space.texts(args.queries, seed=11)
    started = time.perf_counter()
    _, exact = found.search(queries, k=10, exact=True)
    exact_batch = time.perf_counter() - started
    found.search(queries[:1], k=10)  # reads the faiss file
    started = time.perf_counter()
    _, approximate = found.search(queries, k=10)
    index_batch = time.perf_counter() - started
    single = queries[: args.timed_queries]
    exact_one = _median_seconds(lambda q: found.search(q, k=10, exact=True), single)
    index_one = _median_seconds(lambda q: found.search(q, k=10), single)
    image_queries = found.features(
        np.arange(0, len(found), len(found) // args.timed_queries)[: args.timed_queries]
    )
    _, image_exact = found.search(image_queries, k=10, exact=True)
    _, image_index = found.search(image_queries, k=10)
    return {
        "open_seconds": open_seconds,
        "recall_text": fake.recall_at_k(approximate, exact),
        "recall_image": fake.recall_at_k(image_index, image_exact),
        "exact_batch_seconds": exact_batch,
        "index_batch_seconds": index_batch,
        "exact_one_seconds": exact_one,
        "index_one_seconds": index_one,
        "speedup": exact_one / index_one,
        "best_text_cosine": float(found.search(queries[:50], k=1, exact=True)[0].mean()),
    }


def _step_metadata_write(args: argparse.Namespace) -> Dict[str, Any]:
    import clip.collection

    rows = args.metadata_rows
    rng = np.random.default_rng(SEED)
    features = rng.standard_normal((rows, 4)).astype(np.float16)
    features[np.abs(features).sum(axis=1) == 0] = 1
    paths = [f"s3://bucket/laion/{row // 10000:05d}/{row:09d}.jpg" for row in range(rows)]
    captions = [f"a photo number {row} of something on a table" for row in range(rows)]
    started = time.perf_counter()
    clip.collection.from_arrays(
        Path(args.work) / "meta.clip",
        features,
        paths,
        captions=captions,
        shard_size=1_000_000,
        progress=False,
    )
    size = (Path(args.work) / "meta.clip" / "metadata.sqlite").stat().st_size
    return {"seconds": time.perf_counter() - started, "sqlite_mib": size / 2**20}


def _step_metadata_open(args: argparse.Namespace) -> Dict[str, Any]:
    import clip.collection

    rng = np.random.default_rng(1)
    started = time.perf_counter()
    found = clip.collection.open(Path(args.work) / "meta.clip")
    opened = time.perf_counter() - started
    rows = rng.integers(0, len(found), 10)
    started = time.perf_counter()
    paths = found.paths(rows)
    captions = found.captions(rows)
    looked_up = time.perf_counter() - started
    assert paths[0].endswith(f"{int(rows[0]):09d}.jpg") and str(int(rows[1])) in captions[1]
    return {"rows": len(found), "open_seconds": opened, "lookup_seconds": looked_up}


STEPS = {
    "vectors": _step_vectors,
    "write": _step_write,
    "index": _step_index,
    "search": _step_search,
    "metadata-write": _step_metadata_write,
    "metadata-open": _step_metadata_open,
}


def _run_step(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.bench_collection", "--step", name, "--work", args.work]
    for option in ("rows", "dim", "clusters", "metadata_rows", "queries", "timed_queries"):
        argv += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"step {name} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {name}: {result}", file=sys.stderr)
    return result


def _table(args: argparse.Namespace, figures: Dict[str, Dict[str, Any]]) -> str:
    w, i, s = figures["write"], figures["index"], figures["search"]
    params = ", ".join(f"{k}={v}" for k, v in i["params"].items()) or "exact"
    lines = [
        f"| {args.rows:,} x {args.dim} float16 rows, {args.clusters} clusters in a narrow cone | |",
        "|---|---|",
        f"| `from_arrays` (ten memory-mapped `img_emb_N.npy`) | {w['seconds']:.1f} s, "
        f"peak RSS {w['peak_mib']:.0f} MiB |",
        f'| `build_index(kind="auto")` | {i["seconds"]:.1f} s, peak RSS {i["peak_mib"]:.0f} MiB '
        f"(process before: {i['peak_before_mib']:.0f} MiB); {i['kind']}, {i['cells']} cells, {params}; "
        f"{i['index_mib']:.0f} MiB on disk |",
        f"| recall@10 measured while tuning (held-out rows) | text-like {i['tuned_recall']['text']:.3f}, "
        f"image {i['tuned_recall']['image']:.3f} |",
        f"| recall@10 vs `search(exact=True)`, {args.queries} text-like queries (shifted cone) | "
        f"{s['recall_text']:.3f} (their best cosine: {s['best_text_cosine']:.2f} on average) |",
        f"| recall@10 vs exact, {args.timed_queries} image queries (stored rows) | {s['recall_image']:.3f} |",
        f"| one query, index / exact scan (median of {args.timed_queries}) | "
        f"{s['index_one_seconds'] * 1000:.1f} ms / "
        f"{s['exact_one_seconds'] * 1000:.0f} ms: **{s['speedup']:.0f}x** |",
        f"| {args.queries} queries at once, index / exact | {s['index_batch_seconds']:.2f} s / "
        f"{s['exact_batch_seconds']:.2f} s |",
        f"| `open` | {s['open_seconds'] * 1000:.1f} ms |",
    ]
    if "metadata-open" in figures:
        m, mw = figures["metadata-open"], figures["metadata-write"]
        lines += [
            f"| item table of {m['rows']:,} rows: written (`from_arrays`, 4-d rows) | {mw['seconds']:.0f} s, "
            f"{mw['sqlite_mib']:.0f} MiB |",
            f"| ... `open` (fresh process) / `paths` + `captions` of 10 random rows | "
            f"{m['open_seconds'] * 1000:.1f} ms / "
            f"{m['lookup_seconds'] * 1000:.1f} ms |",
        ]
    return "\n".join(lines)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_collection", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--dim", type=int, default=DEFAULT_DIM)
    parser.add_argument("--clusters", type=int, default=DEFAULT_CLUSTERS)
    parser.add_argument("--metadata-rows", type=int, default=DEFAULT_METADATA_ROWS, help="0: skip")
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES)
    parser.add_argument("--timed-queries", type=int, default=TIMED_QUERIES)
    parser.add_argument("--work", default=None, help="folder for the files (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    parser.add_argument("--step", choices=sorted(STEPS), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step is not None:
        print(json.dumps(STEPS[args.step](args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="clip-bench-collection-", dir=args.work) as work:
        args.work = work
        figures = {}
        for name in ("vectors", "write", "index", "search"):
            figures[name] = _run_step(name, args)
        if args.metadata_rows:
            for name in ("metadata-write", "metadata-open"):
                figures[name] = _run_step(name, args)
    print(_table(args, figures))
    if args.json:
        print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
