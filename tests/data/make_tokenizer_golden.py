"""Make the tokenizer golden files from the ORIGINAL tokenizer (the test oracle).

Run it with our virtual environment; it runs itself again with only the original package's folder
on PYTHONPATH and a scratch working directory, so that our own `clip/` cannot shadow it:

    pip install --no-deps --target .oracle clip-anytorch==2.6.0 "setuptools<81"   # once
    .venv/bin/python tests/data/make_tokenizer_golden.py [--oracle DIR]

(DIR defaults to $CLIP_ORACLE_PATH, else .oracle in the repository.)

It writes, next to itself:

* ``tokenizer_golden.json.gz``: ~3,500 strings in many categories (plain captions, punctuation,
  digits, contractions, emoji, HTML entities, mojibake, NFC/NFD, scripts, control characters, ...)
  with the original's ``encode`` ids and ``decode(encode(text))``; ``tokenize(..., truncate=True)``
  rows at several context lengths; the too-long error message; ``decode`` of arbitrary id lists;
  ``bpe`` of byte-encoded tokens; digests of the tokenizer's tables.
* ``tokenizer_long_golden.json.gz``: ~1 MB texts, each given as ``unit * repeat + suffix``, with the
  original's truncated rows and full id counts.

Everything is generated from fixed seeds, so re-running it gives the same files.
"""

import gzip
import hashlib
import json
import random
import sys
import time
import unicodedata
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

sys.path.insert(0, str(HERE.parent / "support"))  # _golden (imports no clip)
from _golden import oracle_argument, under_oracle  # noqa: E402

if __name__ == "__main__":
    under_oracle(__file__, oracle_argument(__doc__))  # reruns this script under the oracle, or returns there

import clip  # noqa: E402  (the oracle, checked by under_oracle)
from clip.simple_tokenizer import SimpleTokenizer  # noqa: E402

SEED = 20240611
CONTEXT_LENGTHS = (1, 2, 3, 5, 16, 77)
LONG_TOKENS = 77

# --------------------------------------------------------------------------------- vocabularies

