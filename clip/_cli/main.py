"""`clip`'s entry point: the subcommand table, and the default job for anything else.

`clip NAME ...` runs ``main(argv)`` of the subcommand's module (imported only when used); any other
first argument belongs to the default job (images and labels, clip/_cli/default.py). A file whose
name equals a subcommand is reached as ``./NAME``.
"""

import difflib
import importlib
import os
import sys
from typing import Dict, NamedTuple, Optional, Sequence

from . import default
from .common import UsageError, report, shorten

__all__ = ["main", "SUBCOMMANDS"]

SUGGESTION_CUTOFF = 0.6  # difflib's similarity above which a mistyped subcommand is suggested


class Subcommand(NamedTuple):
    module: str
    summary: str  # one line for `clip --help`


SUBCOMMANDS: Dict[str, Subcommand] = {
    "classify": Subcommand("clip._cli.classify", "zero-shot top-k classes (ImageNet, CIFAR, your own)"),
    "embed": Subcommand("clip._cli.embed", "embed a folder or CSV of images into .npy shards"),
    "search": Subcommand("clip._cli.search", "search an embedded collection by text or image"),
    "index": Subcommand("clip._cli.index", "build a faiss index for an embedded collection (tuned recall)"),
    "dedup": Subcommand("clip._cli.dedup", "list groups of near-identical items of an embedded collection"),
    "convert": Subcommand("clip._cli.convert", "write weights as .safetensors or a transformers folder"),
    "train": Subcommand("clip._cli.train", "fine-tune (or train) on a CSV of image-caption pairs"),
    "export": Subcommand("clip._cli.export", "write the image and text encoders as checked ONNX graphs"),
    "serve": Subcommand("clip._cli.serve", "serve classify, embed and search over HTTP, with a search page"),
    "explain": Subcommand("clip._cli.explain", "draw where the model looks for each label (heatmaps)"),
    "score": Subcommand("clip._cli.score", "CLIPScore of image-caption pairs (RefCLIPScore with references)"),
}


def commands_help() -> str:
    """The subcommand list that opens `clip --help`, one line each."""
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in SUBCOMMANDS.items()]
    return "commands (clip COMMAND --help for each):\n" + "\n".join(lines) + "\n\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]].module)
        return module.main(argv[1:])
    if argv:
        try:
            _refuse_mistyped_subcommand(argv[0])
        except UsageError as exc:
            report(default.PROG, str(exc))
            return default.EXIT_USAGE
    return default.main(argv, commands_help())


def _refuse_mistyped_subcommand(word: str) -> None:
    """A first word that is no file and no subcommand but looks like one is not taken as an image."""
    if word.startswith("-") or os.path.lexists(word):
        return
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=SUGGESTION_CUTOFF)
    if close:
        raise UsageError(f"no image or subcommand {shorten(word)}; did you mean {close[0]!r}?")
    if not os.path.splitext(word)[1] and os.sep not in word:  # no suffix: not a path to an image
        raise UsageError(
            f"no image or subcommand {shorten(word)} (subcommands: {', '.join(SUBCOMMANDS)}; "
            "images: a path to an existing file)"
        )
