"""Benchmark: the ONNX graphs of `clip export` in onnxruntime on the CPU against our PyTorch fp32.

Models: ViT-B/32 and RN50 shapes with seeded random weights in the release's layout
(tests/support/_model_factory.py), fp32 (`build_model(...).float()`, what `clip.load(...,
device="cpu")` returns), exported with `clip.export.to_onnx` (its check included: the figures are
reported). Inputs: the seeded images and token ids of bench_encode (end-of-text at varied
positions), batch 1 and 32. Variants, timed in the same process, passes alternating between them
(the order reversed each pass), the fastest pass counting:

- torch fp32: `model.encode_image` / `encode_text` under no_grad (torch's default threads). Our
  encode_text computes only up to the batch's last end-of-text token where it may
  (`CLIP.trim_text_padding`); "torch fp32, 77 positions" turns that off, as the graph computes all
  77 positions;
- onnxruntime fp32, default `SessionOptions`;
- onnxruntime fp32, tuned threads: `intra_op_num_threads` = the CPU count, `inter_op_num_threads`
  1, sequential execution, and no spin-waiting of idle threads
  (``session.intra_op.allow_spinning = 0``);
- onnxruntime int8: `onnxruntime.quantization.quantize_dynamic` of the exported fp32 graph
  (QInt8 weights, default settings), default SessionOptions; its features are compared with torch
  fp32's (smallest row cosine).

The worker process starts with the steady glibc allocator settings of benchmarks/_common.py.

`--architectures` instead exports each of the nine released architectures (seeded random weights
at the release's shapes) with `to_onnx`'s check and reports its figures, the time taken and the
file sizes; `--dtype float16` does the same for fp16 graphs.

Run (from the repository root): python -m benchmarks.bench_export [--models ViT-B/32 RN50]
[--batches 1 32] [--repeats 3] [--json FILE]; python -m benchmarks.bench_export --architectures
[--dtype float16]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from benchmarks import _common
from benchmarks.bench_encode import make_inputs

MODELS = ("ViT-B/32", "RN50")
DEFAULT_BATCHES = (1, 32)
DEFAULT_REPEATS = 3
SEED = 0
TORCH, TORCH_FULL, ORT, ORT_TUNED, ORT_INT8 = (
    "torch fp32",
    "torch fp32, 77 positions",
    "onnxruntime fp32",
    "onnxruntime fp32, tuned threads",
    "onnxruntime int8",
)
VARIANTS = (TORCH, TORCH_FULL, ORT, ORT_TUNED, ORT_INT8)
_CHILD_ENV = "_CLIP_BENCH_EXPORT_CHILD"


def _sessions(folder: Path, int8_folder: Path) -> Dict[str, Dict[str, Any]]:
    """{variant: {"visual": session, "textual": session}} for the onnxruntime variants."""
    import onnxruntime as ort

    tuned = ort.SessionOptions()
    tuned.intra_op_num_threads = os.cpu_count() or 1
    tuned.inter_op_num_threads = 1
    tuned.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    tuned.add_session_config_entry("session.intra_op.allow_spinning", "0")
    out: Dict[str, Dict[str, Any]] = {}
    for variant, where, options in (
        (ORT, folder, None),
        (ORT_TUNED, folder, tuned),
        (ORT_INT8, int8_folder, None),
    ):
        out[variant] = {
            graph: ort.InferenceSession(
                str(where / f"{graph}.onnx"), options, providers=["CPUExecutionProvider"]
            )
            for graph in ("visual", "textual")
        }
    return out


def _quantize(folder: Path, int8_folder: Path) -> Dict[str, float]:
    """int8 copies of both graphs (seconds taken by each)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_folder.mkdir()
    seconds = {}
    for graph in ("visual", "textual"):
        start = time.perf_counter()
        quantize_dynamic(folder / f"{graph}.onnx", int8_folder / f"{graph}.onnx", weight_type=QuantType.QInt8)
        seconds[graph] = time.perf_counter() - start
    return seconds


