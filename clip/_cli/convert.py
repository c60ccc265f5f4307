"""`clip convert SRC DST`: write CLIP weights as a release-layout .safetensors file, or with
``--to hf`` as a transformers ``CLIPModel`` directory (config.json + model.safetensors).

SRC is a released model name (looked up on disk like ``clip.load`` does; downloaded only with
``--download``) or any file or directory ``clip.load`` reads (release archive, torch.save state
dict, .safetensors, open_clip, transformers). Nothing from SRC is run, and nothing half-written is
ever left at DST: DST is checked before SRC is read, written beside its final place and renamed
into it. ``--force`` replaces only what this command could have written (a model file, or a folder
holding just config.json and model.safetensors of a CLIPModel), never a folder of other files.
"""

import argparse
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from .common import EXIT_OK, CommandFailure, UsageError, run_command, shorten, weights_file

if TYPE_CHECKING:
    import torch

__all__ = ["main"]

TARGETS = ("safetensors", "hf")
# --dtype's default: the release's own dtypes (fp16 weights, fp32 where the release keeps fp32)
RELEASE_DTYPES = "release"
DTYPES = (RELEASE_DTYPES, "float32", "float16", "bfloat16")
HF_WEIGHTS_FILE = "model.safetensors"
HF_CONFIG_FILE = "config.json"
SRC_FILE_ADVICE = "clip convert path/to/checkpoint.pt DST"  # SRC takes a checkpoint file
RELEASE_METADATA = {"format": "pt", "layout": "openai-clip-release"}
HF_MODEL_TYPE = "clip"  # config.json's model_type in a transformers CLIPModel folder
NAMES_SHOWN = 3  # files of a refused DST folder named in the message
INTERRUPTED = "DST was left as it was"
EPILOG = """\
examples:
  clip convert ViT-B/32 vit-b-32.safetensors               the cached release, as .safetensors
  clip convert ViT-B/32 vit-b-32-fp32.safetensors --dtype float32
  clip convert my_finetune.pt hf-model/ --to hf            a transformers CLIPModel directory
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip convert",
        description=(
            "Convert CLIP weights: to a .safetensors file in the release's layout (the default; "
            "clip.load reads it, faster than the release archive), or with --to hf to a "
            "transformers CLIPModel directory (ViT models only)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", help="a released model name, or a checkpoint file or directory")
    parser.add_argument("dst", metavar="DST", help="the .safetensors file, or the directory with --to hf")
    parser.add_argument(
        "--to", choices=TARGETS, default="safetensors", help="output format (default: safetensors)"
    )
    parser.add_argument(
        "--download-root",
        default=None,
        metavar="DIR",
        help="cache directory of released weights (default: $CLIP_CACHE_DIR, else ~/.cache/clip)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=RELEASE_DTYPES,
        help=(
            "floating-point dtype of the .safetensors output (default: the release's, fp16 weights); "
            "float32 makes a file `clip.load(..., dtype=torch.float32, mmap=True)` maps without copying. "
            "--to hf always writes float32"
        ),
    )
    parser.add_argument("--download", action="store_true", help="download a released model missing from disk")
    parser.add_argument(
        "--force",
        action="store_true",
        help=(
            "replace DST if it is a model this command could have written: a .safetensors or PyTorch "
            "checkpoint file, or with --to hf a folder holding only config.json and model.safetensors "
            "of a CLIPModel (never a folder of other files)"
        ),
    )
    return parser


def main(argv: List[str]) -> int:
    """Run ``clip convert`` with `argv`; return the exit status."""
    return run_command("clip convert", _parser(), _run, argv, interrupted=INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    from .._weights.errors import CheckpointError
    from ..clip import _MODELS

    if args.to == "hf" and args.dtype not in (RELEASE_DTYPES, "float32"):
        raise UsageError(
            f"--to hf writes float32 weights; --dtype {args.dtype} applies to .safetensors output"
        )
    if args.src not in _MODELS and not os.path.exists(args.src):
        raise UsageError(
            f"SRC {shorten(args.src)} is neither a released model ({', '.join(_MODELS)}) nor a file or "
            "directory"
        )
    _check_destination(args.dst, args.to, args.force)
    source = (
        weights_file(args.src, args.download_root, args.download, SRC_FILE_ADVICE)
        if args.src in _MODELS
        else args.src
    )
    try:
        weights = _release_weights(source)
        if args.to == "hf":
            config, tensors = _hf_model(weights)  # ValueError for ResNet models, before anything is written
        else:
            tensors = _cast(weights, args.dtype)
    except (CheckpointError, ValueError, OSError) as exc:
        raise CommandFailure(f"cannot convert {shorten(args.src)}: {exc}") from exc
    try:
        if args.to == "hf":
            _write_hf(config, tensors, args.dst)
        else:
            _write_release(tensors, args.dst)
    except OSError as exc:
        raise CommandFailure(f"cannot write DST {shorten(args.dst)}: {exc.strerror or exc}") from exc
    kind = "a transformers CLIPModel directory" if args.to == "hf" else "release-layout .safetensors"
    print(f"wrote {args.dst} ({kind})")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# DST: checked before SRC is read


def _check_destination(dst: str, to: str, force: bool) -> None:
    """A UsageError when DST cannot be written, or exists and may not be replaced (see --force)."""
    shown = shorten(dst)
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        state = "is not a folder" if os.path.exists(parent) else "does not exist"
        raise UsageError(f"cannot write DST {shown}: its folder {parent} {state}; create it first")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot write DST {shown}: no file can be created in {parent} ({exc.strerror})"
        ) from exc
    if not os.path.lexists(dst):
        return
    problem = _hf_folder_problem(dst) if to == "hf" else _model_file_problem(dst)
    if problem:
        raise UsageError(
            f"DST {shown} exists and {problem}; --force replaces only a model this command could have "
            "written. Choose another DST, or move it away yourself"
        )
    if not force:
        raise UsageError(f"{dst} exists; pass --force to replace it")


def _model_file_problem(dst: str) -> str:
    """Why the existing `dst` is not a model file --force may replace ("" when it is one)."""
    from .._weights.formats import LEGACY_TORCH_MAGIC
    from .._weights.safetensors import looks_like_safetensors
    from .._weights.sniff import ZIP_MAGIC, sniff

    if os.path.isdir(dst):
        return f"is a folder; name the file to write, e.g. {os.path.join(dst, 'model.safetensors')}"
    if not os.path.isfile(dst):
        return "is not a regular file"
    head = sniff(dst)
    legacy = head.startswith(b"\x80\x02\x8a\x0a" + LEGACY_TORCH_MAGIC.to_bytes(10, "little"))
    if head.startswith(ZIP_MAGIC) or legacy or looks_like_safetensors(head, os.path.getsize(dst)):
        return ""
    return "is not a model file (neither .safetensors nor a PyTorch checkpoint)"


def _hf_folder_problem(dst: str) -> str:
    """Why the existing `dst` is not a CLIPModel folder --force may replace ("" when it is one)."""
    if os.path.islink(dst) or not os.path.isdir(dst):
        return "is not a folder (--to hf writes a folder)"
    here = os.path.realpath(os.getcwd())
    target = os.path.realpath(dst)
    if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
        return "is the working folder or a folder above it"
    others = sorted(set(os.listdir(dst)) - {HF_CONFIG_FILE, HF_WEIGHTS_FILE})
    if others:
        more = f" and {len(others) - NAMES_SHOWN} more" if len(others) > NAMES_SHOWN else ""
        return f"holds other files than a CLIPModel ({', '.join(map(repr, others[:NAMES_SHOWN]))}{more})"
    config = os.path.join(dst, HF_CONFIG_FILE)
    if os.path.lexists(config) and _read_json(config).get("model_type") != HF_MODEL_TYPE:
        return f"holds a {HF_CONFIG_FILE} that is not a CLIPModel's"
    return ""


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------------------------------
# SRC -> weights -> DST


def _release_weights(path: str) -> "Dict[str, torch.Tensor]":
    """The weights in the release's layout and dtypes (fp16 where the release stores fp16)."""
    from .._weights.formats import read_state_dict
    from ..model import build_model

    model = build_model(read_state_dict(path))  # checks keys and shapes; casts like the release
    return dict(model.state_dict())


