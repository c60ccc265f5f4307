"""Benchmark: bf16 and int8 on the CPU against our fp32, and bf16 against its kernels' potential.

One process, ours only (the original cannot run bf16 weights and has no int8). Models: ViT-B/32 and
RN50 shapes with seeded random weights in the release's layout (tests/support/_model_factory.py),
the inputs of bench_encode (seeded images; token ids with end-of-text at varied positions).

For each model, tower and batch:

- Potential: the bf16 model's matrix products (linear layers, convolutions, attention, `@`), recorded
  with their shapes in one forward pass, each replayed alone in fp32 and in bf16 on torch's own
  kernels (best of `passes`, the two alternating); the potential is the sum of the fp32 times over
  the sum of the bf16 times: what torch's bf16 kernels give over fp32 on exactly this model's
  products. Also the square matmul (`nt@2048`, `F.linear`'s layout) for reference.
- Modes, timed in alternating passes (best of `passes`): fp32 (the fp32 model), bf16 (the model cast
  to bf16; clip/_bf16.py measures each product's way), bf16-torch (the same with
  `CLIP_CPU_BF16_KERNELS=torch`: torch's kernels with no dispatch of ours) and int8 (`clip.quantize`,
  the engine it measured; `int8-ENGINE` forces one with `CLIP_INT8_ENGINE`). Each mode runs twice
  untimed first (the bf16 measurement and oneDNN's kernel building happen there).
  The model's potential (Amdahl) is the fp32 model's time over that time with the products' fp32
  time replaced by their bf16 time: the speed-up if bf16 changed nothing but the products' kernels.
- Figures: each mode's speed-up over fp32; bf16's as a share of both potentials (issue 27's goal:
  at least 95%); the minimum cosine of every item's features to fp32 (bf16 >= 0.999, int8 >= 0.995).

Run (from the repository root): python -m benchmarks.bench_lowp [--models ViT-B/32 RN50]
[--towers image text] [--batches 1 32] [--modes fp32 bf16 bf16-torch int8 int8-onednn ...]
[--passes 5] [--threads N] [--json FILE]
"""

import argparse
import collections
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

try:
    from benchmarks import _common, bench_encode
except ImportError:  # run by path: benchmarks/ itself is first on sys.path
    import _common  # type: ignore[no-redef]
    import bench_encode  # type: ignore[no-redef]

MODELS = ("ViT-B/32", "RN50")
TOWERS = ("image", "text")
BASE_MODES = ("fp32", "bf16", "bf16-torch", "int8")
INT8_ENGINES = ("x86", "fbgemm", "onednn")
MODES = BASE_MODES + tuple(f"int8-{engine}" for engine in INT8_ENGINES)
DEFAULT_MODES = BASE_MODES
DEFAULT_BATCHES = (1, 32)
DEFAULT_PASSES = 5
ROOFLINE_SIZE = 2048
GOAL_POTENTIAL_SHARE = 0.95  # bf16 over fp32 >= 95% of the kernels' speed-up (issue 27)
GOAL_INT8_SPEEDUP = 2.5  # int8 over fp32 at batch 32 (issue 27)
GOAL_INT8_BATCH = 32
GOAL_BF16_COSINE = 0.999
GOAL_INT8_COSINE = 0.995
SEED = 0


