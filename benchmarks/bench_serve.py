"""Benchmark: `clip serve` under 8 concurrent clients against one client at a time.

Starts the real server (``python -m clip serve`` in a subprocess, as a user would, on a free
loopback port) with a model of the released ViT-B/32's shapes and seeded random weights
(tests/support/_model_factory.py, saved as a state-dict checkpoint; fp32 on the CPU, as `clip.load`
gives) over a collection of `rows` random unit vectors (`clip.collection.from_arrays`). No real
weights are needed: speed depends on the shapes, not the values.

Two workloads, each request distinct (no cache helps):

- ``search``: ``GET /v1/search?q=...&k=10`` with a different sentence each time (the text tower,
  then an exact scan of the collection);
- ``embed image``: ``POST /v1/embed`` with one 640 x 480 JPEG (decoding, preprocessing, the image
  tower).

For each, `requests` requests are sent one at a time by one client, then by `clients` clients at
once (threads, one HTTP connection each); throughput is requests per second over the whole pass,
latency each request's round trip (p50, p95). The goal (issue 31): concurrent throughput >= 1.5x
one-at-a-time on 2 cores, which needs the server's batching (one forward pass for the requests that
arrive together). One warm-up pass first; then `repeats` alternating passes, the best of each kept.

    flock /tmp/bench.lock python -m benchmarks.bench_serve [--clients 8] [--requests 64] [--repeats 2]
"""

import argparse
import concurrent.futures
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

try:
    from benchmarks import _common
except ImportError:  # run by path: benchmarks/ itself is first on sys.path
    import _common  # type: ignore[no-redef]

DEFAULT_CLIENTS = 8
DEFAULT_REQUESTS = 64
DEFAULT_REPEATS = 2
DEFAULT_ROWS = 10_000
DEFAULT_CONFIG = "ViT-B/32"
SEED = 0
GOAL = 1.5
IMAGE_SIZE = (640, 480)
WORDS = (
    "dog cat beach mountain city street bicycle sunset forest river kitchen table guitar piano car "
    "train bridge snow desert flower garden child market boat window lamp book coffee rain bird"
).split()
TIMEOUT = 120.0
SETTLE = 1.5  # seconds between passes: more than the worker remembers concurrency (PEAK_MEMORY)


def _support() -> Any:
    """tests/support/_serve.py (the test suite's server runner), imported by path."""
    sys.path.insert(0, str(_common.REPO / "tests" / "support"))
    import _serve

    return _serve


def _sentence(index: int) -> str:
    rng = np.random.default_rng([SEED, index])
    words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=int(rng.integers(3, 9)))]
    return f"a photo of {' '.join(words)}, number {index}"


