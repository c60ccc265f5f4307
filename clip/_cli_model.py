"""Model options shared by the collection subcommands (classify, embed, search) and loading them."""

import argparse
import os
import sys
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["ModelLoadError", "add_model_arguments", "load_model", "run_subcommand"]

EXIT_FAILURE = 1  # the model could not be loaded or run
EXIT_USAGE = 2  # bad arguments or input the user can fix


class ModelLoadError(Exception):
    """The model could not be loaded or run (exit status 1)."""


def run_subcommand(
    name: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: List[str]
) -> int:
    """Parse `argv` and `run` it; errors the user can fix exit with EXIT_USAGE, a model that cannot be
    loaded or run with EXIT_FAILURE, each with one ``clip NAME: error: ...`` line on stderr."""
    from . import __main__ as cli
    from ._collection import CollectionError

    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return run(args)
    except (CollectionError, cli._UsageError) as exc:
        print(f"clip {name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as exc:
        print(f"clip {name}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


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