def _cast(weights: "Dict[str, torch.Tensor]", dtype: str) -> "Dict[str, torch.Tensor]":
    """Every floating-point tensor in `dtype` (a name from DTYPES); the release's dtypes unchanged."""
    if dtype == RELEASE_DTYPES:
        return weights
    import torch

    target = getattr(torch, dtype)
    return {k: v.to(target) if v.is_floating_point() else v for k, v in weights.items()}


def _write_release(weights: "Dict[str, torch.Tensor]", dst: str) -> None:
    from .._weights.safetensors import write_safetensors

    write_safetensors(weights, dst, RELEASE_METADATA)


def _hf_model(weights: "Dict[str, torch.Tensor]") -> "Tuple[Dict[str, Any], Dict[str, torch.Tensor]]":
    """(config.json's content, float32 tensors in transformers' layout); ValueError for a ResNet."""
    import torch

    from .._weights.layouts import hf_config, hf_from_release
    from ..model import CLIPDimensions

    config = hf_config(CLIPDimensions.from_state_dict(weights))
    return config, {k: v.to(torch.float32) for k, v in hf_from_release(weights).items()}


def _write_hf(config: Dict[str, Any], tensors: "Dict[str, torch.Tensor]", dst: str) -> None:
    """The folder `dst`, written whole beside it and swapped into place (Ctrl-C held for the swap)."""
    from .._atomic import replacing_folder
    from .._weights.safetensors import write_safetensors

    with replacing_folder(dst) as scratch:
        write_safetensors(tensors, os.path.join(scratch, HF_WEIGHTS_FILE), {"format": "pt"})
        with open(os.path.join(scratch, HF_CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)
            handle.write("\n")
