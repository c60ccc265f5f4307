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

Both packages are named `clip`, so each side runs in a subprocess: the original with only the
oracle folder on PYTHONPATH and its working directory outside the repository, ours with the
repository first. The original is `clip-anytorch` (the release's code, lightly patched), installed
in a folder of its own; its `pkg_resources` import needs setuptools < 81:

    pip install --no-deps --target /work/oracle clip-anytorch "setuptools<81"

Run (from the repository root, with our package installed):

    python -m benchmarks.bench_tokenizer [--oracle DIR] [--count 10000] [--batch-size 256] [--seed 0]

The oracle folder comes from `--oracle`, else the CLIP_ORACLE_PATH environment variable, else
/work/oracle. `run(...)` returns the figures as a dict, for a suite runner.
"""

import argparse
import bisect
import gzip
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

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


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", default=None, help="folder holding the original `clip` package")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="number of captions")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="captions per tokenize call"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the captions")
    # Internal: the subprocess that times one side.
    parser.add_argument("--worker", choices=("original", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--captions", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--expect-root", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    if args.worker:
        _worker(args)
        return
    result = run(args.count, args.batch_size, args.oracle, args.seed)
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
