"""Benchmark: `clip.tokenize` against the original's, on the same realistic captions.

Makes `count` (10,000) seeded captions of Zipf-distributed words (~90 characters; words drawn from
the BPE vocabulary in merge order, which follows word frequency, with some inflections, numbers,
punctuation, and a few captions with non-ASCII characters or HTML entities, as web alt-text has),
then, for each side in a fresh process of its own:

- builds the tokenizer (timed apart: `build_s`),
- cold: the first pass over all captions, `tokenize(batch)` for batches of `batch_size` (256),
- warm: a second pass over the same captions.

It prints captions per second, cold and warm, for both sides and the ratios, after asserting that
both sides produced identical ids (the run fails otherwise).

`--workload sustained` ("novel text, sustained") measures instead whether the rate holds on a large
corpus whose words keep being new, as in web-scale datasets: `count` (1,000,000) captions of each
corpus in `SUSTAINED_CORPORA` (see `make_sustained_captions`), timed per block of 50,000 captions.
Ours runs each corpus twice, in batches of 1,000 and as one `tokenize` call; the original runs it in
batches of 1,000 (over the first `--original-count` captions, default all). It reports each block's
rate, the slowest block, our peak RSS growth, and the goal: every block of ours at least
`GOAL_SUSTAINED_RATIO` x the original's mean rate and `GOAL_SUSTAINED_HOLD` x our first block, peak
RSS growth under `GOAL_SUSTAINED_RSS_MIB` MiB (the one-call run's own result tensor, count x 77 int32,
not counted). The ids of the captions both sides tokenised are compared by digest.

Both packages are named `clip`, so each side runs in a subprocess: the original with only the
oracle folder on PYTHONPATH and its working directory outside the repository, ours with the
repository first. The original is `clip-anytorch` (the release's code, lightly patched), installed
in a folder of its own; its `pkg_resources` import needs setuptools < 81:

    pip install --no-deps --target .oracle clip-anytorch "setuptools<81"

Run (from the repository root, with our package installed):

    python -m benchmarks.bench_tokenizer [--oracle DIR] [--count 10000] [--batch-size 256] [--seed 0]
    python -m benchmarks.bench_tokenizer --workload sustained [--count 1000000] [--original-count N]

The oracle folder comes from `--oracle`, else the CLIP_ORACLE_PATH environment variable, else
.oracle in the repository. `run(...)` and `run_sustained(...)` return the figures as a dict, for a
suite runner.
"""

import argparse
import bisect
import gc
import gzip
import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

try:
    from benchmarks import _common
except ImportError:  # run by path as a worker process: benchmarks/ itself is first on sys.path
    import _common  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
VOCAB = REPO / "clip" / "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_ORACLE = _common.DEFAULT_ORACLE
DEFAULT_COUNT = 10_000
DEFAULT_BATCH_SIZE = 256
DEFAULT_SEED = 0
MIB = 1 << 20

ZIPF_EXPONENT = 1.07
N_WORDS = 20_000  # most frequent whole words of the vocabulary
MEAN_CHARS, SD_CHARS, MIN_CHARS, MAX_CHARS = 90, 18, 40, 160
P_SUFFIX, SUFFIXES = 0.08, ("s", "ed", "ing", "er", "ly", "'s")
P_NUMBER, P_COMMA, P_PERIOD = 0.03, 0.04, 0.5
P_NON_ASCII, NON_ASCII = 0.02, ("café", "naïve", "—", "“nice”", "it’s", "Zürich", "señor", "😀", "°C")
P_ENTITY, ENTITIES = 0.01, ("&amp;", "&quot;", "&#39;")


# The most frequent words of captions, most frequent first; the rest of the ranks come from the
# vocabulary's whole words in merge order (which follows frequency; some are word pieces).
COMMON_WORDS = (
    "a the of in on and with to is at an for two man woman people person from by image photo picture "
    "white black red blue green yellow brown small large big young old little group next front near "
    "sitting standing holding wearing looking walking playing riding eating table street dog cat car "
    "house tree water field room view background city building road day night top side grass snow "
    "beach sky window child boy girl men women children her his their its this that one three some "
    "close up stock vector illustration design logo icon art style new set pattern hand face head "
    "shirt dress hair plate food pizza cake train bus bike horse bird boat plane kitchen bathroom bed "
    "couch chair wall floor door sign clock phone laptop computer book ball game team player field "
    "tennis baseball soccer frisbee kite umbrella bench park tower bridge river mountain lake forest "
    "flowers garden wedding party christmas summer winter sunset light dark colorful beautiful happy "
    "smiling modern vintage wooden glass metal stone paper flat abstract seamless isolated over under "
    "inside outside through during while has have are being covered filled parked flying lying"
).split()