def _cosine(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def _model_rows(config: str, batches: Sequence[int], repeats: int, inputs: Dict[str, Any]) -> List[Dict]:
    import torch

    import clip.export
    from clip.model import build_model

    factory = _common.load_model_factory()
    model = build_model(factory.make_state_dict(config, SEED)).float().eval()
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder, int8_folder = Path(scratch) / "fp32", Path(scratch) / "int8"
        start = time.perf_counter()
        report = clip.export.to_onnx(model, folder, model_name=config)
        export_seconds = time.perf_counter() - start
        quantize_seconds = _quantize(folder, int8_folder)
        sizes = {
            kind: {g: (where / f"{g}.onnx").stat().st_size for g in ("visual", "textual")}
            for kind, where in (("fp32", folder), ("int8", int8_folder))
        }
        sessions = _sessions(folder, int8_folder)
        rows.append(
            {
                "model": config,
                "export_seconds": export_seconds,
                "quantize_seconds": quantize_seconds,
                "bytes": sizes,
                "checks": [c.summary() for c in report.checks],
            }
        )
        for tower, graph in (("image", "visual"), ("text", "textual")):
            source = inputs["images"] if tower == "image" else inputs["tokens"].to(torch.int32)
            encode = model.encode_image if tower == "image" else model.encode_text
            for batch in batches:
                feed = source[:batch]
                array = feed.numpy()

                def run_torch(full: bool, feed: Any = feed, encode: Callable = encode) -> Any:
                    model.trim_text_padding = not full
                    try:
                        with torch.no_grad():
                            return encode(feed).numpy()
                    finally:
                        model.trim_text_padding = True

                calls: Dict[str, Callable[[], Any]] = {
                    TORCH: lambda run_torch=run_torch: run_torch(False),
                    TORCH_FULL: lambda run_torch=run_torch: run_torch(True),
                }
                if tower == "image":
                    calls.pop(TORCH_FULL)
                for variant in (ORT, ORT_TUNED, ORT_INT8):
                    session = sessions[variant][graph]
                    name = session.get_inputs()[0].name
                    calls[variant] = lambda session=session, name=name, array=array: session.run(
                        None, {name: array}
                    )[0]
                rows.append(_timed(config, tower, batch, calls, repeats))
    return rows


def _timed(config: str, tower: str, batch: int, calls: Dict[str, Callable[[], Any]], repeats: int) -> Dict:
    """Best-of-`repeats` seconds per variant, alternating order; cosines of each to torch fp32."""
    outputs = {name: call() for name, call in calls.items()}  # warm-up, and the outputs compared
    best = {name: float("inf") for name in calls}
    order = list(calls)
    for _ in range(repeats):
        for name in order:
            start = time.perf_counter()
            calls[name]()
            best[name] = min(best[name], time.perf_counter() - start)
        order.reverse()
    reference = outputs[TORCH]
    return {
        "model": config,
        "tower": tower,
        "batch": batch,
        "items_per_second": {name: batch / seconds for name, seconds in best.items()},
        "min_cosine_to_torch": {name: _cosine(out, reference) for name, out in outputs.items()},
    }


def run(models: Sequence[str], batches: Sequence[int], repeats: int) -> Dict[str, Any]:
    """Every row, with the machine's description."""
    import onnxruntime
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "inputs.pt"
        make_inputs(path, max(batches))
        inputs = torch.load(path, weights_only=True)
    rows: List[Dict[str, Any]] = []
    for config in models:
        rows += _model_rows(config, batches, repeats, inputs)
    return {
        "machine": _common.machine_info(),
        "cpu_flags": _cpu_flags(),
        "onnxruntime": onnxruntime.__version__,
        "malloc": _common.malloc_note(dict(os.environ)),
        "repeats": repeats,
        "rows": rows,
    }


def check_architectures(dtype: str) -> List[Dict[str, Any]]:
    """Export and check each of the nine released architectures; one row each."""
    import torch

    import clip.export
    from clip.model import build_model

    factory = _common.load_model_factory()
    rows = []
    for config in factory.RELEASED:
        model = build_model(factory.make_state_dict(config, SEED)).float().eval()
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            try:
                report = clip.export.to_onnx(model, Path(scratch) / "out", dtype=getattr(torch, dtype))
            except Exception as exc:  # reported, and the next architecture still runs
                rows.append({"model": config, "error": f"{type(exc).__name__}: {exc}"})
                print(f"{config}: {rows[-1]['error']}", flush=True)
                continue
            seconds = time.perf_counter() - start
            sizes = {os.path.basename(path): os.path.getsize(path) for path in report.files}
        rows.append(
            {
                "model": config,
                "seconds": seconds,
                "bytes": sizes,
                "checks": [c.summary() for c in report.checks],
            }
        )
        print(f"{config}: {seconds:.0f} s; " + " / ".join(rows[-1]["checks"]), flush=True)
        del model, report
    return rows


def _cpu_flags() -> List[str]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in wanted if flag in flags]


