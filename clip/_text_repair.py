"""``ftfy.fix_text`` with the same output, without its cost on text that it provably leaves alone.

The original tokenizer runs every non-ASCII text through ``ftfy.fix_text``: about ten fixers, a
mojibake regex and NFC normalisation, ~90 us for a 100-character caption, although almost every
caption comes back unchanged. With ftfy's default settings (the only ones the tokenizer uses),
``fix_text`` returns its input unchanged when all of the following hold, because then each step of
its loop (``ftfy.fix_and_explain``) returns its input and the loop stops after one pass:

* no HTML entity as ftfy matches them (``unescape_html``: "&", a name or number, ";");
* no character that a fixer acts on (`_Shortcut.blocking`): C1 controls
  (``fix_c1_controls``), the keys of ftfy's ``LIGATURES``, ``WIDTH_MAP`` and ``CONTROL_CHARS``
  translation tables, curly quotes (``uncurl_quotes``), "\\r" and the Unicode line breaks
  (``fix_line_breaks``), surrogates (``fix_surrogates``), ESC (``remove_terminal_escapes``);
* ``fix_encoding`` finds no mojibake: ``ftfy.badness.is_bad`` is False. That is ftfy's own check,
  run here too unless the text has none of the pattern's key characters (`_key_characters`): every
  branch of ftfy's ``BADNESS_RE`` needs one character of a set of its own, and the key characters
  hold one such set per branch (chosen to avoid lower-case letters, so that ordinary accented,
  Greek and Cyrillic text has none);
* the text is NFC (``unicodedata.is_normalized``, the same test as ``normalize(...) == text``).

Text whose only fixable characters are full-width or half-width forms (a Chinese comma "，") comes
back as the width fixer's translation of it when the text has no mojibake and the translation passes
all the checks: then the first pass of ftfy's loop returns the translation and the second pass
leaves it alone.

ftfy fixes each line on its own (and ``^`` in its mojibake pattern anchors at a line's start), so a
text with a line break that needs the mojibake check goes to ftfy. So does a text longer than
ftfy's segment length, and every text when the installed ftfy is not a version whose steps were
checked (`_CHECKED_FTFY`): then this module is ``ftfy.fix_text`` itself.
"""

import re
import unicodedata
from functools import cache
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

__all__ = ["fix_text"]

# ftfy versions (major, minor) whose fix_text steps are those listed above; tested against the real
# fix_text in tests/test_text_repair.py.
_CHECKED_FTFY = {(6, 0), (6, 1), (6, 2), (6, 3)}
# ftfy's default segment length (TextFixerConfig.max_decode_length).
_FTFY_SEGMENT_CHARS = 1_000_000


def _char_class(points: Iterable[int]) -> str:
    """A regex character class of exactly the given code points, as escaped ranges."""
    ranges: List[Tuple[int, int]] = []
    for point in sorted(set(points)):
        if ranges and point == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], point)
        else:
            ranges.append((point, point))
    return "[" + "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges) + "]"


def _explicit_set(item: Tuple[Any, Any], constants: Any) -> Optional[Set[int]]:
    """The characters a parsed regex item matches, if it is a literal or a class of literals and
    ranges; None for anything else (categories, negation, groups, repeats, anchors)."""
    op, arg = item
    if op is constants.LITERAL:
        return {arg}
    if op is not constants.IN:
        return None
    chars: Set[int] = set()
    for member_op, member in arg:
        if member_op is constants.LITERAL:
            chars.add(member)
        elif member_op is constants.RANGE:
            chars.update(range(member[0], member[1] + 1))
        else:
            return None
    return chars


def _letter_score(chars: Set[int]) -> Tuple[int, int, int]:
    """How much a set of characters would cost as key characters: lower-case letters, letters,
    size (fewer is better)."""
    names = [unicodedata.name(chr(c), "") for c in chars]
    return sum("SMALL LETTER" in n for n in names), sum("LETTER" in n for n in names), len(chars)


