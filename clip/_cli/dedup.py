"""`clip dedup OUT --threshold 0.95`: groups of near-identical items of an embedded collection.

Prints one line per member of each group (group number, cosine to the group's first member, path),
groups in order of their first row, and a summary on stderr. Uses the collection's index when it has
one (clip index), else compares every pair (clip.collection.near_duplicates).
"""

import argparse
import sys
from typing import List

from .common import EXIT_OK

EPILOG = """\
examples:
  clip dedup photos.clip                       cosine >= 0.95 (near-identical images)
  clip dedup laion.clip --threshold 0.98 > duplicates.tsv
  clip index laion.clip && clip dedup laion.clip    through the index (large collections)

output: group<TAB>score<TAB>path, the first member of each group (score 1.0000) being the one to keep.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip dedup",
        description="List groups of near-identical items (cosine similarity >= --threshold, joined "
        "transitively) of the collection in OUT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", metavar="OUT", help="the output folder of clip embed")
    parser.add_argument(
        "--threshold", type=float, default=0.95, help="cosine similarity that counts as near-identical (0.95)"
    )
    parser.add_argument(
        "--neighbours", type=int, default=16, help="rows compared per row through the index (default: 16)"
    )
    parser.add_argument("--exact", action="store_true", help="compare every pair, even with an index")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: List[str]) -> int:
    """Run `clip dedup` with `argv`; return the exit status."""
    from .common import run_command

    return run_command("clip dedup", _parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from .. import collection as collections
    from .collection import CollectionError, library_errors
    from .common import print_line

    try:
        with library_errors():
            found = collections.open(args.out)
            groups = collections.near_duplicates(
                found,
                args.threshold,
                exact=args.exact,
                neighbours=args.neighbours,
                progress=not args.no_progress,
            )
            for number, group in enumerate(groups):
                scores = found.features(group) @ found.features(group[0])
                for score, path in zip(scores.tolist(), found.paths(group)):
                    print_line(f"{number}\t{score:.4f}\t{path}")
    except (ValueError, ImportError) as exc:
        raise CollectionError(str(exc)) from exc
    extra = sum(len(group) - 1 for group in groups)
    print(
        f"clip dedup: {len(groups)} groups of near-identical items (cosine >= {args.threshold}) in "
        f"{len(found)}; keeping the first of each drops {extra}",
        file=sys.stderr,
    )
    return EXIT_OK
