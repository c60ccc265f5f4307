"""The speed engine of `clip.simple_tokenizer`: BPE on integer ids, per-character starts, bounded
caches, and ids packed as int32 bytes. Private; the tokenizer's interface and its proofs of equal
output are described in clip/simple_tokenizer.py.

* `_IdMerges`: the vocabulary's merges restated on ids, and `character_start`, which lets a word
  start from each character merged on its own where that provably gives the same ids;
* `_CacheBound`: keeps a plain dict used as a cache within a number of entries and bytes, oldest
  out first, in O(1) per entry;
* `_pack`: ids as native int32 bytes (`_ID_TYPECODE`, `_ID_BYTES`), so rows are assembled by copying.
"""

import sys
import threading
from array import array
from collections import deque
from itertools import chain
from typing import Any, Deque, Dict, Hashable, List, NamedTuple, Optional, Tuple

__all__ = ["_IdMerges", "_CharacterStart", "_CacheBound", "_pack", "_ID_TYPECODE", "_ID_BYTES"]

_N_BYTES = 256  # one base symbol per byte value
_END_OF_WORD = "</w>"
# The BPE on ids: _NO_MERGE_RANK is above every merge's rank.
_NO_MERGE_RANK = 1 << 30
# Characters -> their bytes merged on their own (`_IdMerges.character_start`), for words and for the
# last character of a word: 2**15 each covers the characters of any one script with room to spare
# (CJK's common ideographs are ~3,500; all of Unicode's letters ~140,000), ~300 bytes an entry, so at
# most ~20 MiB for both.
_CHARACTER_START_ENTRIES = 1 << 15
# What a cached entry costs beyond its key and value (sys.getsizeof of each): the dict's entry and
# index slots (24 + 4 bytes, up to 3x over-allocated right after a resize) and the deque's pointer.
_ENTRY_OVERHEAD_BYTES = 96
# Held while a cache and its eviction order change together, so that concurrent `tokenize` calls
# (threads) keep them consistent. Reads take no lock. Module-level: a tokenizer stays picklable.
_CACHE_STORE_LOCK = threading.Lock()


def _int32_typecode() -> str:
    for code in "ilh":
        if array(code).itemsize == 4:
            return code
    raise RuntimeError("no 4-byte integer type in the array module")  # pragma: no cover


_ID_TYPECODE = _int32_typecode()
_ID_BYTES = 4  # ids are packed as native int32


def _pack(ids: List[int]) -> bytes:
    return array(_ID_TYPECODE, ids).tobytes()


class _IdMerges:
    """The merges of a vocabulary restated on ids, for `SimpleTokenizer._bpe_ids`.

    `symbol_id` / `end_symbol_id`: byte symbol -> id of the symbol / of the symbol + "</w>";
    `rank`: pair of ids (a, b) -> rank of the merge of the strings with ids a and b, as in
    `bpe_ranks`; `merged_id`: rank -> id of the joined string.
    """

    def __init__(
        self, encoder: Dict[str, int], bpe_ranks: Dict[Tuple[str, ...], int], byte_encoder: Dict[int, str]
    ) -> None:
        self.symbol_id = {c: encoder[c] for c in byte_encoder.values()}
        self.end_symbol_id = {c: encoder[c + _END_OF_WORD] for c in byte_encoder.values()}
        self.rank: Dict[Tuple[int, int], int] = {}
        self.merged_id: Dict[int, int] = {}
        for pair, rank in bpe_ranks.items():
            if len(pair) != 2:
                continue  # a malformed line: never a pair of adjacent symbols
            first, second = encoder.get(pair[0]), encoder.get(pair[1])
            if first is None or second is None:
                continue  # not two vocabulary entries: never a pair of adjacent symbols
            self.rank[first, second] = rank
            self.merged_id[rank] = encoder["".join(pair)]
        self.byte_id = [self.symbol_id[byte_encoder[b]] for b in range(_N_BYTES)]
        self.end_byte_id = [self.end_symbol_id[byte_encoder[b]] for b in range(_N_BYTES)]
        # Lowest rank of a merge whose left / right symbol is a given id: built with the first
        # `_CharacterStart` (ASCII text never needs them).
        self._lowest_ranks: Optional[Tuple[Dict[int, int], Dict[int, int]]] = None
        # Character -> its `_CharacterStart` inside a word / as a word's last character.
        self._inner: Dict[str, _CharacterStart] = {}
        self._final: Dict[str, _CharacterStart] = {}
        self._inner_bound = _CacheBound(_CHARACTER_START_ENTRIES)
        self._final_bound = _CacheBound(_CHARACTER_START_ENTRIES)

    def character_start(self, word: str) -> Optional[List[int]]:
        """Symbol ids from which BPE of `word` gives the same result as from its bytes, with each
        multi-byte character already merged as far as it merges on its own; None where that is not
        proven for this word (then BPE starts from the bytes).

        Why it is the same: BPE (repeatedly merge every occurrence of the lowest-ranked adjacent pair)
        is a function of the current list of symbols alone. Let M be the highest rank that any
        character of the word uses merging on its own, and suppose every pair that can meet across two
        neighbouring characters, (a symbol that character i ends with at some point of its own merging,
        one that character i + 1 starts with), ranks above M. Until a merge crosses a character
        boundary, each character's symbols change exactly as they do on their own (a pair merged is
        the lowest-ranked pair present, so also the lowest of its character, and no occurrence of it
        crosses a boundary: crossing pairs rank above M). The first crossing merge ranks above M, so
        when it is taken no character has a merge left: the list is then the characters' own results
        side by side, which is what this returns.
        """
        starts = list(map(self._inner.get, word[:-1]))
        starts.append(self._final.get(word[-1]))
        if None in starts:  # characters not seen before
            last = len(starts) - 1
            starts = [start or self._character(word[i], i == last) for i, start in enumerate(starts)]
        ids, highest_ranks, first_ids, last_ids, lowest_after, lowest_before = zip(*starts)
        highest = max(highest_ranks)
        if highest < 0:  # no character merges on its own: nothing to gain
            return None
        # `bound`: the lowest rank any merge could have across a boundary; only a boundary at or below
        # M is checked pair by pair.
        rank_of = self.rank.get
        for i, bound in enumerate(map(max, lowest_after, lowest_before[1:])):
            if bound <= highest and any(
                rank_of((a, b), _NO_MERGE_RANK) <= highest for a in last_ids[i] for b in first_ids[i + 1]
            ):
                return None
        return list(chain.from_iterable(ids))

    def _character(self, char: str, last: bool) -> "_CharacterStart":
        """Merge the bytes of one character on their own, recording what `character_start` needs."""
        data = char.encode("utf-8")
        ids = [self.byte_id[b] for b in data]
        if last:
            ids[-1] = self.end_byte_id[data[-1]]
        highest, firsts, lasts = -1, {ids[0]}, {ids[-1]}
        rank_of = self.rank.get
        # The same merging as `SimpleTokenizer._merge_ids`, step by step, to record every symbol the
        # character starts and ends with on the way (a one-off per character, so kept plain).
        while len(ids) > 1:
            ranks = [rank_of(pair, _NO_MERGE_RANK) for pair in zip(ids, ids[1:])]
            best = min(ranks)
            if best == _NO_MERGE_RANK:
                break
            highest = max(highest, best)  # not always the last: a merge can make a lower-ranked pair
            merged: List[int] = []
            i = 0
            while i < len(ids):  # every occurrence, left to right, not overlapping
                if i + 1 < len(ids) and ranks[i] == best:
                    merged.append(self.merged_id[best])
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            ids = merged
            firsts.add(ids[0])
            lasts.add(ids[-1])
        lowest_after, lowest_before = self._lowest_ranks_by_symbol()
        start = _CharacterStart(
            ids=tuple(ids),
            highest_rank=highest,
            first_ids=tuple(firsts),
            last_ids=tuple(lasts),
            lowest_rank_after=min(lowest_after.get(a, _NO_MERGE_RANK) for a in lasts),
            lowest_rank_before=min(lowest_before.get(b, _NO_MERGE_RANK) for b in firsts),
        )
        if last:
            self._final_bound.store(self._final, char, start)
        else:
            self._inner_bound.store(self._inner, char, start)
        return start

    def _lowest_ranks_by_symbol(self) -> Tuple[Dict[int, int], Dict[int, int]]:
        """(id -> lowest rank of a merge with that id on the left, ... on the right), built once."""
        tables = self._lowest_ranks
        if tables is None:  # two threads may both build it: same result, one is kept
            after: Dict[int, int] = {}
            before: Dict[int, int] = {}
            for (left, right), rank in self.rank.items():
                if rank < after.get(left, _NO_MERGE_RANK):
                    after[left] = rank
                if rank < before.get(right, _NO_MERGE_RANK):
                    before[right] = rank
            tables = self._lowest_ranks = (after, before)
        return tables


