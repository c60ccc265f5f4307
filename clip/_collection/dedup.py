"""Near-duplicate groups: rows at least a cosine threshold apart, joined transitively (union-find).

Through an index, each row is a query for its nearest rows; without one, every pair is scored in
blocks (each pair once).
"""

from typing import Any, Dict, List, Optional

import numpy as np

from .reading import Stored

__all__ = ["groups"]

QUERY_BLOCK = 4096  # rows searched at a time
PAIR_BLOCK = 4096  # rows per side of a block of pairs (a 64 MB block of scores)


class _Groups:
    """Union-find over row numbers (only rows that were joined are stored)."""

    def __init__(self) -> None:
        self.parent: Dict[int, int] = {}

    def find(self, row: int) -> int:
        parent = self.parent.setdefault(row, row)
        while parent != self.parent[parent]:
            self.parent[parent] = self.parent[self.parent[parent]]
            parent = self.parent[parent]
        self.parent[row] = parent
        return parent

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        for left, right in zip(a.tolist(), b.tolist()):
            root_a, root_b = self.find(left), self.find(right)
            if root_a != root_b:
                self.parent[max(root_a, root_b)] = min(root_a, root_b)

    def sorted(self) -> List[List[int]]:
        members: Dict[int, List[int]] = {}
        for row in self.parent:
            members.setdefault(self.find(row), []).append(row)
        return sorted((sorted(group) for group in members.values() if len(group) > 1), key=lambda g: g[0])


def groups(
    stored: Stored, index: Optional[Any], threshold: float, neighbours: int, progress: bool
) -> List[List[int]]:
    """The near-duplicate groups of `stored` (see clip.collection.near_duplicates)."""
    from tqdm import tqdm

    found = _Groups()
    with tqdm(total=stored.rows, unit="row", desc="near duplicates", disable=not progress) as bar:
        if index is not None:
            k = min(neighbours + 1, stored.rows)
            for first, block in stored.blocks(chunk=QUERY_BLOCK):
                scores, rows = index.search(block, k)
                selves = np.arange(first, first + len(block))[:, None]
                hit = (scores >= threshold) & (rows != selves)
                found.join(np.broadcast_to(selves, rows.shape)[hit], rows[hit])
                bar.update(len(block))
        else:
            for first, block in stored.blocks(chunk=PAIR_BLOCK):
                for other_first, other in stored.blocks(chunk=PAIR_BLOCK):
                    if other_first < first:
                        continue
                    scores = block @ other.T
                    a, b = np.nonzero(scores >= threshold)
                    keep = (a + first) < (b + other_first)  # each pair once, never a row with itself
                    found.join(a[keep] + first, b[keep] + other_first)
                bar.update(len(block))
    return found.sorted()