def _vocabulary_words(count: int = N_WORDS) -> List[str]:
    """COMMON_WORDS, then whole alphabetic words of the BPE vocabulary in merge order."""
    lines = gzip.decompress(VOCAB.read_bytes()).decode("utf-8").split("\n")[1:]
    words = list(dict.fromkeys(COMMON_WORDS))
    seen = set(words)
    for line in lines:
        merged = line.replace(" ", "")
        if merged.endswith("</w>"):
            word = merged[: -len("</w>")]
            if len(word) > 2 and word.isascii() and word.isalpha() and word not in seen:
                words.append(word)
                seen.add(word)
                if len(words) == count:
                    break
    return words


def make_captions(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> List[str]:
    """`count` seeded captions of Zipf-distributed words, ~90 characters each."""
    rng = random.Random(seed)
    words = _vocabulary_words()
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(len(words))))
    total = cumulative[-1]

    def word() -> str:
        picked = words[bisect.bisect(cumulative, rng.random() * total)]
        if rng.random() < P_SUFFIX:
            picked += rng.choice(SUFFIXES)
        if rng.random() < P_NUMBER:
            picked = str(rng.choice([2, 3, 10, 12, 100, 1998, 2019, 4]))
        if rng.random() < P_COMMA:
            picked += ","
        return picked

    captions = []
    for _ in range(count):
        target = min(MAX_CHARS, max(MIN_CHARS, int(rng.gauss(MEAN_CHARS, SD_CHARS))))
        parts: List[str] = []
        length = -1
        while length < target:
            parts.append(word())
            length += len(parts[-1]) + 1
        if rng.random() < P_NON_ASCII:
            parts[rng.randrange(len(parts))] = rng.choice(NON_ASCII)
        if rng.random() < P_ENTITY:
            parts.insert(rng.randrange(len(parts)), rng.choice(ENTITIES))
        text = " ".join(parts).rstrip(",")
        text = text[0].upper() + text[1:]
        if rng.random() < P_PERIOD:
            text += "."
        captions.append(text)
    return captions


def _worker(args: argparse.Namespace) -> None:
    """Runs in a subprocess: builds one side's tokenizer, times two passes, saves the ids."""
    import torch

    import clip
    import clip.clip

    expected_root = Path(args.expect_root).resolve()
    if expected_root not in Path(clip.__file__).resolve().parents:
        sys.exit(f"expected `clip` from {expected_root}, imported {clip.__file__}")
    captions = json.loads(Path(args.captions).read_text(encoding="utf-8"))
    batch_size = args.batch_size

    start = time.perf_counter()
    if args.worker == "ours":
        from clip._tokenize import get_tokenizer

        get_tokenizer()
    else:  # the original builds its tokenizer at import: time a second build
        from clip.simple_tokenizer import SimpleTokenizer

        SimpleTokenizer()
    build_s = time.perf_counter() - start

    passes = []
    outputs = []
    for _ in range(2):  # cold, then warm
        start = time.perf_counter()
        batches = [clip.tokenize(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)]
        passes.append(time.perf_counter() - start)
        outputs.append(torch.cat(batches).to(torch.int64))
    if not torch.equal(outputs[0], outputs[1]):
        sys.exit("cold and warm passes differ")
    torch.save(outputs[1], args.output)
    print(
        json.dumps(
            {"build_s": build_s, "cold_s": passes[0], "warm_s": passes[1], "dtype": str(batches[0].dtype)}
        )
    )


