"""`clip score IMAGE... --captions TEXT... [--references TEXT... ...]`: CLIPScore of image-caption pairs.

Prints CLIP-S (Hessel et al., 2021: ``2.5 * max(cos(image, "A photo depicts " + caption), 0)``) for
each pair (image n, caption n), and RefCLIP-S when reference captions are given (`clip.score`), then
the mean over the pairs.
"""

import argparse
from pathlib import Path
from typing import List

from .common import EXIT_OK

DEFAULT_MODEL = "ViT-B/32"  # the paper's model
EPILOG = """\
Scores are on the paper's scale: CLIP-S from 0 to 2.5, RefCLIP-S from 0 to 1.43 (its tables show
100 x the mean). Libraries that report 100 x cos (torchmetrics) give 40 x CLIP-S for the same text
where the cosine is positive, but they add no "A photo depicts" prefix: see docs/explain.md.

examples:
  clip score cat.jpg dog.jpg --captions "a cat on a sofa" "a dog in the park"
  clip score cat.jpg --captions "a cat" --references "a cat on a sofa" "a sleeping cat"
  clip score a.jpg b.jpg --captions "x" "y" --references "ref of a" --references "ref 1 of b" "ref 2 of b"
"""


def _parser() -> argparse.ArgumentParser:
    from .common import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="clip score",
        description="CLIPScore (and RefCLIPScore with references) of each image with its caption.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--captions", nargs="+", required=True, metavar="TEXT", help="one caption per image, in order"
    )
    parser.add_argument(
        "--references",
        nargs="+",
        action="append",
        default=None,
        metavar="TEXT",
        help="reference captions of one image; give the option once per image, in order",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images or texts per model call")
    add_model_arguments(parser, DEFAULT_MODEL)
    return parser


def main(argv: List[str]) -> int:
    """Run `clip score` with `argv`; return the exit status."""
    from .common import run_command

    return run_command("clip score", _parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    import torch

    from .. import score
    from .common import UsageError, load_model, nonempty_texts, open_image, print_line

    captions = nonempty_texts(args.captions, "caption")
    if len(captions) != len(args.images):
        raise UsageError(f"give one caption per image: {len(args.images)} images, {len(captions)} captions")
    references = args.references
    if references is not None:
        if len(references) != len(args.images):
            raise UsageError(
                f"give --references once per image: {len(args.images)} images, {len(references)} --references"
            )
        references = [nonempty_texts(refs, "reference") for refs in references]
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    images = [open_image(Path(path)) for path in args.images]  # before loading: fail fast on a typo
    model, preprocess = load_model(args.model, args.device, args.download_root, args.download)
    pixels = torch.stack([preprocess(image) for image in images])
    clip_s = score.clip_score(model, pixels, captions, batch_size=args.batch_size)
    columns = [("CLIP-S", clip_s)]
    if references is not None:
        ref_s = score.ref_clip_score(model, pixels, captions, references, batch_size=args.batch_size)
        columns.append(("RefCLIP-S", ref_s))
    print_line("  ".join(f"{name:>9}" for name, _ in columns) + "  image")
    for row, path in enumerate(args.images):
        print_line("  ".join(f"{float(values[row]):9.4f}" for _, values in columns) + f"  {path}")
    if len(args.images) > 1:
        print_line("  ".join(f"{float(values.mean()):9.4f}" for _, values in columns) + "  (mean)")
    return EXIT_OK
