"""CLIP's byte-level BPE tokenizer, with the names and behaviour of the original module.

Importable from here exactly as in the original: `SimpleTokenizer`, `default_bpe`,
`bytes_to_unicode`, `get_pairs`, `basic_clean`, `whitespace_clean`. A `SimpleTokenizer` carries the
original's public attributes (`encoder`, `decoder`, `byte_encoder`, `byte_decoder`, `bpe_ranks`,
`cache`, `pat`) and methods (`bpe`, `encode`, `decode`), and produces the same ids.

What differs is speed, never output:

* Plain text (printable ASCII, tabs and line breaks, no ``&``) skips the Unicode repair of
  `basic_clean`: on such text ``ftfy.fix_text`` only turns ``\\r`` into ``\\n`` and ``html.unescape``
  has nothing to do, so the cleaned text is just the text with whitespace runs collapsed (see
  `_PLAIN_TEXT_EXCEPTIONS`). Every other text takes the original cleaning path, except that
  ``ftfy.fix_text`` is not run where it provably returns the text unchanged (`clip._text_repair`).
* Ids are cached per pre-token (and per whitespace-separated chunk of plain text) and per whole
  text (short words and texts only), packed as int32 bytes so that a batch of rows is assembled
  with byte copies instead of per-token Python work. (`cache` is kept as the original's, but only
  `bpe` fills it: `encode` uses the private caches.)
* Every cache is bounded (entries, and bytes for the private ones; see `_WORD_CACHE_ENTRIES` and
  below) and drops its oldest entries first, in O(1) per entry, so a corpus of ever-new words runs
  at a steady rate in steady memory; the original's `cache` grows without limit.
* A printable ASCII word whose whole form is a vocabulary entry is that entry: checked against
  every entry of the released vocabulary, so this shortcut is only taken with that file. Other
  words go to BPE on ids directly; words with a character from U+0600 on may start from each
  character merged on its own, where that provably gives the same ids
  (`_IdMerges.character_start` in clip/_bpe_engine.py, the speed engine).
* `_packed_row(text, limit)` can stop once ``limit`` ids are known, cleaning long texts in pieces
  that provably tokenise like the whole (see `_iter_clean_pieces`), so a 1 MB text with
  ``truncate=True`` does not go through BPE in full.

``ftfy`` and ``regex`` are imported when a tokenizer is built, and nothing is read or built at
import time.
"""

