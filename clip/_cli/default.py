"""The default job, `clip [IMAGE...] --labels TEXT...`: zero-shot label probabilities for images,
the README's example when no image is given.

    python -m clip                                   # CLIP.png vs "a diagram", "a dog", "a cat"
    clip photo.jpg --labels "a dog" "a cat"          # the `clip` console script does the same
    clip photo.jpg --model path/to/checkpoint.pt     # any checkpoint `clip.load` accepts

Released weights are read from the cache (``--download-root``, else ``$CLIP_CACHE_DIR``, else
``~/.cache/clip``) and are downloaded only when asked (``--download`` or ``CLIP_ALLOW_DOWNLOAD=1``):
offline, a missing file is reported at once instead of after a network timeout.
"""

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Sequence, TextIO

from .common import (
    ALLOW_DOWNLOAD_ENV,
    ALLOW_DOWNLOAD_VALUE,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    load_model,
    nonempty_texts,
    open_image,
    print_line,
    run_command,
    shorten,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["main", "parser", "DEFAULT_MODEL", "DEFAULT_LABELS", "EXAMPLE_IMAGE"]

PROG = "clip"
DEFAULT_MODEL = "ViT-B/32"
DEFAULT_LABELS = ("a diagram", "a dog", "a cat")  # the README's example
EXAMPLE_IMAGE = (
    Path(__file__).resolve().parent.parent / "CLIP.png"
)  # package data: works after `pip install .`
PERCENT = 100.0

DESCRIPTION = """\
The default job (no COMMAND): zero-shot classification, as in the README. For each image, print the
probability of each label (the softmax over the labels of the model's logits_per_image).
"""

EPILOG = f"""\
weights:
  A released model name (see --list-models) is looked up in the cache directory: --download-root,
  else $CLIP_CACHE_DIR, else ~/.cache/clip. The file is downloaded (and its SHA256 checked) only
  with --download or {ALLOW_DOWNLOAD_ENV}={ALLOW_DOWNLOAD_VALUE}; otherwise a missing file is
  reported with its download URL and where to put it. A cached file is always checked against
  its SHA256. A copy of the same model in the Hugging Face cache (open_clip's or transformers')
  is used too (see CLIP_WEIGHTS_SOURCE in docs/weights.md). --model also takes the path of a
  checkpoint file or model directory in any format clip.load reads, which is never downloaded.

exit status:
  {EXIT_OK}  the probabilities were printed
  {EXIT_FAILURE}  the model could not be loaded or run (bad checkpoint, failed download, device)
  {EXIT_USAGE}  bad arguments, an image that cannot be read, or weights missing from the cache
  130  interrupted (Ctrl-C)

examples:
  clip                        the README's example (CLIP.png, "a diagram", "a dog", "a cat")
  clip cat.jpg dog.png --labels "a photo of a cat" "a photo of a dog" --device cuda
"""


def parser(commands: str = "") -> argparse.ArgumentParser:
    """The default job's parser; `commands` (the subcommand list) opens its description."""
    p = argparse.ArgumentParser(
        prog=PROG,
        usage="%(prog)s [IMAGE ...] [--labels TEXT ...] [options]\n       %(prog)s COMMAND ...",
        description=commands + DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files (default: the README's CLIP.png, shipped with the package)",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=list(DEFAULT_LABELS),
        metavar="TEXT",
        help='candidate texts (default: "a diagram" "a dog" "a cat")',
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a released model name or the path of a checkpoint file (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--device",
        default=None,
        help='"cpu", "cuda", "cuda:1", ... (default: "cuda" if available, else "cpu")',
    )
    p.add_argument(
        "--download-root",
        default=None,
        metavar="DIR",
        help="directory of cached released weights (default: $CLIP_CACHE_DIR, else ~/.cache/clip)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help=f"download released weights missing from the cache (also: {ALLOW_DOWNLOAD_ENV}=1)",
    )
    p.add_argument(
        "--jit", action="store_true", help="run the checkpoint's TorchScript graphs (trusted files only)"
    )
    p.add_argument("--list-models", action="store_true", help="print the released model names and exit")
    return p


def main(argv: Sequence[str], commands: str = "") -> int:
    """Run the default job with `argv`; return the exit status."""
    return run_command(PROG, parser(commands), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from ..clip import available_models

    if args.list_models:
        print("\n".join(available_models()))
        return EXIT_OK
    return classify_images(args, sys.stdout)


def classify_images(args: argparse.Namespace, out: TextIO) -> int:
    """Print the label probabilities of `args.images` (or the example image) to `out`."""
    import torch

    from ..clip import tokenize

    image_paths = [Path(p) for p in args.images] or [EXAMPLE_IMAGE]
    images = [open_image(path) for path in image_paths]  # before loading: fail fast on a typo
    labels = nonempty_texts(args.labels, "label")
    try:
        tokens = tokenize(labels)
    except RuntimeError as exc:  # a label longer than the context
        raise UsageError(
            f"the label {shorten(_too_long(labels))} is too long for the context; shorten it"
        ) from exc
    model, preprocess = load_model(args.model, args.device, args.download_root, args.download, jit=args.jit)
    device = next(model.parameters()).device
    with torch.no_grad():
        pixels = torch.stack([preprocess(image) for image in images]).to(device)  # [N, 3, R, R]
        logits_per_image, _ = model(pixels, tokens.to(device))  # [N, len(labels)]
        probs = logits_per_image.float().softmax(dim=-1).cpu().numpy()

    print("Label probs:", probs, file=out)
    _print_table(out, [str(p) for p in image_paths], labels, probs)
    return EXIT_OK


def _too_long(texts: Sequence[str]) -> str:
    """The first of `texts` that `clip.tokenize` refuses as longer than its context."""
    from ..clip import tokenize

    for text in texts:
        try:
            tokenize([text])
        except RuntimeError:
            return text
    return texts[0]


def _print_table(out: TextIO, names: List[str], labels: Sequence[str], probs: "np.ndarray") -> None:
    width = max(len(label) for label in labels)
    for name, row in zip(names, probs):
        print_line(f"\n{name}", out)
        for label, p in zip(labels, row):
            print(f"  {label:<{width}}  {PERCENT * float(p):6.2f}%", file=out)