NOUNS = (
    "cat dog bird car tree house person woman man child bicycle train boat plane pizza cake "
    "mountain river beach city street kitchen table chair laptop phone guitar horse cow sheep "
    "elephant giraffe zebra bear umbrella kite surfboard skateboard bus truck flower garden sky"
).split()
ADJECTIVES = (
    "small large red blue green old young happy tired wooden shiny wet dry busy quiet empty "
    "crowded bright dark fluffy striped spotted ancient modern tiny huge beautiful ugly"
).split()
VERBS = (
    "sitting standing running eating holding riding playing looking walking sleeping jumping "
    "flying parked lying waiting driving"
).split()
PLACES = (
    "on a table|in the park|next to a window|on the beach|in a field|at night|in the snow|"
    "under a tree|on a street|in a kitchen|near the river|at the station"
).split("|")
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
CONTRACTION_WORDS = ["it", "don", "we", "they", "I", "you", "he", "she", "cat", "Bob", "can", "won"]
PUNCT = list("!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "?!", "--", "—", "–", "…", "«", "»", "¿", "¡"]
EMOJI = [
    "😀",
    "😂",
    "🥲",
    "❤️",
    "❤",
    "👍",
    "🔥",
    "🎉",
    "🐱",
    "🐶",
    "🍕",
    "🚀",
    "✨",
    "🌈",
    "☕",
    "⚽",
    "👨\u200d👩\u200d👧\u200d👦",
    "👩\u200d💻",
    "🏳️\u200d🌈",
    "🏴\u200d☠️",
    "👁️\u200d🗨️",
    "🧑\u200d🤝\u200d🧑",
    "1️⃣",
    "#️⃣",
    "©️",
    "™️",
    "☺︎",
    "✌️",
]
SKIN_TONES = ["\U0001f3fb", "\U0001f3fc", "\U0001f3fd", "\U0001f3fe", "\U0001f3ff"]
TONABLE = ["👍", "👋", "🤝", "👩", "🧒", "💪", "🙏", "👌"]
FLAGS = [
    "🇫🇷",
    "🇯🇵",
    "🇺🇸",
    "🇩🇪",
    "🇧🇷",
    "🇮🇳",
    "🇺🇦",
    "🇪🇺",
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
]
ENTITIES = [
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&apos;",
    "&#39;",
    "&#x27;",
    "&nbsp;",
    "&eacute;",
    "&Eacute;",
    "&EACUTE;",
    "&hellip;",
    "&mdash;",
    "&ndash;",
    "&lsquo;",
    "&rsquo;",
    "&ldquo;",
    "&rdquo;",
    "&copy;",
    "&copy",
    "&reg",
    "&amp",
    "&lt",
    "&#169;",
    "&#xA9;",
    "&#x1F600;",
    "&#128512;",
    "&#0;",
    "&#xd800;",
    "&#x110000;",
    "&#128;",
    "&#150;",
    "&#10;",
    "&#9;",
    "&#13;",
    "&#x85;",
    "&;",
    "&#;",
    "&#x;",
    "& ",
    "&notin;",
    "&notit;",
    "&frac12;",
    "&Tab;",
    "&NewLine;",
    "&ZeroWidthSpace;",
    "&zwj;",
    "&shy;",
    "&amp;amp;",
    "&amp;lt;",
    "&amp;gt;",
    "&amp;#39;",
    "&amp;quot;",
    "&amp;amp;amp;",
    "&amp;nbsp;",
    "&amp;eacute;",
    "&amp;#x27;",
    "&amp;amp;amp;amp;",
    "&ampamp;",
    "&lt;b&gt;",
    "&lt;br/&gt;",
]
ACCENTED = [
    "café",
    "naïve",
    "résumé",
    "Zürich",
    "São Paulo",
    "crème brûlée",
    "façade",
    "jalapeño",
    "Ærøskøbing",
    "Ångström",
    "Łódź",
    "Dvořák",
    "smörgåsbord",
    "Mötley Crüe",
    "Citroën",
    "piñata",
    "über",
    "Straße",
    "ﬁancée",
    "Ελληνικά",
    "Москва",
    "Ελλάς",
    "ὈΔΥΣΣΕΎΣ",
    "Việt Nam",
    "Phở",
    "Ỳ",
    "ḱṷṓn",
]
SCRIPTS = {
    "cjk": [
        "中文字符",
        "我爱北京天安门",
        "日本語のテキスト",
        "ひらがな カタカナ",
        "漢字",
        "한국어 텍스트",
        "東京タワー",
        "猫が好きです。",
        "你好，世界！",
        "「引用」『二重』",
        "〜ー・",
        "𠀀𠀁𪚥",
    ],
    "arabic": ["مرحبا بالعالم", "اللُّغَةُ العَرَبِيَّة", "قطة على الطاولة", "١٢٣٤٥", "ﷺ", "لا", "ﻻ", "٫٬"],
    "hebrew": ["שלום עולם", "עִבְרִית", "חתול על השולחן", "ﬠﬡ", "׳״"],
    "devanagari": ["नमस्ते दुनिया", "हिन्दी", "क्षत्रिय", "१२३", "ॐ", "कि़", "स्त्री"],
    "thai": ["สวัสดีชาวโลก", "ภาษาไทย", "แมวบนโต๊ะ", "๑๒๓", "กรุงเทพมหานคร"],
    "greek": ["ΟΔΟΣ", "Σ", "ΣΑΣ", "ΌΣΟΣ.", "ΑΣ ΣΑ", "σοφός", "ΟΔΥΣΣΕΥΣ'Σ", "Σ̈Α", "ΑΣ̈", "Α.Σ", "ΑΣ1"],
    "turkish": ["İstanbul", "ISTANBUL", "ıIiİ", "DİYARBAKIR", "İ̇", "Iı", "İi", "KIRIKKALE"],
    "ligatures": ["ﬁ", "ﬂ", "ﬀ", "ﬃ", "ﬄ", "ﬅ", "ﬆ", "ĳ", "Ĳ", "œuvre", "Æsop", "ﬁnal ﬂow", "ǆ", "ǅ", "Ǆ"],
    "fullwidth": [
        "ＡＢＣ",
        "ｆｕｌｌｗｉｄｔｈ",
        "１２３",
        "！？",
        "ＬＯＵＤ　ＮＯＩＳＥＳ",
        "ｶﾀｶﾅ",
        "＃１",
        "（括弧）",
    ],
    "quotes": [
        "“quoted”",
        "‘single’",
        "don’t",
        "it‘s",
        "„low“",
        "‚x‛",
        "«guillemets»",
        "‹x›",
        "″",
        "‟x‟",
        "ʼn",
    ],
    "other_letters": [
        "ǅungla",
        "ŉ",
        "ﬀi",
        "ß",
        "ẞ",
        "ſ",
        "ſt",
        "K",
        "Å",
        "Ω",
        "µ",
        "ªº",
        "ⅰⅱⅲ",
        "Ⅻ",
        "²³",
        "½",
        "𝐀𝐁𝐂",
        "𝔘𝔫𝔦",
        "ℌ",
        "№",
        "℃",
        "㎏",
        "㈱",
        "①②",
    ],
}
CONTROL = [chr(c) for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]]
ZERO_WIDTH = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u00ad",
    "\u180e",
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202e",
    "\u2066",
    "\u2069",
    "\ufe0f",
    "\ufe0e",
    "\u034f",
    "\U000e0001",
    "\U000e0041",
]
WHITESPACE = [
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x1f",
    "\x85",
    "\xa0",
    "\u1680",
    "\u2000",
    "\u2007",
    "\u200a",
    "\u2028",
    "\u2029",
    "\u202f",
    "\u205f",
    "\u3000",
]
TERMINAL = [
    "\x1b[31m",
    "\x1b[0m",
    "\x1b[1;32m",
    "\x1b[38;5;208m",
    "\x1b[K",
    "\x1b[2J",
    "\x1b]0;title\x07",
    "\x1b(B",
    "\x1b[",
    "\x1b",
]
SPECIALS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|STARTOFTEXT|>",
    "<|EndOfText|>",
    "<|startoftext|",
    "<|endoftext",
    "|endoftext|>",
    "<| endoftext |>",
    "<|ſtartoftext|>",
    "<|startoftext|><|endoftext|>",
]


