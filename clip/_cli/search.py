"""`clip search OUT "query text"` / `clip search OUT --image FILE`: the closest images of a collection.

Cosine similarity over the image features of a collection (clip.collection.open), with the model
recorded in OUT's manifest, or --model: either must be the weights the collection was embedded with,
checked by SHA256 (a manifest made before clip recorded it: --model gets a warning). The faiss index
that `clip index` built is used when present (refused when the collection changed since), every row
scanned when there is none or with --exact. -k above the collection's size is clamped to it. Paths
are printed as the collection holds them (absolute), byte for byte.
"""

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from .common import EXIT_OK

if TYPE_CHECKING:
    from ..collection import Collection

DEFAULT_K = 10
EPILOG = """\
examples:
  clip embed photos/ -o photos.clip              first, embed the collection (once)
  clip search photos.clip "a dog on a beach" -k 5
  clip search photos.clip --image query.jpg
  clip index photos.clip && clip search photos.clip "a dog"     with an approximate index (faiss)
  clip search photos.clip "a dog" --exact                        every row scored, index or not
"""


def _parser() -> argparse.ArgumentParser:
    from .common import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="clip search",
        description="Print the k images of an embedded collection most similar to a text or an image "
        "(cosine similarity; through the index of clip index when there is one), best first: score, "
        "then path.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", metavar="OUT", help="the output folder of clip embed")
    parser.add_argument("query", nargs="?", default=None, help="the text to search for")
    parser.add_argument(
        "--image", metavar="FILE", default=None, help="search with an image instead of a text"
    )
    parser.add_argument(
        "-k",
        type=int,
        default=DEFAULT_K,
        help=f"how many results (default: {DEFAULT_K}; at most the collection's size)",
    )
    parser.add_argument(
        "--exact", action="store_true", help="score every row, even when the collection has an index"
    )
    add_model_arguments(parser, None)
    return parser


def main(argv: List[str]) -> int:
    """Run `clip search` with `argv`; return the exit status."""
    from .common import run_command

    return run_command("clip search", _parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from .collection import CollectionError, library_errors

    with library_errors():
        try:
            return _search(args)
        except ImportError as exc:  # an index, and no faiss: the message names the extra
            raise CollectionError(f"{exc}; or search every row with --exact") from exc


def _search(args: argparse.Namespace) -> int:
    import torch

    from .. import collection as collections
    from ..clip import tokenize
    from .collection import CollectionError
    from .common import load_model, open_image, print_line, shorten

    if args.k < 1:
        raise CollectionError(f"-k must be at least 1, got {args.k}")
    if (args.query is None) == (args.image is None):
        raise CollectionError("pass either a query text or --image FILE (one of them)")
    if args.query is not None and not args.query.strip():
        raise CollectionError("the query is empty; give some text to search for")
    tokens = None
    if args.query is not None:
        try:
            tokens = tokenize([args.query])
        except RuntimeError as exc:
            raise CollectionError(
                f"the query {shorten(args.query)} is too long for the model's context; shorten it"
            ) from exc
    image = open_image(Path(args.image)) if args.image is not None else None
    out = Path(args.out)
    found = collections.open(out)
    if not len(found):
        raise CollectionError(f"{out}: the collection is empty (no image could be read)")
    if found.model is None and args.model is None:
        raise CollectionError(
            f"{out} records no model (written by from_arrays without one): pass --model, the model its "
            "features were computed with"
        )
    found.check_index(args.exact)  # a stale index is refused before the model is loaded
    model, preprocess = load_model(
        _model_of(out, found, args.model), args.device, args.download_root, args.download
    )
    device = next(model.parameters()).device
    with torch.no_grad():
        if image is not None:
            query = model.encode_image(preprocess(image).unsqueeze(0).to(device))
        else:
            query = model.encode_text(tokens.to(device))
    query = query.float()[0]
    query = (query / query.norm()).cpu().numpy()
    if found.dim != query.shape[0]:
        raise CollectionError(
            f"{out} holds {found.dim}-dimensional features of {found.model!r}, the model gives "
            f"{query.shape[0]}: search with the model the collection was embedded with"
        )
    scores, rows = found.search(query[None], k=args.k, exact=args.exact)
    for score, path in zip(scores[0].tolist(), found.paths(rows[0])):
        print_line(f"{score:.4f}\t{path}")
    return EXIT_OK


def _model_of(out: Path, found: "Collection", given: Optional[str]) -> str:
    """The model to search `out` with: --model, else the manifest's; refused when its weights are not
    those the collection was embedded with (compared by SHA256: scores against another model's
    features mean nothing, even at the same width). A manifest of format 1 records no SHA256: a
    --model other than its model is then used with a warning."""
    from .collection import CollectionError, model_name, model_sha256, short_digest
    from .common import shorten

    recorded, digest = found.model, found.model_sha256
    model = recorded if given is None else given
    if recorded is None:
        return model
    if digest is None:
        if given is not None and model_name(given) != model_name(recorded):
            print(
                f"clip search: warning: {out} was embedded by an older clip that did not record the SHA256 "
                f"of its model {recorded!r}, so whether --model {shorten(given)} is the same model cannot "
                "be checked; the scores mean nothing if it is not",
                file=sys.stderr,
            )
        return model
    actual = model_sha256(model)
    if actual is None or actual == digest:
        return model  # None: no such model; loading it says so
    if given is None or model_name(given) == recorded:
        raise CollectionError(
            f"{out} was embedded with {recorded} as it was then ({short_digest(digest)}); that file has "
            f"changed since ({short_digest(actual)}), and its scores against the stored features would "
            "mean nothing. Put the original file back, or embed the collection again"
        )
    raise CollectionError(
        f"--model {shorten(given)} is not the model {out} was embedded with ({recorded!r}, "
        f"{short_digest(digest)}; this one: {short_digest(actual)}): its scores against the stored "
        "features would mean nothing. Search without --model, or embed the collection again with this model"
    )