class _CharacterStart(NamedTuple):
    """One character's bytes merged on their own (see `_IdMerges.character_start`)."""

    ids: Tuple[int, ...]  # the symbols they end as
    highest_rank: int  # the highest rank merged; -1 if none
    first_ids: Tuple[int, ...]  # every symbol the character starts with along the way
    last_ids: Tuple[int, ...]  # every symbol it ends with along the way
    lowest_rank_after: int  # lowest rank of any merge whose left symbol is in last_ids
    lowest_rank_before: int  # lowest rank of any merge whose right symbol is in first_ids


class _CacheBound:
    """Keeps a dict used as a cache within a number of entries (and of bytes), oldest out first.

    The cache stays a plain dict, read without a lock (`dict.get` on the fast path); this object
    remembers the order in which `store` added keys, so that each eviction is one `deque.popleft`
    and one `dict.pop`: O(1). (Popping ``next(iter(cache))`` instead walks the slots left empty by
    earlier deletions, so each eviction costs more than the last until the dict is resized.) Entries
    put into the dict by other means (the seeded special tokens) are never evicted, but count.
    """

    def __init__(self, max_entries: int, max_bytes: Optional[int] = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0  # estimated size of the entries stored (and not yet evicted) here
        self._order: Deque[Tuple[Hashable, int]] = deque()  # (key, size)

    def store(self, cache: Dict[Any, Any], key: Hashable, value: Any) -> None:
        """Put `key` -> `value` into `cache` (unless there already), dropping the oldest entries
        while the cache is over its bounds."""
        max_bytes = self.max_bytes
        size = 0 if max_bytes is None else sys.getsizeof(key) + sys.getsizeof(value) + _ENTRY_OVERHEAD_BYTES
        with _CACHE_STORE_LOCK:
            if key in cache:  # stored meanwhile by another thread
                return
            cache[key] = value
            self._order.append((key, size))
            nbytes = self.nbytes = self.nbytes + size
            if len(cache) > self.max_entries or (max_bytes is not None and nbytes > max_bytes):
                self._evict(cache)

    def _evict(self, cache: Dict[Any, Any]) -> None:
        """Drop the oldest entries while the cache is over its bounds (the caller holds the lock)."""
        order, max_entries, max_bytes = self._order, self.max_entries, self.max_bytes
        while order and (len(cache) > max_entries or (max_bytes is not None and self.nbytes > max_bytes)):
            old_key, old_size = order.popleft()
            if cache.pop(old_key, _MISSING) is not _MISSING:
                self.nbytes -= old_size


_MISSING = object()