def caption(rng: random.Random) -> str:
    words = [
        rng.choice(["a", "the", "an", "A", "The", "two", "three"]),
        rng.choice(ADJECTIVES),
        rng.choice(NOUNS),
        rng.choice(VERBS),
        rng.choice(PLACES),
    ]
    text = " ".join(words)
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:] + rng.choice([".", "!", "", "?"])
    if rng.random() < 0.1:
        text = text.upper()
    return text


def mojibake(text: str, rng: random.Random) -> str:
    raw = text.encode("utf-8")
    encoding = rng.choice(["windows-1252", "latin-1", "windows-1252", "cp437", "macroman", "iso-8859-2"])
    broken = raw.decode(encoding, errors="replace")
    if rng.random() < 0.2:  # twice broken
        broken = broken.encode("utf-8").decode("windows-1252", errors="replace")
    return broken


def random_unicode(rng: random.Random, length: int) -> str:
    ranges = [
        (0x20, 0x7E),
        (0x00, 0x1F),
        (0x80, 0xFF),
        (0x100, 0x24F),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x590, 0x5FF),
        (0x600, 0x6FF),
        (0x900, 0x97F),
        (0xE00, 0xE7F),
        (0x1E00, 0x1EFF),
        (0x2000, 0x206F),
        (0x2100, 0x218F),
        (0x3000, 0x30FF),
        (0x4E00, 0x4FFF),
        (0xAC00, 0xAD00),
        (0xD800, 0xDFFF),
        (0xFB00, 0xFB4F),
        (0xFE00, 0xFE0F),
        (0xFF00, 0xFFEF),
        (0xFFF0, 0xFFFF),
        (0x1F300, 0x1F6FF),
        (0x1D400, 0x1D7FF),
        (0xE0000, 0xE007F),
        (0x10FFF0, 0x10FFFF),
    ]
    out = []
    for _ in range(length):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def make_strings() -> Dict[str, List[str]]:
    rng = random.Random(SEED)
    cats: Dict[str, List[str]] = {}
    cats["caption"] = [caption(rng) for _ in range(400)]
    cats["punctuation"] = [
        rng.choice(NOUNS) + "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 4))) + " " + caption(rng)
        for _ in range(120)
    ] + [
        "hello, world!",
        "wait...what?!",
        "(a) [b] {c}",
        "#hashtag @user",
        "e-mail: x@y.com",
        "C++ / C#",
        "50% off!!!",
        "https://example.com/a?b=c&d=e",
        "snake_case_name",
        "don't--stop",
        "a/b\\c",
        "'quoted'",
        "'''",
        "''s",
        "'",
        "!!!!!!!!!!!!!!!!!!!!",
        "....",
        ". . .",
        "-_-",
        ":-)",
        "<3",
        "~~~",
        "$$$",
        "^_^",
    ]
    cats["digits"] = (
        [str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(60)]
        + [f"{rng.random() * 1000:.3f}" for _ in range(30)]
        + [
            "1,000,000",
            "2021-01-01",
            "+1 (555) 123-4567",
            "1st 2nd 3rd 4th",
            "A4 paper",
            "mp3",
            "v1.2.3",
            "0x1F",
            "3.14159",
            "1e-10",
            "100%",
            "12:30pm",
            "٣",
            "۳",
            "३",
            "๓",
            "３",
            "①",
            "²",
            "½",
            "Ⅻ",
            "𝟘𝟙",
            "1/2",
            "-5",
            "room 101",
            "iPhone 12",
            "B2B",
            "4K",
            "1080p",
            "7-11",
            "24/7",
            "007",
            "9.99$",
            "€9,99",
            "¥1000",
            "£5",
        ]
    )
    cats["contraction"] = []
    for c in CONTRACTIONS:
        for case in (str.lower, str.upper, str.title):
            for w in CONTRACTION_WORDS:
                cats["contraction"].append(case(w + c))
        for q in ("’", "‘", "`", "´", "ʼ"):
            cats["contraction"].append("it" + q + c[1:])
        cats["contraction"] += [c, c.upper(), c + "a", c + c, "x" + c + "x", c.upper() + "S", " " + c + " "]
    cats["contraction"] += [
        "I'M",
        "YOU'LL",
        "we'D",
        "THEY'RE",
        "I'Ve",
        "It'S",
        "CAN'T",
        "y'all",
        "rock'n'roll",
        "O'Neill",
        "'tis",
        "'twas",
        "ma'am",
        "don't'll've",
    ]
    cats["emoji"] = []
    for _ in range(160):
        parts = [rng.choice(EMOJI + TONABLE + FLAGS) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.5:
            parts.insert(0, caption(rng))
        cats["emoji"].append(rng.choice(["", " "]).join(parts))
    cats["emoji"] += [t + s for t in TONABLE for s in SKIN_TONES] + FLAGS + EMOJI
    cats["emoji"] += ["🇫🇷🇯🇵🇺🇸", "🇦", "🇦🇧🇨", "\u200d", "👨\u200d", "\u200d👩", "👍\U0001f3fd\u200d", "🏻", "︀"]
    cats["html"] = []
    for _ in range(200):
        parts = [rng.choice(ENTITIES) for _ in range(rng.randint(1, 3))]
        words = [rng.choice(NOUNS) for _ in range(rng.randint(0, 3))]
        mix = parts + words
        rng.shuffle(mix)
        text = rng.choice([" ", "", " & "]).join(mix)
        if rng.random() < 0.3:
            text = rng.choice(["<b>", "<", "a < b ", "<p>"]) + text
        if rng.random() < 0.15:
            text = text + rng.choice(["\n<i>", "\nplain &amp;amp; line", "\n&amp;amp;<"])
        cats["html"].append(text)
    cats["html"] += (
        ENTITIES
        + [e + " <" for e in ENTITIES[:20]]
        + ["AT&T", "Q&A", "&&", "R&amp;D", "&amp;&amp;", "Tom &amp;amp; Jerry", "5 &lt; 6 &gt; 4"]
    )
    cats["mojibake"] = []
    sources = (
        ACCENTED
        + EMOJI[:10]
        + [
            "don’t",
            "“quoted”",
            "it’s — fine…",
            "naïve café",
            "€100",
            "Œuvre",
            "¿Qué?",
            "Ça va",
            "日本",
            "😀 smile",
            "×÷",
            "°C",
            "© 2020",
            "™",
            "½ price",
        ]
    )
    for _ in range(220):
        cats["mojibake"].append(mojibake(rng.choice(sources), rng))
    cats["mojibake"] += [
        "Ã©",
        "â€™",
        "Ã¼ber",
        "cafÃ©",
        "â€œquotedâ€\x9d",
        "Ã¢â‚¬â„¢",
        "ÃƒÂ©",
        "Ã",
        "Ã ",
        "Ã la",
        "voilÃ le travail",
        "sÃ³",
        "âœ” No problems",
        "&macr;\\_(ã\x83\x84)_/&macr;",
        "Broken text&hellip; it&#x2019;s ﬂubberiﬁc!",
        "ÐŸÑ€Ð¸Ð²ÐµÑ‚",
        "Ã\xa0",
        "â€",
        "Ã¤Ã¶Ã¼",
    ]
    cats["nfc_nfd"] = []
    for w in (
        ACCENTED
        + SCRIPTS["devanagari"]
        + SCRIPTS["arabic"]
        + ["한국어", "Å", "ǅ", "ḱṷṓn", "e\u0301", "\u0301", "a\u0308\u0301", "\u0041\u030a", "Ω"]
    ):
        for form in ("NFC", "NFD", "NFKC", "NFKD"):
            cats["nfc_nfd"].append(unicodedata.normalize(form, w))
    for name, words in SCRIPTS.items():
        cats[name] = list(words)
        for _ in range(40):
            picked = [rng.choice(words) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.4:
                picked.append(rng.choice(NOUNS))
            cats[name].append(rng.choice([" ", "", ", "]).join(picked))
    cats["control"] = (
        [f"a{c}b" for c in CONTROL]
        + [c for c in CONTROL]
        + ["".join(rng.choice(CONTROL) for _ in range(5)) + caption(rng) for _ in range(40)]
    )
    cats["zero_width"] = (
        [f"a{z}b" for z in ZERO_WIDTH]
        + [z for z in ZERO_WIDTH]
        + ["\ufeff" + caption(rng) for _ in range(10)]
        + [caption(rng).replace(" ", rng.choice(ZERO_WIDTH)) for _ in range(30)]
        + ["\ufeff", "\ufeff\ufeff", "a\ufeff"]
    )
    cats["whitespace"] = (
        [f"a{w}b" for w in WHITESPACE]
        + [w for w in WHITESPACE]
        + [rng.choice(WHITESPACE).join(caption(rng).split()) for _ in range(40)]
        + ["".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 6))) for _ in range(20)]
        + [
            "line one\r\nline two\r\n",
            "tab\tseparated\tvalues",
            "  leading",
            "trailing  ",
            "\n\n\nx\n\n",
            "a \r b",
            "a\r\rb",
            "\r\n",
            "\n\r",
        ]
    )
    cats["terminal"] = (
        [t + caption(rng) + rng.choice(TERMINAL) for t in TERMINAL for _ in range(3)]
        + TERMINAL
        + ["\x1b[31mred\x1b[0m", "\x1b[1;4;31mbold\x1b[m", "no\x1b[99Xescape"]
    )
    cats["specials"] = (
        SPECIALS
        + [f"a {s} b" for s in SPECIALS]
        + [f"x{s}y" for s in SPECIALS]
        + [caption(rng) + " <|endoftext|>" for _ in range(10)]
        + ["<|endoftext|>" * 3, "<|startoftext|>hello<|endoftext|>"]
    )
    cats["empty"] = [
        "",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        " \t\n ",
        "\u3000",
        "\xa0",
        "\u2028",
        "\ufeff",
        "\x00",
        "\u200b",
        "\x1b[0m",
        "&nbsp;",
        "&#32;",
        "&amp;nbsp;",
        "\x1c",
        "\x85",
    ]
    cats["random_unicode"] = [random_unicode(rng, rng.randint(1, 24)) for _ in range(320)]
    cats["surrogates"] = [
        "\ud800",
        "\udfff",
        "a\ud800b",
        "\udc00\ud800",
        "\ud83d\ude00",
        "\ud83d",
        "x\ude00",
        "\ud800\ud800",
        "&#xd83d;&#xde00;",
    ]
    # Mixtures of categories, joined by assorted separators.
    pool = [s for strings in cats.values() for s in strings]
    cats["mixed"] = [
        rng.choice([" ", "\n", "\r\n", "\t", "", "  "]).join(
            rng.choice(pool) for _ in range(rng.randint(2, 5))
        )
        for _ in range(320)
    ]
    # Texts longer than 77 tokens (the truncate=True path), of every kind.
    cats["long"] = []
    for _ in range(130):
        pieces = []
        while sum(len(p) for p in pieces) < rng.randint(300, 800):
            pieces.append(rng.choice(pool) if rng.random() < 0.4 else caption(rng))
        cats["long"].append(rng.choice([" ", "\n", " ", ", "]).join(pieces))
    cats["long"] += [("a " * n).strip() for n in (74, 75, 76, 77, 78, 100)]
    cats["long"] += ["x" * n for n in (100, 500, 5000)] + ["😀" * 40, "中" * 200, "&amp;" * 100, "1" * 90]
    return cats


