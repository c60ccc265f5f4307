"""Benchmark: `encode_image` / `encode_text` of ours against the original's, and the matmul roofline.

Models: ViT-B/32 and RN50 shapes with seeded random weights in the release's layout
(tests/support/_model_factory.py; both sides build the same weights), in fp32 (`build_model(...).float()`,
what `clip.load(..., device="cpu")` returns). Inputs: seeded images (N, 3, 224, 224) and token ids
(N, 77) with end-of-text tokens at varied positions, the same for both sides. Modes:

- fp32: ours and the original, at every batch size (default 1 and 32). Both outputs are compared
  (max abs diff), and the ratio ours/original of throughput is the figure (goal: >= 0.95).
- bf16: the model cast with `model.to(torch.bfloat16)` (what `clip.load(..., dtype=torch.bfloat16)`
  gives). The original cannot run it (its LayerNorm feeds fp32 to bf16 weights: "mixed dtype"); its
  error is reported. Features are compared with our fp32 ones (cosine; goal >= 0.999).
- autocast: the fp32 model under `torch.autocast("cpu", dtype=torch.bfloat16)`, ours and the original.
- bf16-torch: as bf16, with `CLIP_CPU_BF16_KERNELS=torch`: torch's own bf16 kernels for every
  product, where bf16 lets clip time them against fp32 products (torch's fp32 kernels, oneDNN with
  packed weights for linear layers and convolutions, 1x1 convolutions as matrix products) once per
  shape class and take the fastest
  (clip/_bf16.py). Differs from bf16 where torch's kernels lose.

On CPUs without native bf16 arithmetic (no AVX512-BF16 / AMX: `mkldnn bf16 supported: False` in
the results), torch's bf16 matrix products run on generic kernels several times slower than fp32.
Ours avoids them (bf16 and autocast rows run at every batch size); the rows that use them (the
original under autocast, and bf16-torch) are timed at batch 1 and, for ViT-B/32 only, at one
reduced batch (`--low-precision-batch`, default 8), with one pass (two at batch 1).

Timing: each side lives in one worker process of its own (both packages are named `clip`). Passes
alternate between the sides, so both see the same machine load, and the fastest pass counts (fp32:
`repeats` passes each, after one warm-up pass at batch 1). Throughput is items per second;
GFLOP/s uses the FLOPs per item measured with `torch.utils.flop_counter.FlopCounterMode` (ViT-B/32:
8.73 GFLOP per image, 5.81 GFLOP per 77-token text; RN50: 11.59 GFLOP per image).

Roofline: GFLOP/s of square matmuls (`--roofline-size`, default 2048, and half that) in fp32 and in
bf16, the best over sizes and three operand layouts (a @ b, a @ b.T as in `F.linear`, a.T @ b):
on CPUs without native bf16 the layout and size alone change the bf16 rate by 10x or more. bf16 is
also measured as clip computes it there (fp32 product, rounded: "via fp32"); the bf16 roofline is
the faster way. Every encode row states its percentage of the roofline of its dtype (autocast: bf16).

Run (from the repository root): python -m benchmarks.bench_encode [--oracle DIR] [--models ViT-B/32 RN50]
[--batches 1 32] [--modes fp32 bf16 autocast bf16-torch] [--repeats 3] [--threads N]
"""

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

try:
    from benchmarks import _common
except ImportError:  # run by path as a worker process: benchmarks/ itself is first on sys.path
    import _common  # type: ignore[no-redef]

