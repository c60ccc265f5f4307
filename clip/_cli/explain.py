"""`clip explain IMAGE --labels TEXT... [-o OUT.png]`: where the model looks, as one picture.

The figure (Pillow only) shows the part of the image the model sees, then one relevance overlay per
label with the label's probability (the softmax over the labels of logits_per_image), and under each
overlay the label's tokens shaded by their relevance (`clip.explain.figure`). Relevance:
`clip.explain.relevance` (attention rollout for ViT towers, Grad-CAM for ResNet towers).
"""

import argparse
from pathlib import Path
from typing import Any, List

from .common import EXIT_OK

DEFAULT_MODEL = "ViT-B/32"
PERCENT = 100.0
EPILOG = """\
The picture is written to OUT (default: IMAGE's name with -explain.png, in the working folder); its
format follows OUT's suffix (.png, .jpg, .webp, ...). Relevance maps are min-max normalised per label:
compare where each label looks, not how strongly.

examples:
  clip explain CLIP.png --labels "a diagram" "a dog" -o diagram.png
  clip explain cat.jpg --labels "a cat" "a sofa" --start-layer 6 --model ViT-B/16
"""


def _parser() -> argparse.ArgumentParser:
    from .common import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="clip explain",
        description="Draw where the model looks in IMAGE for each label (relevance heatmaps), with the "
        "labels' probabilities and their tokens shaded by relevance.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", help="an image file")
    parser.add_argument("--labels", nargs="+", required=True, metavar="TEXT", help="texts to explain")
    parser.add_argument("-o", "--output", default=None, metavar="OUT", help="the picture to write")
    parser.add_argument(
        "--start-layer",
        type=int,
        default=None,
        metavar="N",
        help="first image block of the rollout, 0-based (default: the last; ViT models only)",
    )
    parser.add_argument(
        "--start-layer-text",
        type=int,
        default=None,
        metavar="N",
        help="first text block of the rollout, 0-based (default: the last)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="heatmap opacity over the image, 0 to 1 (default: 0.5)"
    )
    add_model_arguments(parser, DEFAULT_MODEL)
    return parser


def main(argv: List[str]) -> int:
    """Run `clip explain` with `argv`; return the exit status."""
    from .common import run_command

    return run_command("clip explain", _parser(), _run, argv)


def _output_path(args: argparse.Namespace) -> Path:
    from PIL import Image

    from .common import UsageError

    output = Path(args.output) if args.output is not None else Path(f"{Path(args.image).stem}-explain.png")
    if output.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"-o {output}: give a picture file name ending in .png, .jpg or .webp")
    if output.is_dir():
        raise UsageError(f"-o {output} is a directory; give a file name such as {output / 'explain.png'}")
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: the folder {output.parent} does not exist")
    return output


def _check_start_layers(model: Any, args: argparse.Namespace) -> None:
    """--start-layer and --start-layer-text within the model's towers, or a UsageError."""
    from .. import explain
    from .common import UsageError

    towers = [("--start-layer-text", args.start_layer_text, "text", len(model.transformer.resblocks))]
    if hasattr(model.visual, "transformer"):
        towers.append(("--start-layer", args.start_layer, "image", len(model.visual.transformer.resblocks)))
    elif args.start_layer is not None:
        raise UsageError(
            "--start-layer applies to ViT models; this model's image tower is a ResNet (Grad-CAM)"
        )
    for flag, value, tower, layers in towers:
        try:
            explain._start_index(value, layers, flag, tower)
        except ValueError as exc:
            message = str(exc).replace(f"{flag}=", f"{flag} ")
            raise UsageError(message.replace("or None for", "or leave the option out for")) from exc


def _run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from .. import explain
    from .._atomic import replacing
    from ..clip import tokenize
    from .common import UsageError, load_model, nonempty_texts, open_image, print_line, shorten

    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must lie between 0 and 1, got {args.alpha}")
    labels = nonempty_texts(args.labels, "label")
    output = _output_path(args)
    image = open_image(Path(args.image))  # before loading: fail fast on a typo
    model, preprocess = load_model(args.model, args.device, args.download_root, args.download)
    try:
        tokens = tokenize(labels, context_length=model.context_length)
    except RuntimeError as exc:  # a label longer than the context
        raise UsageError(f"a label is too long for the model's context: {exc}; shorten it") from exc
    _check_start_layers(model, args)
    device = model.positional_embedding.device
    pixels = preprocess(image).unsqueeze(0).to(device)
    tokens = tokens.to(device)
    with torch.no_grad():
        logits_per_image, _ = model(pixels, tokens)
    probabilities = logits_per_image.float().softmax(dim=-1)[0].cpu().tolist()
    relevances = explain.relevance(
        model,
        pixels.expand(len(labels), -1, -1, -1),
        tokens,
        start_layer=args.start_layer,
        start_layer_text=args.start_layer_text,
    )
    relevances = explain.Relevance(relevances.image.cpu(), relevances.text.cpu())
    picture = explain.figure(image, labels, relevances, probabilities, texts=tokens.cpu(), alpha=args.alpha)
    width = max(len(label) for label in labels)
    for label, probability in zip(labels, probabilities):
        print_line(f"  {label:<{width}}  {PERCENT * probability:6.2f}%")
    image_format = Image.registered_extensions()[output.suffix.lower()]
    with replacing(output) as partial:
        picture.save(partial, format=image_format)
    print_line(f"wrote {output} ({picture.size[0]}x{picture.size[1]}) for {shorten(str(args.image))}")
    return EXIT_OK