def format_rows(result: Dict[str, Any]) -> List[str]:
    """The markdown table of the timed rows, and one line per model of export figures."""
    lines = [
        "| Row | "
        + " | ".join(VARIANTS)
        + " | onnxruntime / torch (default; tuned) | int8 / torch | int8 cosine to fp32 |",
        "|---|" + "---|" * (len(VARIANTS) + 3),
    ]
    notes = []
    for row in result["rows"]:
        if "tower" not in row:
            mib = {k: {g: v / 2**20 for g, v in s.items()} for k, s in row["bytes"].items()}
            notes.append(
                f"- {row['model']}: export + check {row['export_seconds']:.0f} s, quantize_dynamic "
                f"{sum(row['quantize_seconds'].values()):.0f} s; visual.onnx {mib['fp32']['visual']:.0f} MiB "
                f"(int8 {mib['int8']['visual']:.0f}), textual.onnx {mib['fp32']['textual']:.0f} MiB (int8 "
                f"{mib['int8']['textual']:.0f}); check: " + " / ".join(row["checks"])
            )
            continue
        unit = "img/s" if row["tower"] == "image" else "texts/s"
        rates = row["items_per_second"]
        cells = [f"{rates[v]:.2f} {unit}" if v in rates else "–" for v in VARIANTS]
        torch_rate = rates[TORCH]
        lines.append(
            f"| encode_{row['tower']} {row['model']}, batch {row['batch']} | "
            + " | ".join(cells)
            + f" | {rates[ORT] / torch_rate:.2f}x; {rates[ORT_TUNED] / torch_rate:.2f}x"
            + f" | {rates[ORT_INT8] / torch_rate:.2f}x | {row['min_cosine_to_torch'][ORT_INT8]:.5f} |"
        )
    return lines + [""] + notes


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES))
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed passes per variant")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    parser.add_argument(
        "--architectures", action="store_true", help="export and check the nine released architectures"
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="with --architectures"
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    if os.environ.get(_CHILD_ENV) != "1":  # rerun with the steady allocator settings (set at start)
        env = {**_common.steady_malloc(dict(os.environ)), _CHILD_ENV: "1"}
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_export",
            *(argv if argv is not None else sys.argv[1:]),
        ]
        os.execve(sys.executable, command, env)
    start = time.perf_counter()
    if args.architectures:
        rows = check_architectures(args.dtype)
        print(f"wall time {time.perf_counter() - start:.0f} s; load average {_common.load_average()}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
        return
    result = run(args.models, args.batches, args.repeats)
    machine = result["machine"]
    print(
        f"CPU: {machine['cpu']}, {machine['cpus']} logical CPUs, flags {' '.join(result['cpu_flags'])}; "
        f"torch "
        f"{machine['torch']} ({machine['torch_threads']} threads, capability {machine['cpu_capability']}); "
        f"onnxruntime {result['onnxruntime']}; best of {result['repeats']} alternating passes; malloc: "
        f"{result['malloc']}"
    )
    print("\n".join(format_rows(result)))
    print(f"wall time {time.perf_counter() - start:.0f} s; load average {_common.load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