MODELS = ("ViT-B/32", "RN50")
TOWERS = ("image", "text")
MODES = ("fp32", "bf16", "autocast", "bf16-torch")
LOW_PRECISION_MODES = ("bf16", "autocast", "bf16-torch")
SLOW_MODES = ("bf16-torch",)  # torch's generic bf16 kernels: timed at small batches only
BF16_KERNELS_ENV = "CLIP_CPU_BF16_KERNELS"  # clip/_bf16.py: "torch" turns clip's fp32 products off
DEFAULT_BATCHES = (1, 32)
DEFAULT_REPEATS = 3
DEFAULT_LOW_PRECISION_BATCH = 8
LOW_PRECISION_BATCH_MODELS = ("ViT-B/32",)  # the goal row; RN50's bf16 convolutions are too slow
DEFAULT_ROOFLINE_SIZE = 2048
LAYOUTS = ("nn", "nt", "tn")  # a @ b, a @ b.T, a.T @ b
SEED = 0
IMAGE_SEED = 1
TOKEN_SEED = 2
RESOLUTION = 224  # both benchmarked models
CONTEXT_LENGTH = 77
SOT, EOT = 49406, 49407
MIN_TEXT_TOKENS = 5
GFLOP = 1e9
GOAL_FP32_RATIO = 0.95  # fp32 within 5% of the original
GOAL_BF16_SPEEDUP = 1.8  # ViT-B/32 encode_image, batch 32, bf16 vs our fp32
GOAL_BF16_BATCH = 32
GOAL_BF16_ROOFLINE = 0.75
GOAL_COSINE = 0.999
FP32_MAX_ABS_DIFF = 1e-3  # ours vs the original in fp32; measured ~1e-5; beyond this the run fails


# ------------------------------------------------------------------------------------------------
# the worker process (one per side)