def digest(items) -> str:
    return hashlib.sha256(json.dumps(items, ensure_ascii=True).encode()).hexdigest()


def long_recipes(rng: random.Random) -> List[Dict]:
    """~1 MB texts, each ``unit * repeat + suffix``."""
    distinct = (
        " ".join(
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12)))
            for _ in range(5000)
        )
        + " "
    )
    mega = 1 << 20
    recipes = [
        {"name": "plain_ascii", "unit": "a photo of a cat ", "suffix": ""},
        {"name": "distinct_words", "unit": distinct, "suffix": ""},
        {"name": "ascii_entities_one_line", "unit": "Tom &amp; Jerry ", "suffix": ""},
        {"name": "entities_lt_at_end_one_line", "unit": "&amp;amp;amp; x ", "suffix": "<"},
        {"name": "entities_lt_at_end_multiline", "unit": "&amp;amp;amp; x\n", "suffix": "<"},
        {"name": "unicode_one_line", "unit": "café naïve Ωμέγα ΟΔΟΣ 中文 😀 ", "suffix": ""},
        {"name": "unicode_multiline", "unit": "Zürich &amp;amp; <b>bold</b> ﬁne “q” ÃŸ\r\n", "suffix": ""},
        {"name": "mojibake_multiline", "unit": "cafÃ© â€œokâ€\x9d\n", "suffix": ""},
        {"name": "whitespace_then_words", "unit": " ", "suffix": "a photo of a cat"},
        {"name": "newlines_then_words", "unit": "\n", "suffix": "Zürich &amp; co"},
        {"name": "control_heavy", "unit": "\x00a\x1b[31mb\x0bc\x1c ", "suffix": ""},
    ]
    for r in recipes:
        r["repeat"] = max(1, mega // len(r["unit"]))
    return recipes


def main() -> None:
    tok = SimpleTokenizer()
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    cats = make_strings()
    records = []
    for category, strings in cats.items():
        for text in strings:
            ids = tok.encode(text)
            records.append({"c": category, "t": text, "ids": ids, "dec": tok.decode(ids)})
    print(f"{len(records)} strings", file=sys.stderr)

    # tokenize(): truncated rows for texts longer than some context length, and the error text.
    rows = []
    for index, rec in enumerate(records):
        n = len(rec["ids"]) + 2
        for length in CONTEXT_LENGTHS:
            # Every text too long for 77; every 10th text for the short context lengths.
            if n > length and (length == LONG_TOKENS or index % 10 == 0):
                row = clip.tokenize(rec["t"], context_length=length, truncate=True)[0].tolist()
                rows.append({"i": index, "L": length, "row": row})
        if n > LONG_TOKENS:
            try:
                clip.tokenize(rec["t"])
            except RuntimeError as e:
                rec["error"] = str(e)
    rng = random.Random(SEED + 1)
    # decode() of arbitrary id lists (partial UTF-8 byte tokens, specials, padding zeros).
    vocab_size = len(tok.encoder)
    decodes = []
    for _ in range(300):
        ids = [rng.randrange(vocab_size) for _ in range(rng.randint(0, 12))]
        if rng.random() < 0.3:
            ids += [rng.choice([0, 1, 255, 256, 511, sot, eot]) for _ in range(3)]
        decodes.append({"ids": ids, "text": tok.decode(ids)})
    # bpe() of byte-encoded tokens (including ones that are not whole vocabulary entries).
    bpes = []
    for rec in records[::7]:
        for word in tok.pat.findall(rec["t"].lower())[:3]:
            token = "".join(tok.byte_encoder[b] for b in word.encode("utf-8", errors="surrogatepass"))
            bpes.append({"token": token, "bpe": tok.bpe(token)})
    tables = {
        "encoder": digest(list(tok.encoder.items())),
        "decoder": digest(list(tok.decoder.items())),
        "bpe_ranks": digest([[list(k), v] for k, v in tok.bpe_ranks.items()]),
        "byte_encoder": digest(list(tok.byte_encoder.items())),
        "byte_decoder": digest(list(tok.byte_decoder.items())),
        "cache": digest(list(SimpleTokenizer().cache.items())),
        "pattern": tok.pat.pattern,
        "flags": tok.pat.flags,
        "vocab_size": vocab_size,
        "n_merges": len(tok.bpe_ranks),
    }
    golden = {
        "strings": records,
        "rows": rows,
        "decodes": decodes,
        "bpe": bpes,
        "tables": tables,
        "oracle": "clip-anytorch 2.6.0 (OpenAI CLIP tokenizer)",
    }
    out = HERE / "tokenizer_golden.json.gz"
    with gzip.open(out, "wt", encoding="ascii", compresslevel=9) as f:
        json.dump(golden, f, ensure_ascii=True, separators=(",", ":"))
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)

    long_golden = []
    for recipe in long_recipes(random.Random(SEED + 2)):
        text = recipe["unit"] * recipe["repeat"] + recipe["suffix"]
        start = time.perf_counter()
        ids = tok.encode(text)
        row = clip.tokenize(text, truncate=True)[0].tolist()
        seconds = time.perf_counter() - start
        long_golden.append(
            {
                **recipe,
                "n_ids": len(ids),
                "row": row,
                "head_ids": ids[:200],
                "oracle_seconds": round(seconds, 2),
            }
        )
        print(f"long {recipe['name']}: {len(text)} chars, {len(ids)} ids, {seconds:.1f}s", file=sys.stderr)
    out = HERE / "tokenizer_long_golden.json.gz"
    with gzip.open(out, "wt", encoding="ascii", compresslevel=9) as f:
        json.dump(long_golden, f, ensure_ascii=True, separators=(",", ":"))
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
