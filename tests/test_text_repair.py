"""`clip._text_repair.fix_text` returns exactly what ``ftfy.fix_text`` returns, on every kind of text."""

import itertools
import random
import unicodedata

import ftfy
import pytest
from _benchmarks import import_benchmark
from ftfy import badness, chardata
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clip._text_repair as repair

# Characters from every region the shortcut treats differently: ASCII, the mojibake pattern's blocks
# (Latin-1, Latin Extended, Greek, Cyrillic, punctuation, math, box drawing), blocks it skips (CJK,
# Arabic, Hangul, emoji), every blocking character, combining marks (NFC), and line breaks.
_BLOCKING = sorted(
    {"\r", "\x1b", "\u2028", "\u2029", "\u02bc", "\x85", chr(0xD800), chr(0xDFFF)}
    | {chr(c) for c in itertools.chain(chardata.LIGATURES, chardata.WIDTH_MAP, chardata.CONTROL_CHARS)}
    | {chr(c) for c in range(0x2018, 0x2020)}
)
_POOL = (
    list("abcXYZ 019.,!?'\"<>;#\n\t")
    + [chr(c) for c in range(0xA0, 0x180)]
    + [chr(c) for c in range(0x370, 0x4FF)]
    + list("–—―…‘’“”•€™№√∞≈≠≤≥│┌═▀░")
    + list("中文字、。，ーカナ한국어")
    + list("مرحبا")
    + ["\U0001f600", "\U0001f3a8", "\U00020000"]
    + ["\u0301", "\u0308", "\u0327"]  # combining marks: NFD input
    + _BLOCKING
)
# Mojibake and near-mojibake that ftfy does change (ftfy's own examples and the pattern's branches).
_MOJIBAKE = [
    "âœ” No problems",
    "sÃ³",
    "voilÃ le travail",
    "Ã la carte",
    "ok\nÃ  la ligne",
    "1\nÃ  bientôt",  # "^" in the pattern: only the second line is mojibake, not the whole text
    "вЂ™ quote",
    "ГўВЂВ™s",
    "Î²â‚¬â„¢",
    "Ø³Ù„Ø§Ù…",
    "à²",  # flagged as mojibake, left as it is
    "cafe\u0301",  # NFD
    "ﬁne ﬂour",
    "ＬＯＵＤ　ＮＯＩＳＥＳ",
    "“curly” ‘quotes’",
    "line\u2028break\u2029",
    "a\x85b",
    "\x1b[31mred\x1b[0m",
    "&amp; &lt;b&gt;",
    "a&#x41;b",
    "＆amp； full-width",  # the width fixer makes an entity, the second pass unescapes it
    "\ud83d\ude00 surrogates",
]


def test_shortcut_is_active_for_the_installed_ftfy():
    version = tuple(int(part) for part in ftfy.__version__.split(".")[:2])
    assert (repair._shortcut() is not None) == (version in repair._CHECKED_FTFY)


def _pattern_alphabet():
    """Every non-ASCII character named by an explicit set anywhere in ftfy's mojibake pattern."""
    from re import _constants as constants
    from re import _parser as parser

    chars = set()

    def walk(items):
        for item in items:
            explicit = repair._explicit_set(item, constants)
            if explicit:
                chars.update(c for c in explicit if c > 0x7F)
            elif item[0] is constants.BRANCH:
                for branch in item[1][1]:
                    walk(branch.data)
            elif item[0] in (constants.MAX_REPEAT, constants.MIN_REPEAT):
                walk(item[1][2].data)

    walk(parser.parse(badness.BADNESS_RE.pattern, badness.BADNESS_RE.flags).data)
    return sorted(chars)


def test_key_characters_spare_lower_case_letters():
    keys = repair._key_characters(badness.BADNESS_RE)
    assert keys is not None and 100 < len(keys) < 400
    lower = "абвгдежзийклмнопрстуфхцчшщъыьэюяαβγδεζηθικλμνξοπρστυφχψωéèàâüøåöçñß"
    assert not keys & {ord(c) for c in lower}


def test_text_without_key_characters_never_looks_like_mojibake():
    # The pattern's own characters (all but the keys), ASCII context and others, in random strings.
    keys = repair._key_characters(badness.BADNESS_RE)
    spared = [chr(c) for c in _pattern_alphabet() if c not in keys]
    assert len(spared) > 100
    pool = spared + list("abzAZ09 .,?!_\n\t") + ["中", "é", "\u0301"]
    rng = random.Random(1129)
    for _ in range(200_000):
        text = "".join(rng.choices(pool, k=rng.randint(1, 8)))
        assert badness.BADNESS_RE.search(text) is None, ascii(text)
    # ... while each key character takes part in some mojibake the pattern finds.
    found = {c for c in keys if any(badness.is_bad(t) for t in _contexts(chr(c), spared))}
    assert len(found) > len(keys) // 2