class _Worker:
    """Runs in the side's process: holds one model at a time and answers JSON requests."""

    def __init__(self, inputs_file: str) -> None:
        import torch

        import clip.model

        self.torch = torch
        self.build_model = clip.model.build_model
        # ours: text rows compute all 77 positions, as the FLOP count and the original do (bench_text trims)
        if hasattr(clip.model.CLIP, "trim_text_padding"):
            clip.model.CLIP.trim_text_padding = False
        self.factory = _common.load_model_factory()
        inputs = torch.load(inputs_file, weights_only=True)
        self.images, self.tokens = inputs["images"], inputs["tokens"]
        self.model: Any = None
        self.bf16_model: Any = None
        self.reference: Dict[str, Any] = {}  # tower -> fp32 features of the largest batch so far

    def handle(self, request: Dict[str, Any]) -> Dict[str, Any]:
        op = request.pop("op")
        return getattr(self, f"op_{op}")(**request)

    def op_model(self, config: str) -> Dict[str, Any]:
        self.model = self.bf16_model = None
        self.reference = {}
        start = time.perf_counter()
        state_dict = self.factory.make_state_dict(config, SEED)
        self.model = self.build_model(state_dict).float().eval()
        del state_dict
        return {"seconds": time.perf_counter() - start}

    def _inputs(self, tower: str, batch: int) -> Any:
        source = self.images if tower == "image" else self.tokens
        if batch > source.shape[0]:
            raise ValueError(f"batch {batch} > the {source.shape[0]} prepared inputs")
        return source[:batch]

    def _bf16_model(self) -> Any:
        if self.bf16_model is None:
            self.bf16_model = copy.deepcopy(self.model).to(self.torch.bfloat16)
        return self.bf16_model

    def _encode(self, tower: str, batch: int, mode: str) -> Any:
        torch = self.torch
        inputs = self._inputs(tower, batch)
        model = self.model
        if mode in ("bf16", "bf16-torch"):
            model = self._bf16_model()
            if tower == "image":
                inputs = inputs.to(torch.bfloat16)
        encode = model.encode_image if tower == "image" else model.encode_text
        if mode == "bf16-torch":
            os.environ[BF16_KERNELS_ENV] = "torch"
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
                return encode(inputs)
        finally:
            os.environ.pop(BF16_KERNELS_ENV, None)

    def op_encode(self, tower: str, batch: int, mode: str, save: Optional[str] = None) -> Dict[str, Any]:
        torch = self.torch
        if mode in ("bf16", "bf16-torch"):
            self._bf16_model()  # the cast is not timed
        start = time.perf_counter()
        try:
            features = self._encode(tower, batch, mode)
        except RuntimeError as error:  # the original in bf16
            return {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
        seconds = time.perf_counter() - start
        reply: Dict[str, Any] = {"seconds": seconds, "dtype": str(features.dtype)}
        if mode == "fp32":
            known = self.reference.get(tower)
            if known is None or known.shape[0] < batch:
                self.reference[tower] = features
        else:
            reference = self.reference.get(tower)
            if reference is None or reference.shape[0] < batch:
                reference = self._encode(tower, batch, "fp32")  # untimed
            cosine = torch.nn.functional.cosine_similarity(features.float(), reference[:batch], dim=-1)
            reply["min_cosine_to_fp32"] = cosine.min().item()
        if save:
            torch.save(features.float(), save)
        return reply

    def op_flops(self, tower: str) -> Dict[str, Any]:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self._encode(tower, 1, "fp32")
        return {"flops_per_item": counter.get_total_flops()}

    def op_roofline(
        self, dtype: str, size: int, layout: str, repeats: int, via_fp32: bool = False
    ) -> Dict[str, Any]:
        torch = self.torch
        generator = torch.Generator().manual_seed(SEED)
        a = torch.randn(size, size, generator=generator).to(getattr(torch, dtype))
        b = torch.randn(size, size, generator=generator).to(getattr(torch, dtype))
        left = a.t() if layout[0] == "t" else a  # a view: the kernel sees a transposed operand
        right = b.t() if layout[1] == "t" else b
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            if via_fp32:  # bf16 operands, fp32 product rounded to bf16: clip/_bf16.py's way
                torch.mm(left.float(), right.float()).to(a.dtype)
            else:
                torch.mm(left, right)
            best = min(best, time.perf_counter() - start)
        return {"gflop_per_s": 2 * size**3 / best / GFLOP, "seconds": best}

    def op_info(self) -> Dict[str, Any]:
        torch = self.torch
        return {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }


def _worker_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import clip

    _common.check_imported_from(clip.__file__, args.expect_root)
    worker = _Worker(args.inputs)
    print(json.dumps({"ready": True, "clip_file": clip.__file__}), flush=True)
    for line in sys.stdin:
        print(json.dumps(worker.handle(json.loads(line))), flush=True)


# ------------------------------------------------------------------------------------------------
# the parent: starts both workers and alternates passes between them


def make_inputs(path: Path, batch: int) -> None:
    """Save `batch` seeded images and token ids (end-of-text at varied positions) to `path`."""
    import torch

    factory = _common.load_model_factory()
    images = factory.make_images(RESOLUTION, IMAGE_SEED, batch)
    generator = torch.Generator().manual_seed(TOKEN_SEED)
    tokens = torch.zeros(batch, CONTEXT_LENGTH, dtype=torch.int64)
    for row in range(batch):
        length = int(torch.randint(MIN_TEXT_TOKENS, CONTEXT_LENGTH + 1, (1,), generator=generator))
        tokens[row, 0] = SOT
        tokens[row, 1 : length - 1] = torch.randint(1, SOT, (length - 2,), generator=generator)
        tokens[row, length - 1] = EOT
    torch.save({"images": images, "tokens": tokens}, path)


def measure_roofline(
    worker: _common.WorkerSide,
    size: int = DEFAULT_ROOFLINE_SIZE,
    repeats: int = DEFAULT_REPEATS,
    slow_layout: bool = True,
) -> Dict[str, Any]:
    """fp32 and bf16 matmul GFLOP/s by layout and size (`size`, `size // 2`); the best of each dtype.

    bf16 is measured both with torch's kernels and as clip computes bf16 products on CPUs without
    bf16 units (fp32 product of the widened operands, rounded to bf16: "via fp32"); the bf16
    roofline is the faster of the two, the best bf16 matmul this machine can do.

    bf16 a @ b (both operands contiguous) is measured at `size // 2` only, in one pass, and only
    with `slow_layout`: on CPUs without bf16 units it runs at about 1 GFLOP/s (a minute at 2048).
    """
    result: Dict[str, Any] = {"size": size}
    for dtype in ("float32", "bfloat16"):
        rates = {}
        if dtype == "float32":
            worker.ask("roofline", dtype=dtype, size=size, layout="nn", repeats=1)  # BLAS start-up
        for layout in LAYOUTS:
            for n in (size // 2, size):
                if dtype == "bfloat16" and layout == "nn":
                    if not slow_layout or n != size // 2:
                        continue
                    passes = 1
                else:
                    passes = repeats if dtype == "float32" else min(repeats, 2)
                reply = worker.ask("roofline", dtype=dtype, size=n, layout=layout, repeats=passes)
                rates[f"{layout}@{n}"] = reply["gflop_per_s"]
                if dtype == "bfloat16" and layout == "nt":  # F.linear's layout, the model's products
                    reply = worker.ask(
                        "roofline", dtype=dtype, size=n, layout=layout, repeats=repeats, via_fp32=True
                    )
                    rates[f"{layout}@{n} via fp32"] = reply["gflop_per_s"]
        result[dtype] = {"best": max(rates.values()), "by_layout": rates}
    return result


def _timed(
    sides: Dict[str, _common.WorkerSide],
    names: Sequence[str],
    passes: int,
    request: Dict[str, Any],
    saves: Optional[Dict[str, str]] = None,
    limits: Optional[Dict[str, int]] = None,
) -> Dict[str, Dict[str, Any]]:
    """`passes` passes of each named side, alternating which goes first; the fastest of each counts.

    With `saves` (side -> file), each side saves its output of the last pass (after the timing).
    `limits` (side -> passes) caps a slow side's passes.
    """
    best: Dict[str, Dict[str, Any]] = {}
    order = list(names)
    for index in range(passes):
        for name in order:
            if "error" in best.get(name, {}) or index >= (limits or {}).get(name, passes):
                continue
            save = saves[name] if saves and index == (limits or {}).get(name, passes) - 1 else None
            reply = sides[name].ask("encode", **request, save=save)
            if "error" in reply or name not in best or reply["seconds"] < best[name]["seconds"]:
                best[name] = reply
        order.reverse()
    return best


def run(
    models: Sequence[str] = MODELS,
    towers: Sequence[str] = TOWERS,
    batches: Sequence[int] = DEFAULT_BATCHES,
    modes: Sequence[str] = MODES,
    repeats: int = DEFAULT_REPEATS,
    low_precision_batch: int = DEFAULT_LOW_PRECISION_BATCH,
    oracle: Optional[str] = None,
    threads: Optional[int] = None,
    roofline_size: int = DEFAULT_ROOFLINE_SIZE,
    slow_layout: bool = True,
) -> Dict[str, Any]:
    """Measure every (model, tower, mode, batch) row; returns the roofline, the rows and the goals.

    Raises AssertionError if ours and the original disagree in fp32 (max abs diff > 1e-3).
    """
    import tempfile

    import torch

    oracle = _common.resolve_oracle(oracle)
    for name, given, known in (("model", models, MODELS), ("tower", towers, TOWERS), ("mode", modes, MODES)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"unknown {name} {unknown}; choose from {list(known)}")
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be positive, got {list(batches)}")
    threads = threads or torch.get_num_threads()
    load_before = _common.load_average()
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="clip-bench-encode-") as tmp:
        workdir = Path(tmp)
        inputs = workdir / "inputs.pt"
        make_inputs(inputs, max([*batches, low_precision_batch]))
        script = Path(__file__)
        sides = {
            side: _common.WorkerSide(script, side, oracle, inputs, threads) for side in ("original", "ours")
        }
        try:
            info = sides["ours"].ask("info")
            roofline = measure_roofline(sides["ours"], roofline_size, repeats, slow_layout)
            for model in models:
                for side in sides.values():
                    side.ask("model", config=model)
                for tower in towers:
                    rows += _model_rows(
                        sides, workdir, model, tower, batches, modes, repeats, low_precision_batch
                    )
        finally:
            for side in sides.values():
                side.close()
    _add_derived(rows, roofline)
    return {
        "benchmark": "encode",
        "threads": threads,
        "repeats": repeats,
        "info": info,
        "roofline": roofline,
        "rows": rows,
        "goals": _goals(rows),
        "load_average_1min": [load_before, _common.load_average()],
    }


def _model_rows(
    sides: Dict[str, _common.WorkerSide],
    workdir: Path,
    model: str,
    tower: str,
    batches: Sequence[int],
    modes: Sequence[str],
    repeats: int,
    low_precision_batch: int,
) -> List[Dict[str, Any]]:
    import torch

    flops = sides["ours"].ask("flops", tower=tower)["flops_per_item"]
    both = ("original", "ours")
    rows = []
    if "fp32" in modes:
        _timed(sides, both, 1, {"tower": tower, "batch": 1, "mode": "fp32"})  # warm-up
        for batch in sorted(batches):
            saves = {name: str(workdir / f"{name}.pt") for name in both}
            best = _timed(sides, both, repeats, {"tower": tower, "batch": batch, "mode": "fp32"}, saves)
            ours, original = (torch.load(saves[name], weights_only=True) for name in ("ours", "original"))
            diff = (ours - original).abs().max().item()
            if not diff <= FP32_MAX_ABS_DIFF:
                raise AssertionError(f"{model} encode_{tower} fp32: ours differs from the original by {diff}")
            rows.append(_row(model, tower, "fp32", batch, flops, best, repeats, max_abs_diff=diff))
    # torch's generic bf16 kernels (the original under autocast, and bf16-torch) are several times
    # slower than fp32 on CPUs without bf16 units: they run at batch 1 and one reduced batch only.
    slow_batches = [1]
    if low_precision_batch > 1 and model in LOW_PRECISION_BATCH_MODELS:
        slow_batches.append(low_precision_batch)
    for mode in (m for m in modes if m in LOW_PRECISION_MODES):
        for batch in sorted(set(batches) | set(slow_batches)):
            slow_passes = 2 if batch == 1 else 1
            if mode in SLOW_MODES:
                if batch not in slow_batches:
                    continue
                names, passes, limits = both, slow_passes, None
            else:
                names = both if batch in slow_batches else ("ours",)
                passes, limits = repeats, {"original": slow_passes}
            request = {"tower": tower, "batch": batch, "mode": mode}
            best = _timed(sides, names, passes, request, limits=limits)
            rows.append(_row(model, tower, mode, batch, flops, best, passes))  # limits never cap ours
    return rows


def _row(
    model: str,
    tower: str,
    mode: str,
    batch: int,
    flops: float,
    best: Dict[str, Dict[str, Any]],
    passes: int,
    **extra: Any,
) -> Dict[str, Any]:
    row: Dict[str, Any] = {
        "name": f"encode_{tower} {model} {mode} b{batch}",
        "model": model,
        "tower": tower,
        "mode": mode,
        "batch": batch,
        "passes": passes,
        "gflop_per_item": flops / GFLOP,
        **extra,
    }
    for name, reply in best.items():
        if "error" in reply:
            row[f"{name}_error"] = reply["error"]
            continue
        row[f"{name}_s"] = reply["seconds"]
        row[f"{name}_items_per_s"] = batch / reply["seconds"]
        if "min_cosine_to_fp32" in reply:
            row[f"{name}_min_cosine_to_fp32"] = reply["min_cosine_to_fp32"]
    return row


def _add_derived(rows: List[Dict[str, Any]], roofline: Dict[str, Any]) -> None:
    """GFLOP/s, % of the roofline, ratio to the original and to our fp32 row of the same shape."""
    fp32 = {(r["model"], r["tower"], r["batch"]): r for r in rows if r["mode"] == "fp32"}
    for row in rows:
        if "ours_items_per_s" not in row:
            continue
        row["ours_gflop_per_s"] = row["ours_items_per_s"] * row["gflop_per_item"]
        peak = roofline["float32" if row["mode"] == "fp32" else "bfloat16"]["best"]
        row["roofline_fraction"] = row["ours_gflop_per_s"] / peak
        if "original_items_per_s" in row:
            row["ratio"] = row["ours_items_per_s"] / row["original_items_per_s"]
        if row["mode"] != "fp32":
            # the same batch if measured in fp32, else the largest fp32 batch (the goal's batch 32)
            candidates = [r for (m, t, _), r in fp32.items() if (m, t) == (row["model"], row["tower"])]
            same = fp32.get((row["model"], row["tower"], row["batch"]))
            reference = same or max(candidates, key=lambda r: r["batch"], default=None)
            if reference is not None and "ours_items_per_s" in reference:
                row["vs_ours_fp32"] = row["ours_items_per_s"] / reference["ours_items_per_s"]
                row["vs_ours_fp32_batch"] = reference["batch"]


def _goals(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Each goal of issue 6 with the figure that decides it (None where the row was not measured)."""
    fp32 = [r for r in rows if r["mode"] == "fp32" and "ratio" in r]
    bf16 = [r for r in rows if r["mode"] == "bf16"]
    bf16_image = [r for r in bf16 if r["model"] == "ViT-B/32" and r["tower"] == "image"]
    goal_row = next((r for r in bf16_image if r["batch"] == GOAL_BF16_BATCH), None)
    cosines = [r["ours_min_cosine_to_fp32"] for r in bf16 if "ours_min_cosine_to_fp32" in r]
    autocast = [r["ratio"] for r in rows if r["mode"] == "autocast" and "ratio" in r]
    return {
        "fp32_min_ratio": min((r["ratio"] for r in fp32), default=None),
        "fp32_goal": GOAL_FP32_RATIO,
        "bf16_speedup": goal_row.get("vs_ours_fp32") if goal_row else None,
        "bf16_speedup_batch": goal_row["batch"] if goal_row else None,
        "bf16_speedup_goal": GOAL_BF16_SPEEDUP,
        "bf16_roofline_fraction": goal_row.get("roofline_fraction") if goal_row else None,
        "bf16_roofline_goal": GOAL_BF16_ROOFLINE,
        "bf16_min_cosine": min(cosines, default=None),
        "cosine_goal": GOAL_COSINE,
        "autocast_min_ratio": min(autocast, default=None),
    }


# ------------------------------------------------------------------------------------------------
# command line


def format_rows(result: Dict[str, Any]) -> List[str]:
    """Human-readable lines: the roofline, then one line per row."""
    roof = result["roofline"]
    lines = [f"torch threads {result['threads']}; bf16 in oneDNN: {result['info']['mkldnn_bf16_supported']}"]
    for dtype in ("float32", "bfloat16"):
        layouts = ", ".join(f"{k} {v:.1f}" for k, v in roof[dtype]["by_layout"].items())
        lines.append(f"roofline {dtype}: {roof[dtype]['best']:.1f} GFLOP/s ({layouts})")
    for row in result["rows"]:
        ours = f"{row['ours_items_per_s']:8.2f}/s" if "ours_items_per_s" in row else row.get("ours_error")
        original = (
            f"{row['original_items_per_s']:8.2f}/s"
            if "original_items_per_s" in row
            else row.get("original_error", "-")
        )
        extra = []
        if "ratio" in row:
            extra.append(f"ratio {row['ratio']:.2f}")
        if "roofline_fraction" in row:
            extra.append(f"{100 * row['roofline_fraction']:.0f}% roofline")
        if "vs_ours_fp32" in row:
            extra.append(f"{row['vs_ours_fp32']:.2f}x our fp32 b{row['vs_ours_fp32_batch']}")
        if "ours_min_cosine_to_fp32" in row:
            extra.append(f"cos {row['ours_min_cosine_to_fp32']:.5f}")
        if "max_abs_diff" in row:
            extra.append(f"diff {row['max_abs_diff']:.1e}")
        lines.append(f"{row['name']:<34} ours {ours}  original {original}  " + ", ".join(extra))
    return lines


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", default=None, help="folder holding the original `clip` package")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--towers", nargs="+", default=list(TOWERS), choices=TOWERS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES))
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed fp32 passes per side")
    parser.add_argument(
        "--low-precision-batch", type=int, default=DEFAULT_LOW_PRECISION_BATCH, help="0: batch 1 only"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--roofline-size", type=int, default=DEFAULT_ROOFLINE_SIZE, help="matmul side")
    # Internal: the worker processes.
    parser.add_argument("--worker", choices=("original", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--expect-root", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    if args.worker:
        _worker_main(args)
        return
    start = time.perf_counter()
    result = run(
        args.models,
        args.towers,
        args.batches,
        args.modes,
        args.repeats,
        args.low_precision_batch,
        args.oracle,
        args.threads,
        args.roofline_size,
    )
    print("\n".join(format_rows(result)))
    print(f"goals: {json.dumps(result['goals'])}")
    print(f"wall time {time.perf_counter() - start:.0f} s; load average {result['load_average_1min']}")


if __name__ == "__main__":
    main()
