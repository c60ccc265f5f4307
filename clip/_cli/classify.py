"""`clip classify IMAGE... --classes imagenet|cifar10|cifar100|FILE`: zero-shot top-k classes.

The classifier is `clip.zeroshot.build_classifier` over the classes and the templates (the data
set's own, or --templates FILE); each image gets the softmax of `clip.zeroshot.predict`'s logits
(100 x cosine), and its k most likely classes are printed.
"""

import argparse
from pathlib import Path
from typing import List, Optional, Tuple

from .common import EXIT_OK

DEFAULT_K = 5
DEFAULT_MODEL = "ViT-B/32"
PERCENT = 100.0
# --classes NAME -> (class names, default templates): attributes of clip.zeroshot
BUILT_IN = {
    "imagenet": ("IMAGENET_CLASSES", "IMAGENET_TEMPLATES"),
    "cifar10": ("CIFAR10_CLASSES", "CIFAR_TEMPLATES"),
    "cifar100": ("CIFAR100_CLASSES", "CIFAR_TEMPLATES"),
}
EPILOG = """\
FILE: a UTF-8 text file, one class name (or template, with {} for the name) per line.
Default templates: ImageNet's 80 for imagenet and for a FILE of classes, the 18 CIFAR templates
for cifar10 / cifar100.

examples:
  clip classify cat.jpg --classes imagenet -k 3
  clip classify photos/*.png --classes my_classes.txt --templates my_templates.txt --device cuda
"""


def _parser() -> argparse.ArgumentParser:
    from .common import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="clip classify",
        description="Zero-shot classification with prompt ensembles: print each image's k most likely "
        "classes and their probabilities.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--classes",
        required=True,
        metavar="NAME|FILE",
        help="imagenet, cifar10, cifar100, or a file of class names",
    )
    parser.add_argument("--templates", default=None, metavar="FILE", help="a file of prompt templates")
    parser.add_argument(
        "-k", type=int, default=DEFAULT_K, help=f"classes shown per image (default: {DEFAULT_K})"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="texts per encode_text call")
    add_model_arguments(parser, DEFAULT_MODEL)
    return parser


def main(argv: List[str]) -> int:
    """Run `clip classify` with `argv`; return the exit status."""
    from .common import run_command

    return run_command("clip classify", _parser(), _run, argv)


def _lines(path: str, what: str) -> List[str]:
    from .collection import CollectionError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CollectionError(f"cannot read the {what} file {path}: {exc}") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise CollectionError(f"the {what} file {path} is empty: put one per line")
    return lines


def _prompts(classes: str, templates: str) -> Tuple[List[str], List[str]]:
    from .. import zeroshot
    from .collection import CollectionError
    from .common import shorten

    if classes in BUILT_IN:
        names_attr, templates_attr = BUILT_IN[classes]
        names, default_templates = getattr(zeroshot, names_attr), getattr(zeroshot, templates_attr)
    elif Path(classes).is_file():
        names, default_templates = _lines(classes, "classes"), zeroshot.IMAGENET_TEMPLATES
    else:
        raise CollectionError(
            f"--classes {shorten(classes)}: neither {', '.join(BUILT_IN)} nor a file of class names"
        )
    chosen = _lines(templates, "templates") if templates is not None else list(default_templates)
    for template in chosen:
        try:
            template.format("name")
            fillable = template.count("{}") == 1
        except (IndexError, KeyError, ValueError):
            fillable = False
        if not fillable:
            raise CollectionError(
                f"template {shorten(template)} must hold one {{}} where the class name goes (and write a "
                "literal brace as {{ or }})"
            )
    return list(names), chosen


def _too_long(names: List[str], templates: List[str]) -> Optional[Tuple[str, str]]:
    """The first (class name, template) whose prompt `clip.tokenize` refuses as too long, or None."""
    from ..clip import tokenize

    for name in names:
        for template in templates:
            try:
                tokenize([template.format(name)])
            except RuntimeError:
                return name, template
    return None


def _run(args: argparse.Namespace) -> int:
    import torch

    from .. import zeroshot
    from .collection import CollectionError
    from .common import load_model, open_image, print_line, shorten

    if args.k < 1:
        raise CollectionError(f"-k must be at least 1, got {args.k}")
    if args.batch_size < 1:
        raise CollectionError(f"--batch-size must be at least 1, got {args.batch_size}")
    names, templates = _prompts(args.classes, args.templates)
    k = min(args.k, len(names))
    images = [open_image(Path(path)) for path in args.images]  # before loading: fail fast on a typo
    model, preprocess = load_model(args.model, args.device, args.download_root, args.download)
    try:
        classifier = zeroshot.build_classifier(model, names, templates, batch_size=args.batch_size)
    except RuntimeError as exc:  # a prompt too long for the context, or the model failed
        culprit = _too_long(names, templates)
        if culprit is None:
            raise
        raise CollectionError(
            f"the prompt of class {shorten(culprit[0])} with template {shorten(culprit[1])} is too long "
            "for the model's context; shorten the class name or the template"
        ) from exc
    pixels = torch.stack([preprocess(image) for image in images])
    probs = zeroshot.predict(model, pixels, classifier).softmax(dim=-1).cpu()
    width = max(len(name) for name in names)
    for path, row in zip(args.images, probs):
        values, indices = row.topk(k)
        print_line(f"\n{path}")
        for value, index in zip(values.tolist(), indices.tolist()):
            print(f"  {names[index]:<{width}}  {PERCENT * value:6.2f}%")
    return EXIT_OK
