"""Model options shared by the collection subcommands (classify, embed, search) and loading them."""

import argparse
import os
from typing import Any, Callable, Optional, Tuple

__all__ = ["ModelLoadError", "add_model_arguments", "load_model"]


class ModelLoadError(Exception):
    """The model could not be loaded or run (exit status 1)."""


def add_model_arguments(parser: argparse.ArgumentParser, default_model: Optional[str]) -> None:
    shown = default_model or "the model of the embeddings"
    parser.add_argument(
        "--model",
        default=default_model,
        help=f"a released model name or a checkpoint file (default: {shown})",
    )
    parser.add_argument(
        "--device", default=None, help='"cpu", "cuda", "cuda:1", ... (default: cuda if available)'
    )
    parser.add_argument(
        "--download-root",
        default=None,
        metavar="DIR",
        help="directory of cached released weights (default: $CLIP_CACHE_DIR, else ~/.cache/clip)",
    )
    parser.add_argument(
        "--download", action="store_true", help="download released weights missing from the cache"
    )


def load_model(
    model: str, device: Optional[str], download_root: Optional[str], download: bool
) -> Tuple[Any, Callable[..., Any]]:
    """`clip.load` the way the default `clip` job does it: cached weights only, unless downloads are
    allowed. Raises the default job's usage error for missing weights, ModelLoadError otherwise."""
    from . import __main__ as cli
    from ._checkpoint import CheckpointError
    from ._download import DownloadError, default_cache_dir
    from .clip import load

    root = download_root or default_cache_dir()
    allow = download or os.environ.get(cli.ALLOW_DOWNLOAD_ENV) == cli.ALLOW_DOWNLOAD_VALUE
    try:
        checkpoint = cli._checkpoint_to_load(model, root, allow)
        return load(checkpoint, device=device, jit=False, download_root=root)
    except cli._UsageError:
        raise
    except (CheckpointError, DownloadError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {model!r}: {exc}") from exc
