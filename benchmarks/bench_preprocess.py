"""Benchmark: `clip.preprocess_batch` against the original's per-image `preprocess`, from image files.

Writes `count` (64) seeded, photo-like JPEG and PNG files of mixed sizes (300-1600 px a side) and
modes (RGB, RGBA, L) to a temporary folder, then measures images per second, decoding included:

- original: `torch.stack([preprocess(Image.open(path)) for path in paths])` with the original's
  `clip.clip._transform(n_px)`, in a separate process (both packages are named `clip`). It is
  timed with `torch.set_num_threads(threads)`, like ours, and with one torch thread, since its
  small per-image tensor ops can stall on intra-op threads when the CPUs are busy; the ratio is
  taken against the faster of the two.
- ours: `preprocess_batch(paths, n_px, num_workers=threads)` with `torch.set_num_threads(threads)`.

Each side runs once to warm up, then `repeats` timed passes, alternating between the sides so both
see the same machine load; the best pass counts. The outputs must be identical (`torch.equal`), or
the run fails.

The original is `clip-anytorch` (the release's code, lightly patched), installed in a folder of its
own so that it does not replace ours; its `pkg_resources` import needs setuptools < 81:

    pip install "setuptools<81"
    pip install --no-deps --target .oracle clip-anytorch

Run (from the repository root, with our package installed):

    python -m benchmarks.bench_preprocess [--oracle DIR] [--count 64] [--threads 2] [--repeats 3]

The oracle folder comes from `--oracle`, else the CLIP_ORACLE_PATH environment variable, else
.oracle in the repository. `run(...)` returns the figures as a dict, for a suite runner.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

try:
    from benchmarks import _common
except ImportError:  # run by path as a worker process: benchmarks/ itself is first on sys.path
    import _common  # type: ignore[no-redef]

DEFAULT_ORACLE = _common.DEFAULT_ORACLE
DEFAULT_COUNT = 64
DEFAULT_THREADS = 2
DEFAULT_REPEATS = 3
MIN_SIDE, MAX_SIDE = 300, 1600
MODES = ("RGB", "RGB", "RGBA", "L")  # cycled; RGBA files are PNG
JPEG_QUALITY = 90
BLOB_GRID = 24  # the random low-resolution image that is upscaled into a smooth "photo"
NOISE_STD = 3.0


def make_images(directory: Path, count: int = DEFAULT_COUNT, seed: int = 0) -> List[Path]:
    """Write `count` seeded photo-like images (JPEG and PNG, mixed sizes and modes) to `directory`."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = (int(side) for side in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
        mode = MODES[index % len(MODES)]
        fmt = "PNG" if mode == "RGBA" or index % 3 == 0 else "JPEG"
        grid = rng.integers(0, 256, size=(BLOB_GRID, BLOB_GRID, 4), dtype=np.uint8)
        small = Image.frombytes("RGBA", (BLOB_GRID, BLOB_GRID), grid.tobytes())
        smooth = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))
        noisy = smooth + rng.normal(0.0, NOISE_STD, size=smooth.shape)
        pixels = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        image = Image.frombytes("RGBA", (width, height), pixels.tobytes()).convert(mode)
        path = directory / f"image{index:03d}.{fmt.lower()}"
        if fmt == "JPEG":
            image.save(path, fmt, quality=JPEG_QUALITY)
        else:
            image.save(path, fmt)
        paths.append(path)
    return paths


def _original_worker(args: argparse.Namespace) -> None:
    """The subprocess, with the oracle first on sys.path: times passes of the original on request.

    Reads commands from stdin, one a line: "time <torch threads>" runs one pass and prints its wall
    and CPU seconds; "save <file>" saves the last pass's output with torch.save. Prints "ready" first.
    """
    import clip.clip as original

    oracle_dir = Path(args.oracle).resolve()
    if oracle_dir not in Path(original.__file__).resolve().parents:
        sys.exit(f"expected the original `clip` from {oracle_dir}, imported {original.__file__}")
    paths = json.loads(Path(args.paths_file).read_text(encoding="utf-8"))
    preprocess = original._transform(args.n_px)
    batch = None
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "time":
            torch.set_num_threads(int(argument))
            start, start_cpu = time.perf_counter(), time.process_time()
            batch = torch.stack([preprocess(Image.open(path)) for path in paths])
            print(time.perf_counter() - start, time.process_time() - start_cpu, flush=True)
        elif command == "save":
            torch.save(batch, argument)
            print("saved", flush=True)