def _key_characters(pattern: "re.Pattern[str]") -> Optional[Set[int]]:
    """Characters such that every match of `pattern` contains at least one of them, or None.

    The pattern is read with Python's own regex parser. Each branch of its top-level alternation
    (or the pattern itself, if it has none) is a sequence of items; an item that must match exactly
    one character from an explicit non-ASCII set (a literal, or a class of literals and ranges, not
    inside an optional repeat) is a candidate, and one candidate per branch (the one with the fewest
    lower-case letters) gives its characters. A branch with no candidate, or a pattern the parser
    does not give in this shape, gives None (then every non-ASCII text gets the full check).
    """
    try:
        try:
            from re import _constants as constants  # type: ignore[attr-defined]
            from re import _parser as parser  # type: ignore[attr-defined]
        except ImportError:  # Python 3.10
            import sre_constants as constants
            import sre_parse as parser
        if pattern.flags & re.IGNORECASE:
            return None
        tree = parser.parse(pattern.pattern, pattern.flags)
        items = list(tree.data)
        if len(items) == 1 and items[0][0] is constants.BRANCH:
            branches = [list(branch.data) for branch in items[0][1][1]]
        else:
            branches = [items]
        keys: Set[int] = set()
        for branch in branches:
            candidates = []
            for item in branch:
                chars = _explicit_set(item, constants)
                if chars and min(chars) > 0x7F:
                    candidates.append(chars)
            if not candidates:
                return None
            keys |= min(candidates, key=_letter_score)
        return keys
    except Exception:  # noqa: BLE001 - any surprise in a private parser: no shortcut, never a wrong one
        return None


class _Shortcut:
    """The checks of the module docstring, built from the installed ftfy's own tables."""

    def __init__(self, ftfy_module: Any, badness_module: Any, chardata_module: Any) -> None:
        self.fix_text: Callable[[str], str] = ftfy_module.fix_text
        self.is_bad: Callable[[str], bool] = badness_module.is_bad
        self.width_map: Dict[int, str] = chardata_module.WIDTH_MAP
        self.html_entity: re.Pattern[str] = chardata_module.HTML_ENTITY_RE
        blocking = {ord("\r"), 0x1B, 0x2028, 0x2029, 0x02BC}
        blocking.update(range(0x80, 0xA0))  # C1 controls (with NEXT LINE)
        blocking.update(range(0x2018, 0x2020))  # curly single and double quotes
        blocking.update(range(0xD800, 0xE000))  # surrogates
        blocking.update(chardata_module.LIGATURES)
        blocking.update(chardata_module.CONTROL_CHARS)
        self.blocking_but_width = re.compile(_char_class(blocking - set(self.width_map)))
        self.blocking = re.compile(_char_class(blocking | set(self.width_map)))
        keys = _key_characters(badness_module.BADNESS_RE)
        self.maybe_mojibake = re.compile(r"[^\x00-\x7f]" if keys is None else _char_class(keys))

    def no_mojibake(self, text: str) -> bool:
        """Whether ``fix_encoding`` leaves `text` alone (ftfy's own check where it is needed)."""
        return self.maybe_mojibake.search(text) is None or ("\n" not in text and not self.is_bad(text))

    def no_entity(self, text: str) -> bool:
        """Whether ``unescape_html`` leaves `text` alone: it replaces matches of ftfy's entity pattern."""
        return "&" not in text or self.html_entity.search(text) is None

    def leaves_alone_unblocked(self, text: str) -> bool:
        """Whether ftfy's loop returns `text` unchanged, for a text without blocking characters."""
        return self.no_entity(text) and unicodedata.is_normalized("NFC", text) and self.no_mojibake(text)


@cache
def _shortcut() -> Optional[_Shortcut]:
    """The checks for the installed ftfy, or None where they are not known to hold."""
    import ftfy
    from ftfy import badness, chardata

    try:
        version = tuple(int(part) for part in ftfy.__version__.split(".")[:2])
        if version not in _CHECKED_FTFY:
            return None
        return _Shortcut(ftfy, badness, chardata)
    except (AttributeError, ValueError, TypeError):  # not the ftfy 6 layout
        return None


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)`` with ftfy's default settings; the same result, faster on text that
    ftfy leaves unchanged or only changes to standard-width forms."""
    shortcut = _shortcut()
    if shortcut is None:
        import ftfy

        return ftfy.fix_text(text)
    if len(text) > _FTFY_SEGMENT_CHARS:
        return shortcut.fix_text(text)
    if shortcut.blocking.search(text) is None:
        if shortcut.leaves_alone_unblocked(text):
            return text
    elif shortcut.blocking_but_width.search(text) is None:
        # Only full-/half-width forms to fix. ftfy's first pass: the steps before the width fixer
        # leave the text alone (no entity, C1, ligature; no mojibake), the width fixer translates it,
        # the steps after it leave the translation alone; the second pass leaves it alone too.
        standard = text.translate(shortcut.width_map)
        if (
            shortcut.no_entity(text)
            and shortcut.no_mojibake(text)
            and shortcut.blocking.search(standard) is None
            and shortcut.leaves_alone_unblocked(standard)
        ):
            return standard
    return shortcut.fix_text(text)
