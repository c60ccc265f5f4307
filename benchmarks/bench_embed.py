"""Benchmark: `clip embed` over a folder against the README's per-image loop and `encode_image` alone.

Writes `count` (256) seeded, photo-like JPEG and PNG files of mixed sizes and modes (the images of
benchmarks/bench_preprocess.py) and builds a model of the released ViT-B/32's shapes with seeded
weights (tests/support/_model_factory.py; fp32, as `clip.load` gives on a CPU). Then, with the same torch
thread count and batch size, it measures images per second of

- the README's loop: ``model.encode_image(preprocess(Image.open(path)).unsqueeze(0))`` per image;
- `encode_image` alone: the already preprocessed images, in batches of `batch_size` (the ceiling:
  no decoding at all);
- `clip embed`'s pipeline (clip/_cli_embed.py: a DataLoader whose `workers` processes decode and
  preprocess while the model encodes, then normalisation and the .npy shards written to a temporary
  OUT), timed from the first image to the last shard on disk; loading the model is not counted.

Goals (issue 14): embed >= 1.5x the per-image loop, and >= 85% of `encode_image` alone (decoding
hidden behind compute, which needs CPU cores to spare for the decoding workers). Each measurement
runs once to warm up, then `repeats` timed passes, alternating; the best pass counts. All in this
process (only our package is involved).

    python -m benchmarks.bench_embed [--count 256] [--batch-size 32] [--threads 2] [--workers 2]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from PIL import Image

try:
    from benchmarks import _common, bench_preprocess
except ImportError:  # run by path: benchmarks/ itself is first on sys.path
    import _common  # type: ignore[no-redef]
    import bench_preprocess  # type: ignore[no-redef]

DEFAULT_COUNT = 256
DEFAULT_BATCH_SIZE = 32
DEFAULT_THREADS = 2
DEFAULT_REPEATS = 1
DEFAULT_CONFIG = "ViT-B/32"
SEED = 0
GOAL_VS_LOOP = 1.5
GOAL_VS_ENCODE = 0.85


def _build(config: str) -> Any:
    from clip.model import build_model

    factory = _common.load_model_factory()
    return build_model(factory.make_state_dict(config, SEED)).float().eval()


def _best_rate(count: int, passes: List[float]) -> float:
    return count / min(passes)


def run(
    count: int = DEFAULT_COUNT,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = DEFAULT_THREADS,
    workers: Optional[int] = None,
    repeats: int = DEFAULT_REPEATS,
    config: str = DEFAULT_CONFIG,
) -> Dict[str, Any]:
    """Run the benchmark; returns images/s of the three ways and the two ratios."""
    from clip._cli import embed as _cli_embed
    from clip._cli.collection import Item
    from clip._preprocess import _transform

    workers = threads if workers is None else workers
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = _build(config)
    preprocess = _transform(model.visual.input_resolution)
    seconds: Dict[str, List[float]] = {"loop": [], "encode": [], "embed": []}
    load_before = _common.load_average()
    try:
        with tempfile.TemporaryDirectory(prefix="clip-bench-embed-") as tmp:
            workdir = Path(tmp)
            (workdir / "images").mkdir()
            paths = [str(p) for p in bench_preprocess.make_images(workdir / "images", count, SEED)]
            pixels = torch.stack([preprocess(Image.open(path)) for path in paths])
            items = [Item(path) for path in paths]
            runs = {"n": 0}

            def loop() -> None:
                with torch.no_grad():
                    for path in paths:
                        model.encode_image(preprocess(Image.open(path)).unsqueeze(0))

            def encode() -> None:
                with torch.no_grad():
                    for start in range(0, count, batch_size):
                        model.encode_image(pixels[start : start + batch_size])

            def embed() -> None:
                runs["n"] += 1
                out = workdir / f"out{runs['n']}"
                out.mkdir()
                args = argparse.Namespace(
                    shard_size=count,
                    batch_size=batch_size,
                    workers=workers,
                    dtype="float16",
                    no_progress=True,
                )
                group = _cli_embed._Group(0, 1, 0)
                _cli_embed._embed(args, model, preprocess, items, False, out, [(0, count)], group)

            ways: Dict[str, Callable[[], None]] = {"loop": loop, "encode": encode, "embed": embed}
            for repeat in range(repeats + 1):  # pass 0 warms up
                for name, way in ways.items():
                    start = time.perf_counter()
                    way()
                    if repeat:
                        seconds[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved_threads)
    rates = {name: _best_rate(count, passes) for name, passes in seconds.items()}
    return {
        "config": config,
        "images": count,
        "batch_size": batch_size,
        "threads": threads,
        "workers": workers,
        "repeats": repeats,
        "images_per_s": rates,
        "embed_vs_loop": rates["embed"] / rates["loop"],
        "embed_vs_encode": rates["embed"] / rates["encode"],
        "seconds": seconds,
        "load_average_before": load_before,
        "load_average_after": _common.load_average(),
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: --threads)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="model shapes (tests/support/_model_factory.py)"
    )
    args = parser.parse_args(argv)
    figures = run(args.count, args.batch_size, args.threads, args.workers, args.repeats, args.config)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
