"""`clip convert SRC DST`: write CLIP weights as a release-layout .safetensors file, or with
``--to hf`` as a transformers ``CLIPModel`` directory (config.json + model.safetensors).

SRC is a released model name (looked up on disk like ``clip.load`` does; downloaded only with
``--download``) or any file or directory ``clip.load`` reads (release archive, torch.save state
dict, .safetensors, open_clip, transformers). Nothing from SRC is run, and nothing half-written is
ever left at DST.
"""

import argparse
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Dict, List, Optional

from .common import EXIT_OK, CommandFailure, UsageError, run_command

if TYPE_CHECKING:
    import torch

__all__ = ["main"]

TARGETS = ("safetensors", "hf")
# --dtype's default: the release's own dtypes (fp16 weights, fp32 where the release keeps fp32)
RELEASE_DTYPES = "release"
DTYPES = (RELEASE_DTYPES, "float32", "float16", "bfloat16")
HF_WEIGHTS_FILE = "model.safetensors"
HF_CONFIG_FILE = "config.json"
RELEASE_METADATA = {"format": "pt", "layout": "openai-clip-release"}
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
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    return parser


def main(argv: List[str]) -> int:
    """Run ``clip convert`` with `argv`; return the exit status."""
    return run_command("clip convert", _parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from .._download import DownloadError
    from .._errors import CheckpointError

    if os.path.lexists(args.dst) and not args.force:
        raise UsageError(f"{args.dst} exists; pass --force to replace it")
    if args.to == "hf" and args.dtype not in (RELEASE_DTYPES, "float32"):
        raise UsageError(
            f"--to hf writes float32 weights; --dtype {args.dtype} applies to .safetensors output"
        )
    try:
        source = _source_path(args.src, args.download_root, args.download)
        weights = _release_weights(source)
        if args.to == "hf":
            _write_hf(weights, args.dst)
        else:
            _write_release(_cast(weights, args.dtype), args.dst)
    except (CheckpointError, DownloadError, ValueError, OSError) as exc:
        raise CommandFailure(f"cannot convert {args.src!r}: {exc}") from exc
    kind = "a transformers CLIPModel directory" if args.to == "hf" else "release-layout .safetensors"
    print(f"wrote {args.dst} ({kind})")
    return EXIT_OK


def _source_path(src: str, download_root: Optional[str], download: bool) -> str:
    from .._download import default_cache_dir
    from .._sources import fetch_weights, find_on_disk
    from ..clip import _MODELS, _hub_files

    if src not in _MODELS:
        if not os.path.exists(src):
            raise UsageError(
                f"{src} is neither a released model ({', '.join(_MODELS)}) nor a file or directory"
            )
        return src
    root = download_root or default_cache_dir()
    if download:
        return fetch_weights(src, _MODELS[src], _hub_files(src), root).path
    located = find_on_disk(_MODELS[src], _hub_files(src), root)
    if located is None:
        raise UsageError(
            f"the weights of {src} are not on disk (cache directory {root}, or the Hugging Face cache); "
            "add --download to fetch them"
        )
    return located.path


def _release_weights(path: str) -> "Dict[str, torch.Tensor]":
    """The weights in the release's layout and dtypes (fp16 where the release stores fp16)."""
    from .._formats import read_state_dict
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
    from .._safetensors import write_safetensors

    write_safetensors(weights, dst, RELEASE_METADATA)


def _write_hf(weights: "Dict[str, torch.Tensor]", dst: str) -> None:
    import torch

    from .._layouts import hf_config, hf_from_release
    from .._safetensors import write_safetensors
    from ..model import CLIPDimensions

    dims = CLIPDimensions.from_state_dict(weights)
    config = hf_config(dims)  # ValueError for ResNet models, before anything is written
    tensors = {k: v.to(torch.float32) for k, v in hf_from_release(weights).items()}
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.", dir=parent)
    try:
        write_safetensors(tensors, os.path.join(scratch, HF_WEIGHTS_FILE), {"format": "pt"})
        with open(os.path.join(scratch, HF_CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)
            handle.write("\n")
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        elif os.path.lexists(dst):
            os.remove(dst)
        os.replace(scratch, dst)  # the complete directory appears at once
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
