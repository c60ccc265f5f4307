"""`clip index OUT`: a faiss index for an embedded collection, tuned against exact search.

Builds the index with clip.collection.build_index (see clip/_collection/index.py), upgrading a
format 1 or 2 collection to format 3 first, and prints what it built: kind, search parameters, the
recall@10 measured on held-out text-like and image queries, size and time. `clip search` then uses
it; rebuilding replaces it whole.
"""

import argparse
from typing import List

from .common import EXIT_OK

EPILOG = """\
examples:
  clip index photos.clip                      auto: exact below 100,000 rows, an IVF index above
  clip index laion.clip --max-memory 4G       product-quantised (ivfpq) if float16 rows do not fit
  clip index photos.clip --kind hnsw          a graph index
  clip search photos.clip "a dog on a beach"  uses the index (--exact: scan every row)

Needs faiss: pip install "clip-faithful[index]".
"""


def _parser() -> argparse.ArgumentParser:
    from .._collection.index import KINDS

    parser = argparse.ArgumentParser(
        prog="clip index",
        description="Build a faiss index for the collection in OUT, tuned so that recall@10 against "
        "exact search reaches --target-recall on held-out text-like and image queries.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", metavar="OUT", help="the output folder of clip embed")
    parser.add_argument("--kind", choices=KINDS, default="auto", help="the index kind (default: auto)")
    parser.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="memory the index may hold, e.g. 4G (default: no limit)",
    )
    parser.add_argument(
        "--target-recall", type=float, default=0.95, help="recall@10 to tune for (default: 0.95)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: List[str]) -> int:
    """Run `clip index` with `argv`; return the exit status."""
    from .common import run_command

    return run_command("clip index", _parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import collection as collections
    from .collection import CollectionError, library_errors
    from .common import print_line

    try:
        with library_errors():
            info = collections.build_index(
                Path(args.out),
                kind=args.kind,
                max_memory=args.max_memory,
                target_recall=args.target_recall,
                progress=not args.no_progress,
            )
    except (ValueError, ImportError) as exc:
        raise CollectionError(str(exc)) from exc
    params = ", ".join(f"{key}={value}" for key, value in info["params"].items()) or "exact"
    recalls = ", ".join(f"{name} queries {value:.3f}" for name, value in info["recall_at_10"].items())
    print_line(
        f"clip index: {info['kind']} index of {info['rows']} rows x {info['dim']} in {args.out} "
        f"({info['bytes'] / 2**20:.1f} MiB, {info['seconds']:.1f} s); search with {params}; "
        f"recall@10 against exact search: {recalls} (text-like: {info['text_queries']})"
    )
    if min(info["recall_at_10"].values()) < info["target_recall"]:
        print_line(
            f"clip index: warning: the target recall@10 {info['target_recall']} was not reached; searches "
            "miss more; try another --kind, or search with --exact"
        )
    return EXIT_OK