import gzip
import hashlib
import html
import os
import re as _re
import sys
from array import array
from functools import lru_cache
from itertools import islice, repeat
from typing import (
    Any,
    BinaryIO,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from . import _incidental_names
from ._bpe_engine import (  # noqa: F401 - _ENTRY_OVERHEAD_BYTES: read by the tests
    _ENTRY_OVERHEAD_BYTES,
    _ID_BYTES,
    _ID_TYPECODE,
    _NO_MERGE_RANK,
    _CacheBound,
    _IdMerges,
    _pack,
)
from ._text_repair import fix_text

__all__ = [
    "SimpleTokenizer",
    "basic_clean",
    "bytes_to_unicode",
    "default_bpe",
    "get_pairs",
    "whitespace_clean",
]

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# sha256 of the released vocabulary file; the whole-word shortcut is verified for this file only.
_RELEASED_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

_N_BYTES = 256  # one base symbol per byte value
_N_SPECIAL = 2  # <|startoftext|>, <|endoftext|>
# Line 0 of the file is a header; the original keeps lines 1..(49152 - 256 - 2), i.e. 48,894 merges.
_N_MERGES = 49152 - _N_BYTES - _N_SPECIAL
_END_OF_WORD = "</w>"
SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"

# The original pre-tokenizer (compiled with the `regex` module and IGNORECASE).
_PRETOKENIZER_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
# The same pre-tokenizer restricted to lower-cased printable ASCII whose only whitespace is " ":
# there \p{L} is [a-z] (after lower()), \p{N} is [0-9] and \s is " ".
_PLAIN_PRETOKENIZER_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^ a-z0-9]+"""
)

# Plain text: every character in \t \n \x0c \r or printable ASCII except "&". On such text
# ftfy.fix_text changes nothing but "\r\n"/"\r" -> "\n" (ASCII passes its encoding check untouched; the
# other fixers and NFC only touch non-ASCII, "&" entities, ESC sequences, "\r" and the control
# characters 0x00-0x08, 0x0b, 0x0e-0x1f, 0x7f, all excluded here), html.unescape needs an "&", and the
# only whitespace left (\t \n \x0c \r and space) is whitespace both for str.split() and for regex's
# \s. So basic_clean + whitespace_clean reduce to " ".join(text.split()).
_PLAIN_TEXT_EXCEPTIONS = r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]"

# Characters that str.strip() removes but the `regex` module's \s does not match (the only difference
# between the two whitespace sets). Neither ftfy's output nor html.unescape's can contain them; the
# piecewise cleaning checks it anyway.
_STRIP_ONLY_SPACE = r"[\x1c-\x1f]"

# Long texts are cleaned in pieces of at least this many characters when only a prefix is needed.
_PIECE_CHARS = 4096
# Texts up to this length are always encoded in full (and may be cached whole).
_INCREMENTAL_MIN_CHARS = 2 * _PIECE_CHARS
_CACHED_TEXT_CHARS = 1024
_NOT_A_MERGE = float("inf")  # rank of a pair that is not a merge
# Longer words and chunks are encoded every time, never cached: a few giant words (a megabyte of
# letters without a space) must not pin their size in memory for the life of the process.
_CACHED_WORD_CHARS = 64

# Cache bounds. Each cache drops its oldest entries first once a bound is reached (FIFO, O(1) per
# entry: the order of insertion is kept in a deque beside the dict).
#
# Pre-tokens and chunks -> packed ids. 2**17 entries hold the words that make up nearly all of the
# running text of an English caption corpus (Zipf-distributed: ~100k distinct words cover well over
# 95% of it), about 200 bytes each (a short str, a short bytes, the slot), ~26 MiB; the byte bound
# caps the worst case (64-character words of 4-byte characters, ~1.5 KB each) at 48 MiB instead of
# ~190 MiB.
_WORD_CACHE_ENTRIES = 1 << 17
_WORD_CACHE_BYTES = 48 << 20
# Whole texts (up to _CACHED_TEXT_CHARS characters) -> packed rows: 2**15 entries repeat a batch,
# an epoch of a small dataset or a prompt set (ImageNet's 80 templates x 1,000 classes) with no work
# at ~400 bytes a caption (~13 MiB); the byte bound caps texts of up to 1,024 wide characters (~8 KB
# each) at 32 MiB instead of ~256 MiB.
_TEXT_CACHE_ENTRIES = 1 << 15
_TEXT_CACHE_BYTES = 32 << 20
# The original's `cache` (token -> its BPE symbols), filled only by `bpe()`: the original lets it
# grow without limit. 2**16 tokens of up to _CACHED_WORD_CHARS bytes: ~10 MiB typical, ~40 MiB at
# worst (it is a plain dict, as in the original, so it is bounded by entries only).
_BPE_CACHE_ENTRIES = 1 << 16
# Words with a character from here on (Arabic, Indic and East Asian scripts, emoji) try that start.
# Below it (Latin, Greek, Cyrillic), the vocabulary merges so many pairs across characters that the
# proof held for only 5-30% of novel words and checking it cost more than it saved (measured on the
# multilingual sustained corpus: Arabic 22 -> 15 us a word, CJK 11 -> 11, emoji 33 -> 14; Greek
# 9 -> 14, Cyrillic 30 -> 31). Either way the ids are the same.
_CHARACTER_START_FROM = "\u0600"


@lru_cache
def default_bpe() -> str:
    """Path of the BPE vocabulary file shipped inside the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _VOCAB_FILE)


