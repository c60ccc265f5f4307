"""Command line: zero-shot label probabilities for images, the README's example by default.

    python -m clip                                   # CLIP.png vs "a diagram", "a dog", "a cat"
    clip photo.jpg --labels "a dog" "a cat"          # the `clip` console script does the same
    clip photo.jpg --model path/to/checkpoint.pt     # any checkpoint `clip.load` accepts

Released weights are read from the cache (``--download-root``, else ``$CLIP_CACHE_DIR``, else
``~/.cache/clip``) and are downloaded only when asked (``--download`` or ``CLIP_ALLOW_DOWNLOAD=1``):
offline, a missing file is reported at once instead of after a network timeout.
"""

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, TextIO

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["main"]

DEFAULT_MODEL = "ViT-B/32"
DEFAULT_LABELS = ("a diagram", "a dog", "a cat")  # the README's example
EXAMPLE_IMAGE = Path(__file__).resolve().parent / "CLIP.png"  # package data: works after `pip install .`
ALLOW_DOWNLOAD_ENV = "CLIP_ALLOW_DOWNLOAD"
ALLOW_DOWNLOAD_VALUE = "1"

EXIT_OK = 0
EXIT_FAILURE = 1  # the model could not be loaded or run (bad checkpoint, download failed, no such device)
EXIT_USAGE = 2  # bad arguments or missing inputs: an image or the weights are not there (argparse uses 2 too)

PERCENT = 100.0

EPILOG = f"""\
weights:
  A released model name (see --list-models) is looked up in the cache directory: --download-root,
  else $CLIP_CACHE_DIR, else ~/.cache/clip. The file is downloaded (and its SHA256 checked) only
  with --download or {ALLOW_DOWNLOAD_ENV}={ALLOW_DOWNLOAD_VALUE}; otherwise a missing file is
  reported with its download URL and where to put it. A cached file is always checked against
  its SHA256. A copy of the same model in the Hugging Face cache (open_clip's or transformers')
  is used too (see CLIP_WEIGHTS_SOURCE in the README). --model also takes the path of a
  checkpoint file or model directory in any format clip.load reads, which is never downloaded.
  `clip convert SRC DST` writes a model as .safetensors or (--to hf) a transformers directory.

exit status:
  {EXIT_OK}  the probabilities were printed
  {EXIT_FAILURE}  the model could not be loaded or run (bad checkpoint, failed download, device)
  {EXIT_USAGE}  bad arguments, an image that cannot be read, or weights missing from the cache

example:
  clip                        the README's example (CLIP.png, "a diagram", "a dog", "a cat")
  clip cat.jpg dog.png --labels "a photo of a cat" "a photo of a dog" --device cuda
"""