def _run_side(
    side: str, captions_file: Path, output: Path, batch_size: int, root: str, workdir: Path
) -> Dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        side,
        "--captions",
        str(captions_file),
        "--output",
        str(output),
        "--batch-size",
        str(batch_size),
        "--expect-root",
        root,
    ]
    # The working directory is outside the repository and `root` alone leads PYTHONPATH, so that
    # `import clip` is the side's own package.
    env = _common.oracle_env(root)[0] if side == "original" else {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} benchmark process failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(
    count: int = DEFAULT_COUNT,
    batch_size: int = DEFAULT_BATCH_SIZE,
    oracle: Optional[str] = None,
    seed: int = DEFAULT_SEED,
) -> Dict[str, Any]:
    """Run the benchmark; returns captions/s of both sides, cold and warm, and the ratios.

    Raises AssertionError if the two sides' ids are not identical.
    """
    import torch

    oracle = _common.resolve_oracle(oracle)
    captions = make_captions(count, seed)
    with tempfile.TemporaryDirectory(prefix="clip-bench-tokenizer-") as tmp:
        workdir = Path(tmp)
        captions_file = workdir / "captions.json"
        captions_file.write_text(json.dumps(captions), encoding="utf-8")
        sides = {}
        ids = {}
        for side, root in (("original", oracle), ("ours", str(REPO))):
            output = workdir / f"{side}.pt"
            sides[side] = _run_side(side, captions_file, output, batch_size, root, workdir)
            ids[side] = torch.load(output, weights_only=True)
    identical = torch.equal(ids["original"], ids["ours"])
    if not identical:
        raise AssertionError("clip.tokenize ids differ from the original's")

    rates = {
        side: {"cold": count / figures["cold_s"], "warm": count / figures["warm_s"]}
        for side, figures in sides.items()
    }
    return {
        "benchmark": "tokenizer",
        "captions": count,
        "mean_chars": sum(map(len, captions)) / count,
        "batch_size": batch_size,
        "seed": seed,
        "original_captions_per_s": rates["original"],
        "ours_captions_per_s": rates["ours"],
        "cold_ratio": rates["ours"]["cold"] / rates["original"]["cold"],
        "warm_ratio": rates["ours"]["warm"] / rates["original"]["warm"],
        "build_s": {side: figures["build_s"] for side, figures in sides.items()},
        # The first pass with the tokenizer's construction counted in (the original builds it when
        # `clip` is imported; ours on first use).
        "cold_with_build_ratio": (sides["original"]["build_s"] + sides["original"]["cold_s"])
        / (sides["ours"]["build_s"] + sides["ours"]["cold_s"]),
        "dtype": {side: figures["dtype"] for side, figures in sides.items()},
        "identical": identical,
    }


# ------------------------------------------------------------------------------------------------
# "novel text, sustained": a large corpus whose words keep being new

SUSTAINED_COUNT = 1_000_000
SUSTAINED_BLOCK = 50_000
SUSTAINED_BATCH_SIZE = 1_000
SUSTAINED_CORPORA = ("novel", "multilingual", "urls")
SUSTAINED_FEEDS = ("batches", "one call")
CONTEXT_LENGTH = 77
# Goals from the issue: every block of ours at least this many times the original's mean rate, and
# at least this share of our own first block; peak RSS growth of the run below this many MiB.
GOAL_SUSTAINED_RATIO = 2.5
GOAL_SUSTAINED_HOLD = 0.7
GOAL_SUSTAINED_RSS_MIB = 300

# Never-repeating words: word number n is n, scrambled by a bijection of 32-bit integers (an odd
# multiplier), written in base len(alphabet) with the alphabet's syllables (no leading "zero"), so
# distinct n give distinct words while n < 2**32, and neighbouring n look unrelated.
_SCRAMBLE = 2_654_435_761
_WORD_BITS = 32
_LATIN = tuple(c + v for c in "bdfghklmnprstvz" for v in "aeiou")
_ACCENTED = tuple(c + v for c in "bcdlmnrstvñç" for v in "aeiouéèàüøåö")
_CYRILLIC = tuple(c + v for c in "бвгдзклмнпрстфхш" for v in "аеиоуяю")
_GREEK = tuple(c + v for c in "βγδζθκλμνξπρστφχ" for v in "αεηιουω")
_ARABIC = tuple("بتثجحخدذرزسشصضطظعغفقكلمنهوي")
_CJK = tuple(chr(0x4E00 + k) for k in range(2_000))  # the 2,000 first CJK unified ideographs
_EMOJI = tuple(chr(0x1F300 + k) for k in range(256))  # misc symbols and pictographs
_SCRIPTS = {"latin": _LATIN, "accented": _ACCENTED, "cyrillic": _CYRILLIC, "greek": _GREEK}
_SCRIPTS.update({"arabic": _ARABIC, "cjk": _CJK})
P_COMMON = 0.5  # share of a caption's words that are common English words (the rest are new)
WORDS_PER_CAPTION = (7, 13)
_NUMBER_FORMATS = (
    "{a},{b:03d}",
    "{a}.{b:02d}",
    "${a}.{b:02d}",
    "20{c:02d}-{d:02d}-{e:02d}",
    "{d}:{c:02d}",
    "+1 ({a:03d}) {b:03d}-{a:04d}",
    "{a}%",
    "#{b}",
    "{c}x{d}",
)
_TLDS = ("com", "org", "net", "io", "de", "co.uk", "app")


