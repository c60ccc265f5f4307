"""`clip.tokenize` and the lazily built, shared tokenizer.

Nothing is built at import: the first call of `tokenize` (or `get_tokenizer`, or a read of
`clip.clip._tokenizer`) reads the vocabulary, once, under a lock. Assigning
`clip.clip._tokenizer = my_tokenizer` (or calling `set_tokenizer`) makes `tokenize` use another
tokenizer, as in the original: anything with the original's `encode(text)` and `encoder` dict.
"""

import operator
import threading
from typing import Any, Iterable, List, Optional, Union

import torch

from .simple_tokenizer import _ID_BYTES, EOT_TEXT, SOT_TEXT, SimpleTokenizer

__all__ = ["get_tokenizer", "set_tokenizer", "tokenize"]

_tokenizer: Optional[Any] = None  # a SimpleTokenizer unless one was assigned
_tokenizer_lock = threading.Lock()

# The original returns int32 on every torch this package supports (it gave int64 on torch < 1.8).
TOKEN_DTYPE = torch.int32
DEFAULT_CONTEXT_LENGTH = 77  # every released CLIP model
# The longest row tokenize builds: far above any CLIP text tower (77; long-text variants a few
# hundred), and a bound on memory (256 KiB of int32 per text) where a typo asks for 10**12.
MAX_CONTEXT_LENGTH = 65_536
# The "too long" message quotes the text, as the original's does; longer texts are quoted by their
# first characters only (a multi-megabyte message helps no one).
_QUOTED_TEXT_CHARS = 10_000
_QUOTED_HEAD_CHARS = 200


def get_tokenizer() -> Any:
    """The tokenizer `tokenize` uses: the shared `SimpleTokenizer`, built on first use (once,
    thread-safe), unless another was set with `set_tokenizer`."""
    global _tokenizer
    tokenizer = _tokenizer
    if tokenizer is None:
        with _tokenizer_lock:
            if _tokenizer is None:
                _tokenizer = SimpleTokenizer()
            tokenizer = _tokenizer
    return tokenizer


def set_tokenizer(tokenizer: Optional[Any]) -> None:
    """Make `tokenize` use `tokenizer` (what assigning `clip.clip._tokenizer` does); None restores
    the shared `SimpleTokenizer`, built again on next use.

    Any object with the original tokenizer's `encode(text) -> List[int]` and `encoder` dict (holding
    "<|startoftext|>" and "<|endoftext|>") will do.
    """
    global _tokenizer
    with _tokenizer_lock:
        _tokenizer = tokenizer


def _as_text_list(texts: Union[str, Iterable[str]]) -> List[str]:
    """`texts` as a new list of str; TypeError naming the first item that is not a str."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"texts must be a str or an iterable of str, got {type(texts).__name__}; decode it to str first"
        )
    try:
        iterator = iter(texts)
    except TypeError:
        raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}") from None
    items = list(iterator)  # an error raised by the iterable itself (a generator) propagates unchanged
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(
                f"texts[{index}] must be a str, got {type(item).__name__}; "
                "tokenize takes a str or an iterable of str"
            )
    return items


def _checked_context_length(context_length: int) -> int:
    if isinstance(context_length, bool):
        raise TypeError(f"context_length must be an int, got bool ({context_length})")
    try:
        length = operator.index(context_length)
    except TypeError:
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__}") from None
    if length <= 0:
        raise ValueError(f"context_length must be a positive int, got {length}")
    if length > MAX_CONTEXT_LENGTH:
        raise ValueError(
            f"context_length={length:,} is more than tokenize allows ({MAX_CONTEXT_LENGTH:,}): each row "
            f"holds that many ids. CLIP models read {DEFAULT_CONTEXT_LENGTH} (model.context_length); pass "
            "your model's context length"
        )
    return length


def _checked_truncate(truncate: bool) -> bool:
    if not isinstance(truncate, bool):
        raise TypeError(f"truncate must be a bool (True or False), got {truncate!r}")
    return truncate


def _quoted(text: str) -> str:
    """`text` as the "too long" message quotes it: whole, or its start and length if very long."""
    if len(text) <= _QUOTED_TEXT_CHARS:
        return text
    return f"{text[:_QUOTED_HEAD_CHARS]}... ({len(text):,} characters; pass truncate=True to keep the start)"


def tokenize(
    texts: Union[str, Iterable[str]], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
) -> Union[torch.IntTensor, torch.LongTensor]:
    """Tokenized representation of the given text(s), as the original `clip.tokenize`.

    The ids come from `clip.clip._tokenizer` (the shared `SimpleTokenizer` unless another was
    assigned there).

    Args:
        texts: a str, or an iterable of str (a list, a tuple, a generator: it is read once).
        context_length: the row length; all CLIP models use 77. At most `MAX_CONTEXT_LENGTH` (65,536).
        truncate: cut texts longer than `context_length` (keeping the first ids and ending with EOT)
            instead of raising. A bool.

    Returns:
        A [number of texts, context_length] tensor: SOT, the ids, EOT, then zeros. dtype int32, as the
        original's on every supported torch.

    Raises:
        RuntimeError: a text is too long for `context_length` and `truncate` is off (the original's
            message).
        TypeError: `texts` is not a str or an iterable of str (the message names the first bad
            item's index and type), `context_length` is not an int (a bool is not), or `truncate` is
            not a bool.
        ValueError: `context_length` is 0 or less, or more than `MAX_CONTEXT_LENGTH`.
    """
    items = _as_text_list(texts)
    length = _checked_context_length(context_length)
    truncate = _checked_truncate(truncate)
    dtype = TOKEN_DTYPE
    if not items:
        return torch.zeros(0, length, dtype=dtype)

    tokenizer = get_tokenizer()
    if type(tokenizer) is not SimpleTokenizer:  # one assigned by the user: only its encode is known
        return _tokenize_with(tokenizer, items, length, truncate, dtype)
    packed_row = tokenizer._packed_row
    eot = tokenizer._eot_bytes
    row_bytes = length * _ID_BYTES
    # Ids past SOT needed to know a text is too long: more than length - 2 of them.
    limit = length - 1
    buffer = bytearray(len(items) * row_bytes)  # zero padded rows, filled in place
    start = 0
    for text in items:
        row = packed_row(text, limit)
        if len(row) > row_bytes:
            if not truncate:
                raise RuntimeError(f"Input {_quoted(text)} is too long for context length {context_length}")
            row = row[: row_bytes - _ID_BYTES] + eot
        buffer[start : start + len(row)] = row
        start += row_bytes
    tokens = torch.frombuffer(buffer, dtype=torch.int32).view(len(items), length)  # [N, context_length]
    return tokens if dtype == torch.int32 else tokens.to(dtype)


def _tokenize_with(
    tokenizer: Any, items: List[str], length: int, truncate: bool, dtype: torch.dtype
) -> torch.Tensor:
    """`tokenize` through a tokenizer's `encode` and `encoder` only: SOT, ids, EOT, zero padding."""
    sot = tokenizer.encoder[SOT_TEXT]
    eot = tokenizer.encoder[EOT_TEXT]
    result = torch.zeros(len(items), length, dtype=dtype)
    for index, text in enumerate(items):
        ids = [sot, *tokenizer.encode(text), eot]
        if len(ids) > length:
            if not truncate:
                raise RuntimeError(f"Input {_quoted(text)} is too long for context length {length}")
            ids = ids[: length - 1] + [eot]
        result[index, : len(ids)] = torch.tensor(ids, dtype=dtype)
    return result