def _products_mode() -> Any:
    """A function mode that records every matrix product (function, argument shapes and options)."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    from clip import _bf16

    class Recorder(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: collections.Counter = collections.Counter()
            self.examples: Dict[Tuple[Any, ...], Tuple[Callable[..., Any], list, dict]] = {}

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            if func in _bf16._PRODUCTS or func is F.conv2d:
                key = (
                    func,
                    *[_describe(a) for a in args],
                    *sorted((k, _describe(v)) for k, v in kwargs.items()),
                )
                self.calls[key] += 1
                self.examples.setdefault(key, (func, list(args), dict(kwargs)))
            return func(*args, **kwargs)

    def _describe(value: Any) -> Any:
        return ("tensor", tuple(value.shape)) if isinstance(value, torch.Tensor) else repr(value)

    return Recorder()


def _best(runs: Dict[str, Callable[[], Any]], passes: int) -> Dict[str, float]:
    """Best time of each run over `passes` passes, the order alternating from pass to pass."""
    best = {name: float("inf") for name in runs}
    order = list(runs)
    for _ in range(passes):
        for name in order:
            start = time.perf_counter()
            runs[name]()
            best[name] = min(best[name], time.perf_counter() - start)
        order.reverse()
    return best


def _replay(example: Tuple[Callable[..., Any], list, dict], dtype: Any) -> Callable[[], Any]:
    """A call of a recorded product with fresh operands of its shapes in `dtype` (kernels only)."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    func, args, kwargs = example

    def fresh(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return (torch.rand(value.shape, generator=generator) - 0.5).to(dtype)
        if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
            return value.clone()
        return value

    new_args = [fresh(a) for a in args]
    new_kwargs = {k: fresh(v) for k, v in kwargs.items()}
    return lambda: func(*new_args, **new_kwargs)


def measure_potential(model_bf16: Any, encode: str, inputs: Any, passes: int) -> Dict[str, Any]:
    """The bf16 kernels' speed-up over fp32 on this model's own products (see the module docstring)."""
    import torch

    recorder = _products_mode()
    os.environ["CLIP_CPU_BF16_KERNELS"] = "torch"  # the products as torch's kernels see them
    try:
        with torch.no_grad(), recorder:
            getattr(model_bf16, encode)(inputs)
    finally:
        os.environ.pop("CLIP_CPU_BF16_KERNELS", None)
    totals = {"fp32": 0.0, "bf16": 0.0}
    kinds: Dict[str, Dict[str, float]] = {}
    with torch.no_grad():
        for key, count in recorder.calls.items():
            example = recorder.examples[key]
            runs = {"fp32": _replay(example, torch.float32), "bf16": _replay(example, torch.bfloat16)}
            for run in runs.values():  # oneDNN builds its kernels on first use
                run()
            best = _best(runs, passes)
            kind = kinds.setdefault(example[0].__name__, {"fp32": 0.0, "bf16": 0.0, "calls": 0})
            kind["calls"] += count
            for name, seconds in best.items():
                totals[name] += count * seconds
                kind[name] += count * seconds
    return {
        "fp32_s": totals["fp32"],
        "bf16_s": totals["bf16"],
        "speedup": totals["fp32"] / totals["bf16"],
        "by_kind": kinds,
        "products": sum(recorder.calls.values()),
    }


def measure_square(passes: int, size: int = ROOFLINE_SIZE) -> Dict[str, float]:
    """GFLOP/s of a @ b.T (F.linear's layout) at `size`, fp32 and bf16 on torch's kernels."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    a, b = torch.rand(size, size, generator=generator), torch.rand(size, size, generator=generator)
    a16, b16 = a.bfloat16(), b.bfloat16()
    runs = {"fp32": lambda: a @ b.T, "bf16": lambda: a16 @ b16.T}
    for run in runs.values():
        run()
    best = _best(runs, passes)
    flop = 2 * size**3
    return {"fp32_gflops": flop / best["fp32"] / 1e9, "bf16_gflops": flop / best["bf16"] / 1e9}


class _Modes:
    """The models of every mode for one architecture, and a call of each."""

    def __init__(self, config: str, modes: Sequence[str]) -> None:
        import torch

        import clip
        from clip.model import build_model

        factory = _common.load_model_factory()
        self.models: Dict[str, Any] = {}
        self.fp32 = build_model(factory.make_state_dict(config, SEED)).float().eval()
        self.engines: Dict[str, str] = {}
        for mode in modes:
            if mode == "fp32":
                self.models[mode] = self.fp32
            elif mode in ("bf16", "bf16-torch"):
                if "bf16" not in self.models:
                    self.models["bf16"] = copy.deepcopy(self.fp32).to(torch.bfloat16)
                self.models[mode] = self.models["bf16"]
            else:
                engine = mode.partition("-")[2]
                from clip import _quantize

                if engine:
                    os.environ[_quantize.ENGINE_ENV_VAR] = engine
                try:
                    self.models[mode] = clip.quantize(self.fp32)
                    self.engines[mode] = engine or _quantize._fastest_engine()
                finally:
                    os.environ.pop(_quantize.ENGINE_ENV_VAR, None)

    def call(self, mode: str, encode: str, inputs: Any) -> Callable[[], Any]:
        import torch

        model = self.models[mode]
        x = inputs.to(torch.bfloat16) if mode.startswith("bf16") and inputs.is_floating_point() else inputs

        def run() -> Any:
            if mode == "bf16-torch":
                os.environ["CLIP_CPU_BF16_KERNELS"] = "torch"
            try:
                with torch.no_grad():
                    return getattr(model, encode)(x)
            finally:
                if mode == "bf16-torch":
                    os.environ.pop("CLIP_CPU_BF16_KERNELS", None)

        return run


def run(
    models: Sequence[str] = MODELS,
    towers: Sequence[str] = TOWERS,
    batches: Sequence[int] = DEFAULT_BATCHES,
    modes: Sequence[str] = DEFAULT_MODES,
    passes: int = DEFAULT_PASSES,
    threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Every (model, tower, batch) row: mode timings, speed-ups, the bf16 potential, cosines."""
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    if "fp32" not in modes:
        modes = ["fp32", *modes]
    load_before = _common.load_average()
    with tempfile.TemporaryDirectory(prefix="clip-bench-lowp-") as tmp:
        path = Path(tmp) / "inputs.pt"
        bench_encode.make_inputs(path, max(batches))
        inputs = torch.load(path, weights_only=True)
    square = measure_square(passes)
    rows: List[Dict[str, Any]] = []
    for config in models:
        built = _Modes(config, modes)
        resolution = built.fp32.visual.input_resolution  # bench_encode's images, at this model's size
        images = _common.load_model_factory().make_images(resolution, bench_encode.IMAGE_SEED, max(batches))
        for tower in towers:
            encode = "encode_image" if tower == "image" else "encode_text"
            for batch in batches:
                x = (images if tower == "image" else inputs["tokens"])[:batch]
                calls = {mode: built.call(mode, encode, x) for mode in modes}
                features = {}
                for mode, call in calls.items():
                    call()  # the bf16 measurement, kept copies, oneDNN's kernels: before the timing
                    features[mode] = call().float()
                best = _best(calls, passes)
                row: Dict[str, Any] = {
                    "model": config,
                    "tower": tower,
                    "batch": batch,
                    "seconds": best,
                    "speedup": {mode: best["fp32"] / seconds for mode, seconds in best.items()},
                    "min_cosine": {
                        mode: F.cosine_similarity(f, features["fp32"], dim=-1).min().item()
                        for mode, f in features.items()
                        if mode != "fp32"
                    },
                    "int8_engines": built.engines,
                }
                if "bf16" in built.models:
                    x16 = x.to(torch.bfloat16) if x.is_floating_point() else x
                    potential = measure_potential(built.models["bf16"], encode, x16, passes)
                    # Amdahl: the fp32 model with only its products made as fast as the bf16 kernels
                    rest = max(best["fp32"] - potential["fp32_s"], 0.0)
                    potential["model_speedup"] = best["fp32"] / (rest + potential["bf16_s"])
                    potential["products_share_of_fp32"] = potential["fp32_s"] / best["fp32"]
                    row["potential"] = potential
                    row["potential_share"] = row["speedup"]["bf16"] / potential["speedup"]
                    row["model_potential_share"] = row["speedup"]["bf16"] / potential["model_speedup"]
                rows.append(row)
                print(format_row(row), flush=True)
    return {
        "benchmark": "lowp",
        "machine": _common.machine_info(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "passes": passes,
        "square": square,
        "rows": rows,
        "load_average_1min": [load_before, _common.load_average()],
    }


def cpu_flags() -> Dict[str, bool]:
    """The CPU flags that decide bf16 and int8 speed (Linux: /proc/cpuinfo)."""
    wanted = ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {flag: flag in flags for flag in wanted}


def format_row(row: Dict[str, Any]) -> str:
    """One line: times, speed-ups over fp32, bf16's share of its potential, cosines."""
    parts = [f"{row['model']} {row['tower']} b{row['batch']}:"]
    for mode, seconds in row["seconds"].items():
        cosine = row["min_cosine"].get(mode)
        extra = f", cos {cosine:.5f}" if cosine is not None else ""
        parts.append(f"{mode} {seconds * 1e3:.1f} ms ({row['speedup'][mode]:.2f}x{extra})")
    if "potential" in row:
        potential = row["potential"]
        parts.append(
            f"| potential: products {potential['speedup']:.2f}x "
            f"(bf16 at {100 * row['potential_share']:.0f}%), "
            f"model {potential['model_speedup']:.2f}x (bf16 at {100 * row['model_potential_share']:.0f}%)"
        )
    if row["int8_engines"]:
        parts.append(f"| int8 engines {row['int8_engines']}")
    return " ".join(parts)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--towers", nargs="+", default=list(TOWERS), choices=TOWERS)
    parser.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES))
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    parser.add_argument("--passes", type=int, default=DEFAULT_PASSES, help="timed passes per mode (best)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    env = _common.steady_malloc(dict(os.environ))
    if any(os.environ.get(name) != env.get(name) for name in _common.STEADY_MALLOC):
        # glibc reads its tuning at start-up: the same steady allocator as the other compute benchmarks
        command = [sys.executable, "-m", "benchmarks.bench_lowp", *(sys.argv[1:] if argv is None else argv)]
        os.execve(sys.executable, command, env)
    start = time.perf_counter()
    result = run(args.models, args.towers, args.batches, args.modes, args.passes, args.threads)
    square = result["square"]
    print(
        f"square nt@{ROOFLINE_SIZE}: fp32 {square['fp32_gflops']:.0f} GFLOP/s, "
        f"bf16 {square['bf16_gflops']:.0f} GFLOP/s ({square['bf16_gflops'] / square['fp32_gflops']:.2f}x)"
    )
    print(
        f"flags {result['cpu_flags']}; torch {result['machine']['torch']}, {result['torch_threads']} threads"
    )
    print(f"wall time {time.perf_counter() - start:.0f} s; load average {result['load_average_1min']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
