"""`clip export MODEL OUT_DIR`: write the image and text encoders as two ONNX graphs, checked in
onnxruntime against the PyTorch model, with a clip_export.json beside them (clip.export.to_onnx).

MODEL is a released model name (looked up on disk like ``clip.load`` does; downloaded only with
``--download``) or any checkpoint file or directory ``clip.load`` reads. OUT_DIR is checked before
MODEL is read, written beside its final place and renamed into it: a failed export or check leaves
nothing there. ``--force`` replaces an earlier export, never a folder of other files.
"""

import argparse
import os
import sys
from typing import TYPE_CHECKING, List

if TYPE_CHECKING:
    import torch

from .common import (
    EXIT_OK,
    CommandFailure,
    ModelLoadError,
    UsageError,
    checkpoint_to_load,
    cli_advice,
    download_allowed,
    print_line,
    run_command,
    shorten,
)

__all__ = ["main"]

PROG = "clip export"
DTYPES = ("float32", "float16")
MODEL_FILE_ADVICE = "clip export path/to/checkpoint.pt OUT_DIR"
INTERRUPTED = "OUT_DIR was left as it was"
EPILOG = """\
examples:
  clip export ViT-B/32 vit-b-32-onnx/                  visual.onnx, textual.onnx, clip_export.json
  clip export RN50 rn50-fp16/ --dtype float16          fp16 graphs for GPUs
  clip export my_finetune.pt out/ --force              replace an earlier export in out/

Then run them with onnxruntime: clip.export.OnnxModel("vit-b-32-onnx/") (docs/export.md).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Export a CLIP model's image and text encoders as ONNX graphs (visual.onnx: image "
            "[batch, 3, R, R] -> image_features; textual.onnx: text int32 [batch, 77] -> text_features) "
            "with clip_export.json, and check them in onnxruntime against the PyTorch model."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", metavar="MODEL", help="a released model name, or a checkpoint file or directory"
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (new or empty; see --force)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="the graphs' floating-point type (default: float32; float16 for GPUs, checked to cosine 0.999)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset, 18 to 25 (default: the exporter's, 20 with torch 2.14)",
    )
    parser.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip running the graphs in onnxruntime against the PyTorch model",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier export in OUT_DIR (never a folder of other files)",
    )
    parser.add_argument(
        "--download-root",
        default=None,
        metavar="DIR",
        help="cache directory of released weights (default: $CLIP_CACHE_DIR, else ~/.cache/clip)",
    )
    parser.add_argument("--download", action="store_true", help="download a released model missing from disk")
    return parser


def main(argv: List[str]) -> int:
    """Run ``clip export`` with `argv`; return the exit status."""
    return run_command(PROG, _parser(), _run, argv, interrupted=INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    import torch

    from .. import export
    from .._onnx_folder import check_destination
    from .._onnx_graphs import require

    try:
        require("onnx", "onnxscript", *(("onnxruntime",) if args.check else ()))
    except ImportError as exc:
        raise CommandFailure(str(exc)) from exc
    dtype = getattr(torch, args.dtype)
    try:
        export._opset(args.opset)
        check_destination(args.out_dir, args.force, force_hint="--force")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{'--opset' if isinstance(exc, ValueError) else 'OUT_DIR'}: {exc}") from exc
    model = _load(args.model, args.download_root, args.download)
    try:
        report = export.to_onnx(
            model,
            args.out_dir,
            dtype=dtype,
            opset=args.opset,
            check=args.check,
            force=args.force,
            model_name=args.model,
            progress=sys.stderr.isatty(),
        )
    except export.ExportCheckError as exc:
        for check in exc.checks:
            print_line(check.summary())
        raise CommandFailure(
            f"the graphs disagree with the PyTorch model (figures above); nothing written to {args.out_dir}"
        ) from exc
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc
    except RuntimeError as exc:
        raise CommandFailure(f"cannot export {shorten(args.model)}: {exc}") from exc
    for check in report.checks:
        print_line(check.summary())
    if not report.checks:
        print_line("not checked (--no-check)")
    sizes = ", ".join(f"{os.path.basename(path)} ({_size(path)})" for path in report.files)
    print_line(f"wrote {args.out_dir}: {sizes}")
    return EXIT_OK


def _load(name: str, download_root: "str | None", download: bool) -> "torch.nn.Module":
    """The fp32 CPU model of MODEL (jit=False); UsageError for a MODEL that names nothing, weights
    missing from the cache; ModelLoadError when they cannot be loaded."""
    from ..clip import _MODELS, CheckpointError, DownloadError, available_models, default_cache_dir, load

    if name not in _MODELS and not os.path.exists(name):
        raise UsageError(
            f"MODEL {shorten(name)} is neither a released model ({', '.join(available_models())}) nor a "
            "checkpoint file or directory"
        )
    root = download_root or default_cache_dir()
    checkpoint = checkpoint_to_load(name, root, download_allowed(download), MODEL_FILE_ADVICE)
    try:
        model, _ = load(checkpoint, device="cpu", jit=False, download_root=root)
    except (CheckpointError, DownloadError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {shorten(name)}: {cli_advice(str(exc))}") from exc
    return model


def _size(path: str) -> str:
    size = float(os.path.getsize(path))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