class _Original:
    """The original's timing process (see `_original_worker`)."""

    def __init__(self, paths: Sequence[Path], n_px: int, oracle: str, workdir: Path) -> None:
        paths_file = workdir / "paths.json"
        paths_file.write_text(json.dumps([str(path) for path in paths]), encoding="utf-8")
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--original-worker",
            "--oracle",
            oracle,
            "--paths-file",
            str(paths_file),
            "--n-px",
            str(n_px),
        ]
        # cwd outside the repository and the oracle alone on PYTHONPATH: `clip` must be the original.
        env = _common.oracle_env(oracle)[0]
        self.process = subprocess.Popen(
            command, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._ask(None)  # wait for "ready"

    def _ask(self, command: Optional[str]) -> str:
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the original's benchmark process stopped (exit code {self.process.wait()})")
        return reply.strip()

    def time_pass(self, torch_threads: int) -> Tuple[float, float]:
        wall, cpu = self._ask(f"time {torch_threads}").split()
        return float(wall), float(cpu)

    def output(self, path: Path) -> torch.Tensor:
        self._ask(f"save {path}")
        return torch.load(path, weights_only=True)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def _time_ours(paths: Sequence[Path], n_px: int, threads: int) -> Tuple[Tuple[float, float], torch.Tensor]:
    from clip._preprocess import preprocess_batch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start, start_cpu = time.perf_counter(), time.process_time()
        batch = preprocess_batch(list(paths), n_px=n_px, num_workers=threads)
        return (time.perf_counter() - start, time.process_time() - start_cpu), batch
    finally:
        torch.set_num_threads(saved)


def run(
    count: int = DEFAULT_COUNT,
    n_px: int = 224,
    threads: int = DEFAULT_THREADS,
    repeats: int = DEFAULT_REPEATS,
    oracle: Optional[str] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Run the benchmark; returns images/s of both sides, the ratio and whether outputs are identical.

    Raises AssertionError if the two outputs are not identical.
    """
    oracle = _common.resolve_oracle(oracle)
    torch_threads = sorted({threads, 1}, reverse=True)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # (wall, CPU) seconds of each timed pass
    original_times: Dict[int, List[Tuple[float, float]]] = {n: [] for n in torch_threads}
    ours_times: List[Tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="clip-bench-preprocess-") as tmp:
        workdir = Path(tmp)
        image_dir = workdir / "images"
        image_dir.mkdir()
        paths = make_images(image_dir, count, seed)
        original = _Original(paths, n_px, oracle, workdir)
        try:
            # Passes alternate between the two sides, so that both see the same load; pass 0 warms up.
            for repeat in range(repeats + 1):
                for n in torch_threads:
                    seconds = original.time_pass(n)
                    if repeat:
                        original_times[n].append(seconds)
                seconds, ours = _time_ours(paths, n_px, threads)
                if repeat:
                    ours_times.append(seconds)
            reference = original.output(workdir / "original.pt")
        finally:
            original.close()
    identical = torch.equal(reference, ours)
    if not identical:
        raise AssertionError("preprocess_batch output differs from the original's")

    original_best = {n: min(times) for n, times in original_times.items()}  # the fastest pass, by wall time
    ours_best = min(ours_times)
    original_rates = {n: count / wall for n, (wall, _) in original_best.items()}
    ours_rate = count / ours_best[0]
    best_original = max(original_rates.values())
    return {
        "benchmark": "preprocess",
        "images": count,
        "n_px": n_px,
        "threads": threads,
        "repeats": repeats,
        "original_images_per_s": original_rates,  # by torch intra-op thread count
        "ours_images_per_s": ours_rate,
        "ratio": ours_rate / best_original,
        "ratio_same_torch_threads": ours_rate / original_rates[threads],
        # CPU seconds per image (all threads) in those passes: the work done, whatever the load.
        "original_cpu_ms_per_image": {n: 1000 * cpu / count for n, (_, cpu) in original_best.items()},
        "ours_cpu_ms_per_image": 1000 * ours_best[1] / count,
        "identical": identical,
        # Other processes on the machine compete for its cores; the speed-up from threads needs free ones.
        "cpus": os.cpu_count(),
        "load_average_1min": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "output_shape": list(ours.shape),
    }


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", default=None, help="folder holding the original `clip` package")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="number of images")
    parser.add_argument("--n-px", type=int, default=224, help="input resolution")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="worker and torch threads")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed passes per side")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    # Internal: the subprocess that times the original.
    parser.add_argument("--original-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    if args.original_worker:
        _original_worker(args)
        return
    result = run(args.count, args.n_px, args.threads, args.repeats, args.oracle, args.seed)
    for torch_threads, rate in result["original_images_per_s"].items():
        cpu = result["original_cpu_ms_per_image"][torch_threads]
        print(f"original, torch threads {torch_threads}: {rate:8.1f} images/s ({cpu:.1f} CPU ms/image)")
    print(
        f"preprocess_batch, {result['threads']} threads: {result['ours_images_per_s']:8.1f} images/s "
        f"({result['ours_cpu_ms_per_image']:.1f} CPU ms/image)"
    )
    print(
        f"ratio {result['ratio']:.2f}x vs the faster original "
        f"({result['ratio_same_torch_threads']:.2f}x at the same torch threads); "
        f"outputs identical: {result['identical']}"
    )
    print(f"machine: {result['cpus']} CPUs, 1-minute load average before/after {result['load_average_1min']}")


if __name__ == "__main__":
    main()