def _contexts(char, spared):
    return [char + s for s in spared[:60]] + [s + char for s in spared[:60]] + [f"a{char}€", f" {char}€"]


def test_without_a_parse_every_non_ascii_text_gets_the_full_check(monkeypatch):
    repair._shortcut.cache_clear()
    monkeypatch.setattr(repair, "_key_characters", lambda pattern: None)
    try:
        shortcut = repair._shortcut()
        assert shortcut.maybe_mojibake.search("中") is not None
        rng = random.Random(3)
        for _ in range(3000):
            text = "".join(rng.choices(_POOL, k=rng.randint(0, 16)))
            assert repair.fix_text(text) == ftfy.fix_text(text), ascii(text)
    finally:
        repair._shortcut.cache_clear()


@pytest.mark.parametrize("text", _MOJIBAKE)
def test_text_ftfy_changes_or_flags_is_handled_the_same(text):
    expected = ftfy.fix_text(text)
    assert expected != text or badness.is_bad(text)  # each example is one that ftfy repairs or flags
    assert repair.fix_text(text) == expected


@pytest.mark.parametrize("char", [c for c in _BLOCKING if ord(c) not in chardata.WIDTH_MAP])
def test_each_blocking_character_goes_to_ftfy(char, monkeypatch):
    calls = []
    shortcut = repair._shortcut()
    monkeypatch.setattr(shortcut, "fix_text", lambda text: calls.append(text) or ftfy.fix_text(text))
    for text in (char, f"中{char}文", f"ab{char}cd"):
        assert repair.fix_text(text) == ftfy.fix_text(text)
    assert len(calls) == 3


def test_every_width_form_in_context_equals_ftfy():
    # Full-/half-width forms are translated here unless the translation needs ftfy (mojibake, "&",
    # half-width kana that NFC composes, ...): either way the result is ftfy's.
    contexts = ("{}", "中{}文", "ab{}cd", "Ã{} ", "{}\u3099", "é{}€", "x{}\n{}y")
    for code in sorted(chardata.WIDTH_MAP):
        for context in contexts:
            text = context.format(chr(code), chr(code))
            assert repair.fix_text(text) == ftfy.fix_text(text), ascii(text)


def test_text_ftfy_leaves_alone_skips_ftfy(monkeypatch):
    shortcut = repair._shortcut()
    monkeypatch.setattr(shortcut, "fix_text", lambda text: pytest.fail(f"ftfy called on {text!r}"))
    for text in (
        "中文字幕、テスト",
        "مرحبا بالعالم",
        "한국어 🎨🎭",
        "plain ascii <b>",
        "русский текст",
        "café naïve",
    ):
        assert repair.fix_text(text) == text


@pytest.mark.parametrize("corpus", ["multilingual", "urls", "novel"])
def test_equal_to_ftfy_on_benchmark_corpora(corpus):
    corpora = import_benchmark("bench_tokenizer")
    captions = list(itertools.islice(corpora.iter_sustained_captions(corpus), 3000))
    assert [repair.fix_text(c) for c in captions] == [ftfy.fix_text(c) for c in captions]


def test_equal_to_ftfy_on_random_mixtures():
    rng = random.Random(20261129)
    for _ in range(20_000):
        text = "".join(rng.choices(_POOL, k=rng.randint(0, 24)))
        assert repair.fix_text(text) == ftfy.fix_text(text), ascii(text)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(_POOL) | st.characters(), max_size=40))
def test_equal_to_ftfy_on_any_text(text):
    assert repair.fix_text(text) == ftfy.fix_text(text)


def test_nfc_check_is_normalize_equality():
    for text in ("e\u0301", "\u00e9", "\u1e9b\u0323", "한", "\u1100\u1161"):
        assert unicodedata.is_normalized("NFC", text) == (unicodedata.normalize("NFC", text) == text)
        assert repair.fix_text(text) == ftfy.fix_text(text)


def test_unchecked_ftfy_version_always_calls_ftfy(monkeypatch):
    repair._shortcut.cache_clear()
    monkeypatch.setattr(ftfy, "__version__", "7.0.0")
    try:
        assert repair._shortcut() is None
        calls = []
        monkeypatch.setattr(ftfy, "fix_text", lambda text: calls.append(text) or text)
        assert repair.fix_text("中文") == "中文"
        assert calls == ["中文"]
    finally:
        repair._shortcut.cache_clear()


def test_text_longer_than_a_segment_goes_to_ftfy(monkeypatch):
    calls = []
    shortcut = repair._shortcut()
    monkeypatch.setattr(repair, "_FTFY_SEGMENT_CHARS", 8)
    monkeypatch.setattr(shortcut, "fix_text", lambda text: calls.append(text) or ftfy.fix_text(text))
    assert repair.fix_text("中文字幕中文字幕中") == "中文字幕中文字幕中"
    assert calls == ["中文字幕中文字幕中"]