def _jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(SEED)
    pixels = rng.integers(0, 256, size=(IMAGE_SIZE[1] // 8, IMAGE_SIZE[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize(IMAGE_SIZE)  # smooth enough to compress like a photo
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _prepare(folder: Path, config: str, rows: int) -> Dict[str, Path]:
    import torch

    import clip.collection

    factory = _common.load_model_factory()
    checkpoint = folder / "model.pt"
    state = factory.make_state_dict(config, SEED)
    torch.save(state, checkpoint)
    dim = int(state["text_projection"].shape[1])
    rng = np.random.default_rng(SEED)
    features = rng.standard_normal((rows, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    paths = [f"/photos/{row:06d}.jpg" for row in range(rows)]
    clip.collection.from_arrays(folder / "coll", features, paths, progress=False).close()
    return {"checkpoint": checkpoint, "collection": folder / "coll"}


def _pass(
    send: Callable[[Any, int], None], start: int, requests: int, clients: int, url: str
) -> Dict[str, Any]:
    """`requests` requests numbered from `start`, by `clients` threads; wall time and latencies."""
    import httpx

    latencies: List[float] = []

    def client(numbers: Sequence[int]) -> List[float]:
        taken = []
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            for number in numbers:
                began = time.perf_counter()
                send(http, number)
                taken.append(time.perf_counter() - began)
        return taken

    shares = [list(range(start + c, start + requests, clients)) for c in range(clients)]
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for taken in pool.map(client, shares):
            latencies.extend(taken)
    wall = time.perf_counter() - began
    return {"wall": wall, "per_s": requests / wall, "latencies": latencies}


def _summary(best: Dict[str, Any]) -> Dict[str, float]:
    ordered = sorted(best["latencies"])
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {
        "per_s": best["per_s"],
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * p95,
    }


def _workloads(image: bytes) -> Dict[str, Callable[[Any, int], None]]:
    def search(http: Any, number: int) -> None:
        answer = http.get("/v1/search", params={"q": _sentence(number), "k": 10})
        answer.raise_for_status()

    def embed_image(http: Any, number: int) -> None:
        answer = http.post("/v1/embed", files={"images": (f"{number}.jpg", image, "image/jpeg")})
        answer.raise_for_status()

    return {"search": search, "embed image": embed_image}


def run(
    clients: int = DEFAULT_CLIENTS,
    requests: int = DEFAULT_REQUESTS,
    repeats: int = DEFAULT_REPEATS,
    rows: int = DEFAULT_ROWS,
    config: str = DEFAULT_CONFIG,
    server_args: Sequence[str] = (),
) -> Dict[str, Any]:
    """Run the benchmark; figures per workload for one client at a time and for `clients` at once."""
    import httpx

    support = _support()
    figures: Dict[str, Any] = {}
    load_before = _common.load_average()
    with tempfile.TemporaryDirectory(prefix="clip-bench-serve-") as tmp:
        prepared = _prepare(Path(tmp), config, rows)
        env = _common.steady_malloc(dict(os.environ))
        args = [str(prepared["collection"]), "--model", str(prepared["checkpoint"]), *server_args]
        with support.ServeProcess(args, env=env) as server:
            server.wait_ready()
            for name, send in _workloads(_jpeg()).items():
                passes: Dict[str, List[Dict[str, Any]]] = {"one at a time": [], f"{clients} at once": []}
                number = 0
                for repeat in range(repeats + 1):  # pass 0 warms up
                    for mode, width in (("one at a time", 1), (f"{clients} at once", clients)):
                        time.sleep(SETTLE)  # the server forgets the last pass's concurrency
                        before = httpx.get(server.url + "/healthz").json()["forward_passes"]
                        result = _pass(send, number, requests, width, server.url)
                        after = httpx.get(server.url + "/healthz").json()["forward_passes"]
                        result["forward_passes"] = after - before
                        number += requests
                        if repeat:
                            passes[mode].append(result)
                best = {mode: max(results, key=lambda r: r["per_s"]) for mode, results in passes.items()}
                summary = {mode: _summary(result) for mode, result in best.items()}
                for mode, result in best.items():
                    summary[mode]["mean_batch"] = requests / max(1, result["forward_passes"])
                one, many = summary["one at a time"]["per_s"], summary[f"{clients} at once"]["per_s"]
                figures[name] = {**summary, "ratio": many / one, "goal": GOAL}
    return {
        "config": config,
        "clients": clients,
        "requests": requests,
        "repeats": repeats,
        "collection_rows": rows,
        "server_args": list(server_args),
        "workloads": figures,
        "machine": _common.machine_info(),
        "load_average_before": load_before,
        "load_average_after": _common.load_average(),
    }


def markdown(figures: Dict[str, Any]) -> str:
    """The figures as a markdown table."""
    clients = figures["clients"]
    lines = [
        f"| workload | one at a time: req/s, p50, p95 | {clients} at once: req/s, p50, p95 "
        "| mean batch | ratio (goal >= 1.5x) |",
        "|---|---|---|---|---|",
    ]
    for name, row in figures["workloads"].items():
        one, many = row["one at a time"], row[f"{clients} at once"]
        lines.append(
            f"| {name} | {one['per_s']:.1f}, {one['p50_ms']:.0f} ms, {one['p95_ms']:.0f} ms "
            f"| {many['per_s']:.1f}, {many['p50_ms']:.0f} ms, {many['p95_ms']:.0f} ms "
            f"| {many['mean_batch']:.1f} | {row['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests per pass")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of the searched collection")
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="model shapes (tests/support/_model_factory.py)"
    )
    parser.add_argument(
        "--server-args", default="", help='more clip serve options, e.g. "--max-batch 1" (batching off)'
    )
    args = parser.parse_args(argv)
    figures = run(args.clients, args.requests, args.repeats, args.rows, args.config, args.server_args.split())
    print(json.dumps(figures, indent=1))
    print(markdown(figures))


if __name__ == "__main__":
    main()