@lru_cache
def bytes_to_unicode() -> Dict[int, str]:
    """Map each byte value to a printable unicode character, as the original does.

    Bytes that are printable Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the other 68
    (controls, space, soft hyphen, ...) map to chr(256), chr(257), ... in byte order. The dict lists
    the printable bytes first: its value order is the order of the first 256 vocabulary entries.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    kept = set(printable)
    others = [b for b in range(_N_BYTES) if b not in kept]
    for n, b in enumerate(others):
        mapping[b] = chr(_N_BYTES + n)
    return mapping


def get_pairs(word: Sequence[str]) -> Set[Tuple[str, str]]:
    """Set of adjacent symbol pairs in a word (a sequence of symbols)."""
    return set(zip(word, word[1:]))


def basic_clean(text: str) -> str:
    """Repair the text with ftfy, unescape HTML entities twice, strip.

    ``ftfy.fix_text`` is skipped where it provably returns the text unchanged (`clip._text_repair`);
    the result is the same.
    """
    text = fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


@lru_cache
def _whitespace_run() -> Any:  # the `regex` module's \s, as the original uses
    import regex

    return regex.compile(r"\s+")


def whitespace_clean(text: str) -> str:
    """Collapse runs of whitespace into one space and strip."""
    return _whitespace_run().sub(" ", text).strip()


def _clean(text: str) -> str:
    """The original's full cleaning: basic_clean, whitespace_clean, lower().

    Without the characters that only str.split() counts as whitespace (`_STRIP_ONLY_SPACE`: the
    only difference between its whitespace and the `regex` module's \\s, checked over every code
    point in tests/test_tokenizer.py), whitespace_clean is " ".join(text.split()), without a regex.
    """
    text = basic_clean(text)
    if _re.search(_STRIP_ONLY_SPACE, text) is None:
        return " ".join(text.split()).lower()
    return whitespace_clean(text).lower()


class _NotPiecewise(Exception):
    """A long text could not be proven to clean piecewise; it is cleaned whole instead."""


class SimpleTokenizer:
    """CLIP's byte-level BPE tokenizer.

    Args:
        bpe_path: a gzip'd merges file in the release's format (line 0 a header, then one merge
            "a b" per line): its path, or a binary file object open on it (read, not closed).
    """

    def __init__(self, bpe_path: Union[str, "os.PathLike[str]", BinaryIO] = default_bpe()) -> None:
        # Imported with the tokenizer (not with the package): slow imports, needed by any text that
        # is not plain.
        import ftfy  # noqa: F401
        import regex

        if hasattr(bpe_path, "read"):  # a binary file object, as gzip.open (the original's reader) takes
            raw = bpe_path.read()
        else:
            with open(bpe_path, "rb") as f:
                raw = f.read()
        lines = gzip.decompress(raw).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]

        self.byte_encoder: Dict[int, str] = bytes_to_unicode()
        self.byte_decoder: Dict[str, int] = {v: k for k, v in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + _END_OF_WORD for s in symbols]
        vocab += ["".join(merge) for merge in merges]
        vocab += [SOT_TEXT, EOT_TEXT]
        self.encoder: Dict[str, int] = dict(zip(vocab, range(len(vocab))))
        self.decoder: Dict[int, str] = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks: Dict[Tuple[str, ...], int] = dict(zip(merges, range(len(merges))))
        self.cache: Dict[str, str] = {SOT_TEXT: SOT_TEXT, EOT_TEXT: EOT_TEXT}
        self.pat = regex.compile(_PRETOKENIZER_PATTERN, regex.IGNORECASE)

        # Private machinery of the fast paths.
        self._whole_word_shortcut = hashlib.sha256(raw).hexdigest() == _RELEASED_VOCAB_SHA256
        self._plain_pat = _re.compile(_PLAIN_PRETOKENIZER_PATTERN)
        self._not_plain = _re.compile(_PLAIN_TEXT_EXCEPTIONS)
        self._strip_only_space = _re.compile(_STRIP_ONLY_SPACE)
        self._sot_bytes = _pack([self.encoder[SOT_TEXT]])
        self._eot_bytes = _pack([self.encoder[EOT_TEXT]])
        # The special-token strings are single tokens (the original seeds its `cache` with them).
        self._special_ids = {SOT_TEXT: self._sot_bytes, EOT_TEXT: self._eot_bytes}
        self._word_cache: Dict[str, bytes] = dict(self._special_ids)
        self._text_cache: Dict[str, bytes] = {}
        self._word_cache_bound = _CacheBound(_WORD_CACHE_ENTRIES, _WORD_CACHE_BYTES)
        self._text_cache_bound = _CacheBound(_TEXT_CACHE_ENTRIES, _TEXT_CACHE_BYTES)
        self._bpe_cache_bound = _CacheBound(_BPE_CACHE_ENTRIES)  # the seeded specials are never evicted
        self._id_bytes: Optional[Dict[int, bytes]] = None
        self._id_merges: Optional[_IdMerges] = None  # built on the first word that needs BPE

    # ----------------------------------------------------------------------------------------- BPE

    def _bpe_symbols(self, token: str) -> List[str]:
        """Apply the merges to a byte-encoded token; return its symbols (the last ends in </w>).

        Same algorithm as the original: repeatedly take the lowest-ranked adjacent pair and merge all
        its non-overlapping occurrences, left to right, until no pair is a merge.
        """
        word = list(token)
        word[-1] += _END_OF_WORD
        rank_of = self.bpe_ranks.get
        # ranks[i]: rank of the pair (word[i], word[i + 1]); ranks are unique per pair, so the
        # occurrences of the best pair are the positions holding its rank.
        ranks = [rank_of(pair, _NOT_A_MERGE) for pair in zip(word, word[1:])]
        while ranks:
            best = min(ranks)
            if best == _NOT_A_MERGE:
                break
            at = ranks.index(best)
            merged = word[at] + word[at + 1]
            if ranks.count(best) == 1:  # the usual case: one merge, two neighbouring pairs change
                word[at : at + 2] = [merged]
                del ranks[at]
                if at > 0:
                    ranks[at - 1] = rank_of((word[at - 1], merged), _NOT_A_MERGE)
                if at < len(ranks):
                    ranks[at] = rank_of((merged, word[at + 1]), _NOT_A_MERGE)
                continue
            new_word: List[str] = []
            start = 0
            while True:  # left to right, occurrences do not overlap
                new_word.extend(word[start:at])
                new_word.append(merged)
                start = at + 2
                try:
                    at = ranks.index(best, start)
                except ValueError:
                    break
            new_word.extend(word[start:])
            word = new_word
            ranks = [rank_of(pair, _NOT_A_MERGE) for pair in zip(word, word[1:])]
        return word

    def _merges_by_id(self) -> "_IdMerges":
        """The merges restated on vocabulary ids (built once, on first use)."""
        tables = self._id_merges
        if tables is None:  # two threads may both build it: same result, one is kept
            tables = self._id_merges = _IdMerges(self.encoder, self.bpe_ranks, self.byte_encoder)
        return tables

    def _bpe_ids(self, token: str) -> List[int]:
        """Vocabulary ids of `_bpe_symbols(token)`, computed on ids instead of strings.

        The same merges in the same order: each symbol string has exactly one id (`encoder` maps
        distinct strings to distinct ids, and every symbol is a vocabulary entry), so a pair of ids
        stands for exactly one pair of strings, and merging it gives the id of the joined string.
        The ranks of a list's pairs are looked up in one `map` (no Python loop), and the result needs
        no `encoder` look-ups.
        """
        tables = self._merges_by_id()
        ids = list(map(tables.symbol_id.__getitem__, token))
        ids[-1] = tables.end_symbol_id[token[-1]]
        return self._merge_ids(ids, tables)

    def _merge_ids(self, ids: List[int], tables: Optional["_IdMerges"] = None) -> List[int]:
        """Apply the merges to a list of symbol ids (the loop of `_bpe_ids`); return the result."""
        if tables is None:
            tables = self._merges_by_id()
        rank_of = tables.rank.get
        merged_id = tables.merged_id
        no_merge = _NO_MERGE_RANK
        ranks = list(map(rank_of, zip(ids, islice(ids, 1, None)), repeat(no_merge)))
        while ranks:
            best = min(ranks)
            if best == no_merge:
                break
            at = ranks.index(best)
            merged = merged_id[best]
            if ranks.count(best) == 1:  # the usual case: one merge, two neighbouring pairs change
                ids[at : at + 2] = (merged,)
                del ranks[at]
                if at > 0:
                    ranks[at - 1] = rank_of((ids[at - 1], merged), no_merge)
                if at < len(ranks):
                    ranks[at] = rank_of((merged, ids[at + 1]), no_merge)
                continue
            new_ids: List[int] = []
            start = 0
            while True:  # left to right, occurrences do not overlap
                new_ids.extend(ids[start:at])
                new_ids.append(merged)
                start = at + 2
                try:
                    at = ranks.index(best, start)
                except ValueError:
                    break
            new_ids.extend(ids[start:])
            ids = new_ids
            ranks = list(map(rank_of, zip(ids, islice(ids, 1, None)), repeat(no_merge)))
        return ids

    def bpe(self, token: str) -> str:
        """BPE symbols of a byte-encoded token, joined by spaces (cached in `cache`, as the original).

        Unlike the original's, `cache` is bounded: tokens over `_CACHED_WORD_CHARS` are not cached, and
        past `_BPE_CACHE_ENTRIES` the oldest entries (never the seeded special tokens) are dropped.
        """
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        if len(token) == 1:
            return token + _END_OF_WORD
        word = " ".join(self._bpe_symbols(token))
        if len(token) <= _CACHED_WORD_CHARS:
            self._bpe_cache_bound.store(self.cache, token, word)
        return word

    def _word_ids(self, word: str) -> bytes:
        """Packed ids of one pre-token (as matched in the cleaned text), computed and cached."""
        special = self._special_ids.get(word)
        if special is not None:
            return special
        if word.isascii() and word.isprintable() and " " not in word:
            # The bytes '!'..'~' are their own byte symbols: the word is its token.
            whole = self.encoder.get(word + _END_OF_WORD) if self._whole_word_shortcut else None
            packed = _pack(self._bpe_ids(word)) if whole is None else whole.to_bytes(_ID_BYTES, sys.byteorder)
        else:
            # Other words go straight to ids (no token string; a word that is a vocabulary entry comes
            # out of BPE whole, as every word does). Words with a character from
            # _CHARACTER_START_FROM on start from each character merged on its own where that is
            # proven to give the same ids (`_IdMerges.character_start`); others from their bytes.
            tables = self._merges_by_id()
            start = tables.character_start(word) if max(word) >= _CHARACTER_START_FROM else None
            if start is None:
                data = word.encode("utf-8")
                start = list(map(tables.byte_id.__getitem__, data))
                start[-1] = tables.end_byte_id[data[-1]]
            packed = _pack(self._merge_ids(start, tables))
        if len(word) <= _CACHED_WORD_CHARS:
            self._word_cache_bound.store(self._word_cache, word, packed)
        return packed

    # ------------------------------------------------------------------------------------ encoding

    def _pretokens(self, text: str) -> List[str]:
        """The original's pre-tokens of the cleaned text."""
        if self._not_plain.search(text) is None:
            return self._plain_pat.findall(" ".join(text.split()).lower())
        return self.pat.findall(_clean(text))

    def _chunk_ids(self, chunk: str) -> bytes:
        """Packed ids of a whitespace-free chunk of cleaned plain text, computed and cached.

        No pre-token spans whitespace and matching never looks past it, so a chunk's pre-tokens do not
        depend on its neighbours; a chunk that is itself one pre-token gets that pre-token's ids, so
        chunks and pre-tokens share one cache consistently.
        """
        if chunk.isalpha():  # the usual case: one word
            return self._word_ids(chunk)
        words = self._plain_pat.findall(chunk)
        if len(words) == 1:
            return self._word_ids(chunk)
        get = self._word_cache.get
        packed = b"".join([get(w) or self._word_ids(w) for w in words])
        if len(chunk) <= _CACHED_WORD_CHARS:
            self._word_cache_bound.store(self._word_cache, chunk, packed)
        return packed

    def _packed_ids(self, text: str) -> bytes:
        """All ids of `text`, packed as int32 bytes."""
        get = self._word_cache.get
        if self._not_plain.search(text) is None:
            # Plain text: cleaned, it is its whitespace-separated chunks, lower-cased.
            chunk_ids = self._chunk_ids
            return b"".join([get(c) or chunk_ids(c) for c in text.lower().split()])
        word_ids = self._word_ids
        return b"".join([get(w) or word_ids(w) for w in self.pat.findall(_clean(text))])

    def _iter_clean_pieces(self, text: str) -> Iterator[Tuple[str, bool]]:
        """Yield (cleaned piece, is_plain): pieces whose pre-tokens, concatenated, are the text's.

        Plain text is cleaned whole (cheap). Other long texts are cut right after a newline, at least
        `_PIECE_CHARS` apart; pieces made of plain lines skip ftfy as plain texts do. This is exact
        because:

        * ftfy.fix_text fixes each line (segment) independently, and its only carried state, "stop
          unescaping HTML once a segment contains '<'", is replayed here; so ftfy of a run of whole
          lines is that run's part of ftfy of the whole text.
        * html.unescape's entity pattern cannot contain "\\n": when ftfy's piece ends in "\\n" (checked),
          unescaping the pieces one by one equals unescaping the whole.
        * The piece boundary is then whitespace: no pre-token spans it, lower()'s final-sigma context
          stops at it, and stripping each piece only drops separators, provided no character is
          whitespace to str.strip() but not to \\s (checked).

        A failed check raises `_NotPiecewise` (the caller then cleans the text whole).
        """
        if self._not_plain.search(text) is None:
            yield " ".join(text.split()).lower(), True
            return
        n = len(text)
        if n <= _PIECE_CHARS:
            yield _clean(text), False
            return
        import ftfy

        ftfy_unescapes = True  # ftfy's unescape_html="auto": on until a segment contains "<"
        pos = 0
        while pos < n:
            newline = text.find("\n", pos + _PIECE_CHARS - 1)
            end = n if newline < 0 else newline + 1
            chunk = text[pos:end]
            pos = end
            unescape_html = ftfy_unescapes
            if "<" in chunk:
                ftfy_unescapes = False
            if self._not_plain.search(chunk) is None:
                # Whole lines of plain text: ftfy and html.unescape leave them alone, as for a plain text.
                yield " ".join(chunk.split()).lower(), True
                continue
            fixed = ftfy.fix_text(chunk) if unescape_html else ftfy.fix_text(chunk, unescape_html=False)
            if pos < n and not fixed.endswith("\n"):
                raise _NotPiecewise
            unescaped = html.unescape(html.unescape(fixed))
            if self._strip_only_space.search(unescaped) is not None:
                raise _NotPiecewise
            yield whitespace_clean(unescaped.strip()).lower(), False

    def _packed_ids_prefix(self, text: str, limit: int) -> bytes:
        """Packed ids of `text`: all of them, or a prefix of at least `limit` ids."""
        get = self._word_cache.get
        word_ids = self._word_ids
        parts: List[bytes] = []
        count = 0
        try:
            for piece, plain in self._iter_clean_pieces(text):
                pattern = self._plain_pat if plain else self.pat
                for match in pattern.finditer(piece):
                    word = match.group()
                    packed = get(word) or word_ids(word)
                    parts.append(packed)
                    count += len(packed) // _ID_BYTES
                    if count >= limit:
                        return b"".join(parts)
        except _NotPiecewise:
            return self._packed_ids(text)
        return b"".join(parts)

    def _packed_row(self, text: str, limit: Optional[int] = None) -> bytes:
        """SOT + ids + EOT of `text` packed as int32 bytes.

        With `limit`, a long text may stop early: the row then holds more than `limit` + 1 ids, and
        its first `limit` + 1 are exact.
        """
        row = self._text_cache.get(text)
        if row is not None:
            return row
        if limit is not None and len(text) > _INCREMENTAL_MIN_CHARS:
            return self._sot_bytes + self._packed_ids_prefix(text, limit) + self._eot_bytes
        row = self._sot_bytes + self._packed_ids(text) + self._eot_bytes
        if len(text) <= _CACHED_TEXT_CHARS:
            self._text_cache_bound.store(self._text_cache, text, row)
        return row

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` (without SOT/EOT), as the original computes them."""
        row = self._packed_row(text)
        return array(_ID_TYPECODE, row[_ID_BYTES:-_ID_BYTES]).tolist()

    # ------------------------------------------------------------------------------------ decoding

    def decode(self, tokens: Iterable[int]) -> str:
        """Text of token ids: bytes joined, decoded as UTF-8 (errors replaced), "</w>" -> " "."""
        id_bytes = self._id_bytes
        if id_bytes is None:
            table = {ord(c): b for c, b in self.byte_decoder.items()}
            # Every vocabulary character is a byte symbol, so each entry maps to bytes; the
            # translated string holds code points < 256 only.
            id_bytes = {i: s.translate(table).encode("latin-1") for i, s in self.decoder.items()}
            self._id_bytes = id_bytes
        data = b"".join([id_bytes[token] for token in tokens])
        return data.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")


# the original's `ftfy` and `re` (the `regex` module), imported when first read
__getattr__ = _incidental_names.module_getattr(__name__, _incidental_names.CLIP_SIMPLE_TOKENIZER)