class _UsageError(Exception):
    """Bad input the user can fix; reported as one message with exit status EXIT_USAGE."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip",
        description=(
            "Zero-shot classification with CLIP: print, for each image, the probability of each "
            "label (softmax over the labels of the model's logits_per_image), as in the README."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files (default: the README's CLIP.png, shipped with the package)",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        default=list(DEFAULT_LABELS),
        metavar="TEXT",
        help='candidate texts (default: "a diagram" "a dog" "a cat")',
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a released model name or the path of a checkpoint file (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--device",
        default=None,
        help='"cpu", "cuda", "cuda:1", ... (default: "cuda" if available, else "cpu")',
    )
    parser.add_argument(
        "--download-root",
        default=None,
        metavar="DIR",
        help="directory of cached released weights (default: $CLIP_CACHE_DIR, else ~/.cache/clip)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help=f"download released weights missing from the cache (also: {ALLOW_DOWNLOAD_ENV}=1)",
    )
    parser.add_argument(
        "--jit", action="store_true", help="run the checkpoint's TorchScript graphs (trusted files only)"
    )
    parser.add_argument("--list-models", action="store_true", help="print the released model names and exit")
    return parser


# Subcommands: `clip NAME ...` runs `main(argv)` of the module named here (imported only when used).
# Any other first argument is the default job's (images and labels). A file whose name equals a
# subcommand is reached as ``./NAME``.
SUBCOMMANDS: Dict[str, str] = {
    "classify": "clip._cli_classify",
    "embed": "clip._cli_embed",
    "search": "clip._cli_search",
    "convert": "clip._cli_convert",
    "train": "clip._cli_train",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]])
        return module.main(argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    from .clip import available_models

    if args.list_models:
        print("\n".join(available_models()))
        return EXIT_OK
    try:
        return _run(args, sys.stdout)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE


def _error(message: str, stream: Optional[TextIO] = None) -> None:
    print(f"clip: error: {message}", file=stream or sys.stderr)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    import torch

    from ._checkpoint import CheckpointError
    from ._download import DownloadError, default_cache_dir
    from .clip import load, tokenize

    image_paths = [Path(p) for p in args.images] or [EXAMPLE_IMAGE]
    images = [_open_image(path) for path in image_paths]  # before loading: fail fast on a typo
    root = args.download_root or default_cache_dir()
    allow_download = args.download or os.environ.get(ALLOW_DOWNLOAD_ENV) == ALLOW_DOWNLOAD_VALUE
    try:
        checkpoint = _checkpoint_to_load(args.model, root, allow_download)
    except DownloadError as exc:  # the cached file cannot be read
        _error(str(exc))
        return EXIT_FAILURE
    try:
        tokens = tokenize(args.labels)
    except RuntimeError as exc:  # a label longer than the context
        raise _UsageError(f"{exc}; shorten the label") from exc
    try:
        model, preprocess = load(checkpoint, device=args.device, jit=args.jit, download_root=root)
    except (CheckpointError, DownloadError, RuntimeError, ValueError) as exc:
        _error(f"cannot load {args.model!r}: {exc}")
        return EXIT_FAILURE

    device = next(model.parameters()).device
    with torch.no_grad():
        pixels = torch.stack([preprocess(image) for image in images]).to(device)  # [N, 3, R, R]
        logits_per_image, _ = model(pixels, tokens.to(device))  # [N, len(labels)]
        probs = logits_per_image.float().softmax(dim=-1).cpu().numpy()

    print("Label probs:", probs, file=out)
    _print_table(out, [str(p) for p in image_paths], args.labels, probs)
    return EXIT_OK


def _open_image(path: Path) -> "Image.Image":
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise _UsageError(f"image not found: {path}")
    if path.is_dir():
        raise _UsageError(f"{path} is a directory; pass image files")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise _UsageError(f"cannot read {path} as an image: {exc}") from exc


def _checkpoint_to_load(model: str, root: str, allow_download: bool) -> str:
    """What to pass to `clip.load`: the name (download allowed), the verified cached file, or a path.

    Without permission to download, nothing here touches the network: a released model must already
    be on disk (the release file in `root` with the right SHA256, or a hub copy `clip.load` would
    find: see clip/_sources.py), or a _UsageError says how to provide it.
    """
    from ._hub import hf_cache_dir
    from ._sources import find_on_disk
    from .clip import _MODELS, _hub_files, available_models

    if model in _MODELS:
        if allow_download:
            return model
        url = _MODELS[model]
        target = os.path.join(root, os.path.basename(url))
        how = (
            f"To provide it, do one of:\n"
            f"  - download it now: add --download (or set {ALLOW_DOWNLOAD_ENV}={ALLOW_DOWNLOAD_VALUE})\n"
            f"  - download {url}\n"
            f"    and save it as {target}\n"
            f"  - use another cache directory that holds it: --download-root DIR or CLIP_CACHE_DIR=DIR\n"
            f"  - pass a checkpoint file instead: --model path/to/checkpoint.pt"
        )
        try:
            located = find_on_disk(url, _hub_files(model), root)
        except ValueError as exc:  # CLIP_WEIGHTS_SOURCE set to something else than auto/release/hub
            raise _UsageError(str(exc)) from exc
        if located is not None:
            if not located.is_release_file:
                print(f"clip: using {located.source} ({located.path})", file=sys.stderr)
            return located.path
        if not os.path.isfile(target):
            raise _UsageError(
                f"the weights of {model} are not in the cache: {target} does not exist "
                f"(cache directory: {root}; no hub copy there or in the Hugging Face cache "
                f"{hf_cache_dir()} either).\n{how}"
            )
        raise _UsageError(
            f"{target} exists but its SHA256 does not match the release (an incomplete or "
            f"damaged download?). Delete it, then:\n{how}"
        )
    if os.path.isfile(model):
        return model
    if os.path.isdir(model):
        from ._formats import DIRECTORY_WEIGHT_FILES

        if any(os.path.isfile(os.path.join(model, name)) for name in DIRECTORY_WEIGHT_FILES):
            return model  # a transformers model directory, or a folder of a hub copy
        raise _UsageError(
            f"--model {model}: is a directory without model weights ({', '.join(DIRECTORY_WEIGHT_FILES)}); "
            "pass a checkpoint file inside it"
        )
    raise _UsageError(
        f"--model {model}: neither a released model ({', '.join(available_models())}) nor an "
        "existing checkpoint file"
    )


def _print_table(out: TextIO, names: List[str], labels: Sequence[str], probs: "np.ndarray") -> None:
    width = max(len(label) for label in labels)
    for name, row in zip(names, probs):
        print(f"\n{name}", file=out)
        for label, p in zip(labels, row):
            print(f"  {label:<{width}}  {PERCENT * float(p):6.2f}%", file=out)


if __name__ == "__main__":
    sys.exit(main())