class _NewWords:
    """Deterministic source of words never produced before (see _SCRAMBLE)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, alphabet: Sequence[str] = _LATIN) -> str:
        m = (self.n * _SCRAMBLE + 1) % (1 << _WORD_BITS)
        self.n += 1
        base = len(alphabet)
        out = []
        while True:
            m, digit = divmod(m, base)
            out.append(alphabet[digit])
            if not m:
                return "".join(out)


def _novel_token(rng: random.Random, new: _NewWords) -> str:
    """A name, a code or a hashtag built on a new word."""
    kind = rng.random()
    word = new()
    if kind < 0.4:  # a name
        return word.capitalize()
    if kind < 0.6:  # a hashtag or a handle
        return rng.choice("#@") + word
    if kind < 0.8:  # a product or reference code
        return f"{word[:4].upper()}-{rng.randrange(10_000):04d}{word[4:]}"
    return word


def _multilingual_token(rng: random.Random, new: _NewWords, script: str) -> str:
    if rng.random() < 0.1:  # a run of 4 emoji: 256**4 = 2**32 runs, one per new word
        return new(_EMOJI)
    if script == "cjk":
        word = new(_CJK)
        return word + rng.choice(("", "、", "，", "。"))
    return new(_SCRIPTS[script])


def _url_token(rng: random.Random, new: _NewWords) -> str:
    kind = rng.random()
    if kind < 0.45:  # a number, a price, a date, a time, a phone number
        a, b = rng.randrange(1, 1000), rng.randrange(1000)
        c, d, e = rng.randrange(100), rng.randrange(1, 13), rng.randrange(1, 29)
        return rng.choice(_NUMBER_FORMATS).format(a=a, b=b, c=c, d=d, e=e)
    if kind < 0.8:  # a URL, sometimes with a query string
        url = f"https://www.{new()}.{rng.choice(_TLDS)}/{new()}/{rng.randrange(100_000)}"
        if rng.random() < 0.3:
            url += f"?id={new()}{rng.randrange(100)}&ref={rng.choice(COMMON_WORDS)}"
        return url
    if kind < 0.9:  # an e-mail address
        return f"{new()}.{rng.choice(COMMON_WORDS)}@{new()}.{rng.choice(_TLDS)}"
    return _novel_token(rng, new)


def iter_sustained_captions(corpus: str, seed: int = DEFAULT_SEED) -> Iterator[str]:
    """Endless seeded captions of `corpus`, whose new words never repeat (for 2**32 words).

    - "novel": English captions where half the words (`P_COMMON`) are common words and the others
      new: names, hashtags and handles, product codes (letters and digits), plain words.
    - "multilingual": the same with the new words in one script per caption, in turn: Latin,
      accented Latin, Cyrillic, Greek, Arabic, CJK (2-3 ideographs, then a comma or none), and one
      word in ten a run of 4 emoji.
    - "urls": new words inside URLs (some with query strings, so with "&"), e-mail addresses, and
      numbers, prices, dates, times and phone numbers.

    No caption contains a line break (the benchmark stores them one a line).
    """
    if corpus not in SUSTAINED_CORPORA:
        raise ValueError(f"corpus must be one of {SUSTAINED_CORPORA}, got {corpus!r}")
    rng = random.Random(f"{corpus}-{seed}")
    new = _NewWords()
    scripts = tuple(_SCRIPTS)
    for index in itertools.count():
        script = scripts[index % len(scripts)]
        parts = []
        for _ in range(rng.randint(*WORDS_PER_CAPTION)):
            if rng.random() < P_COMMON:
                parts.append(rng.choice(COMMON_WORDS))
            elif corpus == "novel":
                parts.append(_novel_token(rng, new))
            elif corpus == "multilingual":
                parts.append(_multilingual_token(rng, new, script))
            else:
                parts.append(_url_token(rng, new))
        yield " ".join(parts)


def make_sustained_captions(corpus: str, count: int = SUSTAINED_COUNT, seed: int = DEFAULT_SEED) -> List[str]:
    """The first `count` captions of `iter_sustained_captions(corpus, seed)`."""
    return list(itertools.islice(iter_sustained_captions(corpus, seed), count))


def _rss_bytes(field: str) -> Optional[int]:
    """VmRSS or VmHWM (peak) of this process, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _sustained_worker(args: argparse.Namespace) -> None:
    """Runs in a subprocess: one side, one corpus, one way of feeding it; per-block timings."""
    import torch

    import clip
    import clip.clip

    _common.check_imported_from(clip.__file__, args.expect_root)
    with open(args.captions, encoding="utf-8") as f:
        captions = f.read().split("\n")[: args.count]
    if args.worker == "ours":
        from clip._tokenize import get_tokenizer

        tokenizer = get_tokenizer()
    else:  # the original builds its tokenizer at import
        tokenizer = clip.clip._tokenizer
    # One-time set-up out of the timing, on both sides: a word that needs BPE, a text that needs ftfy.
    clip.tokenize(["a photo of a qzxvbkw", "café naïve"])
    block, batch_size, count = args.block, args.batch_size, len(captions)
    digest = hashlib.sha256()
    digest_rows = args.digest_rows
    gc.collect()
    peak_reset = _reset_peak_rss()
    rss_before = _rss_bytes("VmRSS") or 0
    block_s: List[float] = []
    output_bytes = 0
    if args.feed == "batches":
        elapsed = 0.0
        for start in range(0, count, batch_size):
            batch = captions[start : start + batch_size]
            t0 = time.perf_counter()
            tokens = clip.tokenize(batch, truncate=True)
            elapsed += time.perf_counter() - t0
            if start < digest_rows:
                digest.update(tokens[: digest_rows - start].to(torch.int32).numpy().data)
            if (start + batch_size) % block == 0 or start + batch_size >= count:
                block_s.append(elapsed)
                elapsed = 0.0
            del tokens
    else:  # one call; the blocks are timed by counting the texts as the tokenizer reads them
        ticks: List[float] = []
        name = "_packed_row" if args.worker == "ours" else "encode"
        encode: Callable[..., Any] = getattr(tokenizer, name)
        seen = [0]

        def counted(text: str, *rest: Any) -> Any:
            encoded = encode(text, *rest)
            seen[0] += 1
            if seen[0] % block == 0:
                ticks.append(time.perf_counter())
            return encoded

        setattr(tokenizer, name, counted)
        t0 = time.perf_counter()
        tokens = clip.tokenize(captions, truncate=True)
        t1 = time.perf_counter()
        delattr(tokenizer, name)
        # Block k ends when text k * block is encoded; the last block ends with the call.
        edges = [t0, *ticks[: (count - 1) // block], t1]
        block_s = [b - a for a, b in zip(edges, edges[1:])]
        output_bytes = tokens.numel() * tokens.element_size()
    peak = _rss_bytes("VmHWM") if peak_reset else None
    if args.feed != "batches":  # hashed in place (no copy), after the peak was read
        digest.update(tokens[:digest_rows].to(torch.int32).numpy().data)
    if peak is None:  # ru_maxrss: KiB on Linux; the peak of the whole process, set-up included
        import resource  # POSIX only

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sizes = [block] * (len(block_s) - 1) + [count - block * (len(block_s) - 1)]
    figures: Dict[str, Any] = {
        "captions": count,
        "block_rates": [n / s for n, s in zip(sizes, block_s)],
        "block_sizes": sizes,
        "total_s": sum(block_s),
        "mean_rate": count / sum(block_s),
        "rss_before": rss_before,
        "peak_rss_growth": peak - rss_before,
        "peak_measured_from_start_of_run": peak_reset,
        "output_bytes": output_bytes,
        "digest_rows": min(digest_rows, count),
        "digest": digest.hexdigest(),
    }
    if args.worker == "ours":
        figures["cache_entries"] = {"words": len(tokenizer._word_cache), "texts": len(tokenizer._text_cache)}
        figures["cache_bytes"] = {
            "words": tokenizer._word_cache_bound.nbytes,
            "texts": tokenizer._text_cache_bound.nbytes,
        }
    print(json.dumps(figures))


def _run_sustained_side(
    side: str,
    feed: str,
    captions_file: Path,
    count: int,
    digest_rows: int,
    block: int,
    root: str,
    workdir: Path,
) -> Dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--workload",
        "sustained",
        "--worker",
        side,
        "--feed",
        feed,
        "--captions",
        str(captions_file),
        "--count",
        str(count),
        "--digest-rows",
        str(digest_rows),
        "--block",
        str(block),
        "--expect-root",
        root,
    ]
    env = _common.oracle_env(root)[0] if side == "original" else {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} sustained benchmark process failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_sustained(
    count: int = SUSTAINED_COUNT,
    original_count: Optional[int] = None,
    corpora: Sequence[str] = SUSTAINED_CORPORA,
    oracle: Optional[str] = None,
    seed: int = DEFAULT_SEED,
    progress: Optional[Callable[[str], None]] = None,
    block: int = SUSTAINED_BLOCK,
) -> Dict[str, Any]:
    """The "novel text, sustained" workload; per corpus, per-block rates of both sides and the goals.

    `original_count` (default `count`) captions, a multiple of `block` unless it is all of them,
    are given to the original: its mean rate over them is the reference. Raises
    AssertionError if the ids of the captions both sides tokenised differ.
    """
    oracle = _common.resolve_oracle(oracle)
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    original_count = count if original_count is None else min(original_count, count)
    if block < 1 or block % SUSTAINED_BATCH_SIZE:
        raise ValueError(f"block must be a positive multiple of {SUSTAINED_BATCH_SIZE}, got {block}")
    if original_count < count and original_count % block:
        raise ValueError(f"original_count must be a multiple of {block}, got {original_count}")
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clip-bench-sustained-") as tmp:
        workdir = Path(tmp)
        for corpus in corpora:
            captions_file = workdir / f"{corpus}.txt"
            with open(captions_file, "w", encoding="utf-8") as f:
                f.write("\n".join(make_sustained_captions(corpus, count, seed)))
            sides: Dict[str, Any] = {}
            runs = [("original", "batches", original_count, oracle)]
            runs += [("ours", feed, count, str(REPO)) for feed in SUSTAINED_FEEDS]
            for side, feed, n, root in runs:
                if progress:
                    progress(f"{corpus}: {side}, {feed}, {n:,} captions")
                figures = _run_sustained_side(
                    side, feed, captions_file, n, original_count, block, root, workdir
                )
                sides[f"{side}, {feed}"] = figures
                if progress:
                    progress(
                        f"{corpus}: {side}, {feed}: mean {figures['mean_rate']:,.0f} captions/s, blocks "
                        + " ".join(f"{rate:,.0f}" for rate in figures["block_rates"])
                    )
            reference = sides["original, batches"]
            for key, figures in sides.items():
                if figures["digest"] != reference["digest"]:
                    raise AssertionError(f"{corpus}: ids of {key} differ from the original's")
            original_mean = reference["mean_rate"]
            for feed in SUSTAINED_FEEDS:
                ours = sides[f"ours, {feed}"]
                rates = ours["block_rates"]
                # The one call's result (count x 77 int32) is what the caller asked for, not growth.
                growth_mib = (ours["peak_rss_growth"] - ours["output_bytes"]) / MIB
                ours["min_block_rate"] = min(rates)
                ours["min_ratio_to_original_mean"] = min(rates) / original_mean
                ours["min_share_of_first_block"] = min(rates) / rates[0]
                ours["peak_rss_growth_mib_without_output"] = growth_mib
                ours["met"] = (
                    min(rates) >= GOAL_SUSTAINED_RATIO * original_mean
                    and min(rates) >= GOAL_SUSTAINED_HOLD * rates[0]
                    and growth_mib < GOAL_SUSTAINED_RSS_MIB
                )
            sample = make_sustained_captions(corpus, min(count, 1000), seed)
            results[corpus] = {**sides, "mean_chars": sum(map(len, sample)) / len(sample)}
    return {
        "benchmark": "tokenizer, novel text sustained",
        "captions": count,
        "original_captions": original_count,
        "block": block,
        "batch_size": SUSTAINED_BATCH_SIZE,
        "seed": seed,
        "corpora": results,
        "goal": {
            "ratio_to_original_mean": GOAL_SUSTAINED_RATIO,
            "share_of_first_block": GOAL_SUSTAINED_HOLD,
            "peak_rss_growth_mib": GOAL_SUSTAINED_RSS_MIB,
        },
    }


def _print_sustained(result: Dict[str, Any]) -> None:
    print(
        f"novel text, sustained: {result['captions']:,} captions per corpus (the original: "
        f"{result['original_captions']:,}), blocks of {result['block']:,}; goal: every block >= "
        f"{GOAL_SUSTAINED_RATIO}x the original's mean and >= {GOAL_SUSTAINED_HOLD:.0%} of our first, "
        f"peak RSS growth < {GOAL_SUSTAINED_RSS_MIB} MiB"
    )
    for corpus, sides in result["corpora"].items():
        print(f"\n{corpus} ({sides['mean_chars']:.0f} characters a caption on average); ids identical")
        for key, f in sides.items():
            if key == "mean_chars":
                continue
            blocks = " ".join(f"{rate:,.0f}" for rate in f["block_rates"])
            print(f"  {key:>17}: mean {f['mean_rate']:8,.0f}/s  min block {min(f['block_rates']):8,.0f}/s")
            print(f"  {'':>17}  blocks: {blocks}")
            line = f"  {'':>17}  peak RSS growth {f['peak_rss_growth'] / MIB:.0f} MiB"
            if f["output_bytes"]:
                line += f" (of which the result tensor {f['output_bytes'] / MIB:.0f} MiB)"
            print(line)
            if "met" in f:
                print(
                    f"  {'':>17}  min block / original's mean {f['min_ratio_to_original_mean']:.2f}x, "
                    f"/ our first block {f['min_share_of_first_block']:.0%}; goal met: {f['met']}"
                )


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload",
        choices=("zipf", "sustained"),
        default="zipf",
        help="zipf: cold and warm passes over Zipf-distributed captions (default); sustained: novel "
        "text, per block of 50,000 captions",
    )
    parser.add_argument("--oracle", default=None, help="folder holding the original `clip` package")
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help=f"number of captions (default {DEFAULT_COUNT:,}; sustained: {SUSTAINED_COUNT:,} per corpus)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="captions per tokenize call (zipf)"
    )
    parser.add_argument(
        "--original-count",
        type=int,
        default=None,
        help="sustained: captions given to the original (a multiple of 50,000; default all)",
    )
    parser.add_argument(
        "--corpora", nargs="+", choices=SUSTAINED_CORPORA, default=list(SUSTAINED_CORPORA), help="sustained"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the captions")
    parser.add_argument("--json", default=None, help="also save the figures to this JSON file")
    # Internal: the subprocess that times one side.
    parser.add_argument("--worker", choices=("original", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--captions", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--expect-root", help=argparse.SUPPRESS)
    parser.add_argument("--feed", choices=SUSTAINED_FEEDS, help=argparse.SUPPRESS)
    parser.add_argument("--digest-rows", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--block", type=int, default=SUSTAINED_BLOCK, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    sustained = args.workload == "sustained"
    if args.worker:
        if sustained:
            args.batch_size = SUSTAINED_BATCH_SIZE
            _sustained_worker(args)
        else:
            _worker(args)
        return
    if sustained:
        result = run_sustained(
            args.count or SUSTAINED_COUNT,
            args.original_count,
            args.corpora,
            args.oracle,
            args.seed,
            progress=lambda message: print(message, file=sys.stderr, flush=True),
        )
        _print_sustained(result)
    else:
        result = run(args.count or DEFAULT_COUNT, args.batch_size, args.oracle, args.seed)
        _print_zipf(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")


def _print_zipf(result: Dict[str, Any]) -> None:
    print(
        f"{result['captions']} captions, {result['mean_chars']:.1f} characters on average, "
        f"batches of {result['batch_size']}; ids identical: {result['identical']}"
    )
    for side in ("original", "ours"):
        rates = result[f"{side}_captions_per_s"]
        print(
            f"{side:>8}: cold {rates['cold']:10.0f} captions/s   warm {rates['warm']:10.0f} captions/s   "
            f"(tokenizer build {result['build_s'][side] * 1000:.0f} ms, {result['dtype'][side]})"
        )
    print(
        f"   ratio: cold {result['cold_ratio']:.1f}x   warm {result['warm_ratio']:.1f}x   "
        f"(cold with the tokenizer build: {result['cold_with_build_ratio']:.1f}x)"
    )


if __name__ == "__main__":
    main()
