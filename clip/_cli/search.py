"""`clip search OUT "query text"` / `clip search OUT --image FILE`: the closest images of a collection.

Exact cosine similarity over every row of the memory-mapped image shards that `clip embed` wrote,
with the model recorded in OUT's manifest (unless --model names another checkpoint file of it).
"""

import argparse
from pathlib import Path
from typing import List

from .common import EXIT_OK

DEFAULT_K = 10
EPILOG = """\
examples:
  clip embed photos/ -o photos.clip              first, embed the collection (once)
  clip search photos.clip "a dog on a beach" -k 5
  clip search photos.clip --image query.jpg
"""


def _parser() -> argparse.ArgumentParser:
    from .common import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="clip search",
        description="Print the k images of an embedded collection most similar to a text or an image "
        "(cosine similarity, exact), best first: score, then path.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", metavar="OUT", help="the output folder of clip embed")
    parser.add_argument("query", nargs="?", default=None, help="the text to search for")
    parser.add_argument(
        "--image", metavar="FILE", default=None, help="search with an image instead of a text"
    )
    parser.add_argument("-k", type=int, default=DEFAULT_K, help=f"how many results (default: {DEFAULT_K})")
    add_model_arguments(parser, None)
    return parser


def main(argv: List[str]) -> int:
    """Run `clip search` with `argv`; return the exit status."""
    from .common import run_command

    return run_command("clip search", _parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..clip import tokenize
    from .collection import CollectionError, read_manifest, top_k
    from .common import load_model, open_image

    if args.k < 1:
        raise CollectionError(f"-k must be at least 1, got {args.k}")
    if (args.query is None) == (args.image is None):
        raise CollectionError("pass either a query text or --image FILE (one of them)")
    image = open_image(Path(args.image)) if args.image is not None else None
    out = Path(args.out)
    manifest = read_manifest(out)
    if not manifest["items"]:
        raise CollectionError(f"{out}: the collection is empty (no image could be read)")
    model, preprocess = load_model(
        args.model or manifest["model"], args.device, args.download_root, args.download
    )
    device = next(model.parameters()).device
    with torch.no_grad():
        if image is not None:
            query = model.encode_image(preprocess(image).unsqueeze(0).to(device))
        else:
            try:
                query = model.encode_text(tokenize([args.query]).to(device))
            except RuntimeError as exc:  # too long for the context
                raise CollectionError(f"{exc}; shorten the query") from exc
    query = query.float()[0]
    query = (query / query.norm()).cpu().numpy()
    stored_dim = _stored_dim(out, manifest)
    if stored_dim != query.shape[0]:
        raise CollectionError(
            f"{out} holds {stored_dim}-dimensional features of {manifest['model']!r}, the model gives "
            f"{query.shape[0]}: search with the model the collection was embedded with"
        )
    for score, index in top_k(out, manifest, query, args.k):
        print(f"{score:.4f}\t{manifest['items'][index]['path']}")
    return EXIT_OK


def _stored_dim(out: Path, manifest: dict) -> int:
    import numpy as np

    for shard in manifest["shards"]:
        if shard["rows"]:
            return int(np.load(out / shard["images"], mmap_mode="r").shape[1])
    return 0
