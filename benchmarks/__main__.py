"""The benchmark suite: `python -m benchmarks` prints one markdown table, ours beside the original.

Rows (select groups with --rows): tokenizer cold and warm, and sustained on novel text (per
corpus: the slowest block of 50,000 captions against the original's mean rate); `clip.load` time
and peak RSS; batch preprocessing of 64 JPEG/PNG files; `clip embed` over 256 JPEG/PNG files
against the README's per-image loop and `encode_image` alone (ours only); the measured fp32 and
bf16 matmul roofline; `encode_image` and `encode_text` of ViT-B/32 and RN50 shapes (fp32 at batch
1 and 32, bf16 and bf16 autocast at batch 1 and a reduced batch); training steps/s of `clip train`
against open_clip's `open_clip_train` (a tiny ViT CLIP on a procedural CSV; the original column
there is open_clip). Every row is measured in this run, ours and the original alternately, each
side in processes of its own (both packages are named `clip`); ratios are ours / original.

The original is `clip-anytorch` in a folder of its own (see benchmarks/_common.py):

    pip install --no-deps --target .oracle clip-anytorch
    pip install "setuptools<81"     # or let the suite put a pkg_resources stand-in on its path

Run from the repository root:

    python -m benchmarks                      # whole suite, about 30 minutes on 2 cores
    python -m benchmarks --quick              # fewer passes and captions, about 5 minutes
    python -m benchmarks --rows encode --models ViT-B/32 --modes fp32
    python -m benchmarks --write-results      # also writes benchmarks/RESULTS.md
    python -m benchmarks --rows peers         # only the peers table (open_clip, transformers)

The peers group (benchmarks/bench_peers.py) prints a second table: ours beside open_clip and
transformers' CLIPModel on the same weights, each in processes of its own; a peer whose package is
not installed is skipped and named.

--oracle (or $CLIP_ORACLE_PATH) names the original's folder; default .oracle in the repository.
"""

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from benchmarks import _common, bench_encode

GROUPS = ("tokenizer", "load", "preprocess", "embed", "roofline", "encode", "train", "peers")
RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"
COLUMNS = (
    "Row",
    "Threads",
    "Ours",
    "Original",
    "Ours / original",
    "Ours / our fp32",
    "% of roofline",
    "Goal",
    "Met",
)
MIB = 1024 * 1024
# sustained_*: captions per corpus for ours and for the original (whose mean rate is the reference;
# at ~4,000 captions/s the original would take ~4 minutes per million and corpus).
QUICK = {
    "embed_count": 64,
    "tokenizer_count": 2000,
    "sustained_count": 100_000,
    "sustained_original_count": 50_000,
    "repeats": 1,
    "low_precision_batch": 0,
    "slow_layout": False,
    "train_images": 128,
}
FULL = {
    "embed_count": 256,
    "tokenizer_count": 10_000,
    "sustained_count": 1_000_000,
    "sustained_original_count": 200_000,
    "repeats": 5,
    "low_precision_batch": 8,
    "slow_layout": True,
    "train_images": 512,
}
UNITS = {"image": "img/s", "text": "texts/s"}
DASH = "–"
# Goals from the issues: tokenizer (cold / warm throughput vs the original), batch preprocessing.
GOAL_TOKENIZER = {"cold": 5.0, "warm": 10.0}
GOAL_PREPROCESS = 2.0

Row = Dict[str, str]


def _met(ok: Optional[bool]) -> str:
    return "" if ok is None else ("yes" if ok else "**no**")


def _x(value: Optional[float], digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}x"


# ------------------------------------------------------------------------------------------------
# one function per group: run it, turn its figures into table rows


def tokenizer_rows(options: Dict[str, Any]) -> List[Row]:
    from benchmarks import bench_tokenizer

    f = bench_tokenizer.run(count=options["tokenizer_count"], oracle=options["oracle"])
    options["raw"]["tokenizer"] = f
    rows = []
    for phase in ("cold", "warm"):
        ours, original = f["ours_captions_per_s"][phase], f["original_captions_per_s"][phase]
        rows.append(
            {
                "Row": f"tokenizer, {phase} ({f['captions']:,} captions, batches of {f['batch_size']})",
                "Threads": "1 (Python)",
                "Ours": f"{ours:,.0f} captions/s",
                "Original": f"{original:,.0f} captions/s",
                "Ours / original": _x(ours / original, 1),
                "Goal": f"≥ {GOAL_TOKENIZER[phase]:.0f}x original",
                "Met": _met(ours / original >= GOAL_TOKENIZER[phase]),
            }
        )
    rows[0]["Row"] += f"; with the tokenizer's build: {f['cold_with_build_ratio']:.1f}x"
    return rows + sustained_rows(options)


def sustained_rows(options: Dict[str, Any]) -> List[Row]:
    """Novel text, sustained: per corpus, our slowest block (of both feeds) vs the original's mean."""
    from benchmarks import bench_tokenizer as bt

    f = bt.run_sustained(
        count=options["sustained_count"],
        original_count=options["sustained_original_count"],
        oracle=options["oracle"],
        progress=lambda message: print(
            f"        tokenizer, sustained: {message}", file=sys.stderr, flush=True
        ),
    )
    options["raw"]["tokenizer_sustained"] = f
    rows = []
    for corpus, sides in f["corpora"].items():
        original = sides["original, batches"]["mean_rate"]
        feeds = {feed: sides[f"ours, {feed}"] for feed in bt.SUSTAINED_FEEDS}
        slowest = min(ours["min_block_rate"] for ours in feeds.values())
        hold = min(ours["min_share_of_first_block"] for ours in feeds.values())
        growth = max(ours["peak_rss_growth_mib_without_output"] for ours in feeds.values())
        cells = "; ".join(
            f"{feed}: min block {ours['min_block_rate']:,.0f}, mean {ours['mean_rate']:,.0f}"
            for feed, ours in feeds.items()
        )
        rows.append(
            {
                "Row": f"tokenizer, novel text sustained: {corpus} ({f['captions']:,} captions in batches of "
                f"{f['batch_size']:,} and in one call, blocks of {f['block']:,}; the original: first "
                f"{f['original_captions']:,} in batches); slowest block {hold:.0%} of our first, peak RSS "
                f"growth {growth:.0f} MiB",
                "Threads": "1 (Python)",
                "Ours": f"{cells} captions/s",
                "Original": f"mean {original:,.0f} captions/s",
                "Ours / original": _x(slowest / original, 1) + " (slowest block)",
                "Goal": f"every block ≥ {bt.GOAL_SUSTAINED_RATIO}x original and ≥ "
                f"{bt.GOAL_SUSTAINED_HOLD:.0%} of our first; RSS growth < {bt.GOAL_SUSTAINED_RSS_MIB} MiB",
                "Met": _met(all(ours["met"] for ours in feeds.values())),
            }
        )
    return rows


def load_rows(options: Dict[str, Any]) -> List[Row]:
    from benchmarks import bench_load

    f = bench_load.run(oracle=options["oracle"], repeats=options["repeats"])
    options["raw"]["load"] = f
    threads = str(options["default_threads"])
    return [
        {
            "Row": f"clip.load ViT-B/32-size archive, time (median of {f['repeats']})",
            "Threads": threads,
            "Ours": f"{f['ours_s']:.2f} s",
            "Original": f"{f['original_s']:.2f} s",
            "Ours / original": _x(f["speedup"], 1) + " faster",
            "Goal": f"≥ {bench_load.GOAL_SPEEDUP:.0f}x faster",
            "Met": _met(f["speedup"] >= bench_load.GOAL_SPEEDUP),
        },
        {
            "Row": "clip.load, peak RSS of loading (× fp32 model size)",
            "Threads": threads,
            "Ours": f"{f['ours_peak_bytes'] / MIB:.0f} MiB ({f['ours_peak_ratio']:.2f}x)",
            "Original": f"{f['original_peak_bytes'] / MIB:.0f} MiB ({f['original_peak_ratio']:.2f}x)",
            "Ours / original": _x(f["ours_peak_bytes"] / f["original_peak_bytes"]),
            "Goal": f"≤ {bench_load.GOAL_PEAK_RATIO}x fp32 model",
            "Met": _met(f["ours_peak_ratio"] <= bench_load.GOAL_PEAK_RATIO),
        },
        {
            "Row": (
                f"clip.load of our release-layout .safetensors vs the release archive, both ours "
                f"(same weights; median of {f['repeats']})"
            ),
            "Threads": threads,
            "Ours": f"{f['ours_safetensors_s']:.2f} s (.safetensors)",
            "Original": f"{f['ours_s']:.2f} s (archive, ours)",
            "Ours / original": _x(f["safetensors_speedup"], 2) + " faster",
            "Goal": f"≥ {bench_load.GOAL_SAFETENSORS_SPEEDUP:.0f}x (archive)",
            "Met": _met(f["safetensors_speedup"] >= bench_load.GOAL_SAFETENSORS_SPEEDUP),
        },
    ]


def preprocess_rows(options: Dict[str, Any]) -> List[Row]:
    from benchmarks import bench_preprocess

    threads = options["threads"] or options["default_threads"]
    f = bench_preprocess.run(threads=threads, repeats=options["repeats"], oracle=options["oracle"])
    options["raw"]["preprocess"] = f
    original = f["original_images_per_s"]
    best_threads = max(original, key=original.get)
    others = ", ".join(f"{rate:.1f} with {n}" for n, rate in original.items() if n != best_threads)
    return [
        {
            "Row": f"preprocess_batch, {f['images']} mixed JPEG/PNG files → {f['n_px']} px "
            f"(identical output: {f['identical']})",
            "Threads": str(f["threads"]),
            "Ours": f"{f['ours_images_per_s']:.1f} img/s",
            "Original": f"{original[best_threads]:.1f} img/s with {best_threads} torch thread(s)"
            + (f" ({others})" if others else ""),
            "Ours / original": _x(f["ratio"]),
            "Goal": f"≥ {GOAL_PREPROCESS:.0f}x original",
            "Met": _met(f["ratio"] >= GOAL_PREPROCESS),
        }
    ]


def embed_rows(options: Dict[str, Any]) -> List[Row]:
    from benchmarks import bench_embed

    threads = options["threads"] or options["default_threads"]
    f = bench_embed.run(count=options["embed_count"], threads=threads, repeats=options["repeats"])
    options["raw"]["embed"] = f
    rate = f["images_per_s"]
    what = f"{f['images']} mixed JPEG/PNG files, {f['config']} shapes fp32, batch {f['batch_size']}"
    return [
        {
            "Row": f"clip embed vs the README's per-image loop ({what})",
            "Threads": f"{threads} + {f['workers']} decoding",
            "Ours": f"{rate['embed']:.1f} img/s",
            "Original": f"{rate['loop']:.1f} img/s (per-image loop)",
            "Ours / original": _x(f["embed_vs_loop"]),
            "Goal": f"≥ {bench_embed.GOAL_VS_LOOP}x the loop",
            "Met": _met(f["embed_vs_loop"] >= bench_embed.GOAL_VS_LOOP),
        },
        {
            "Row": f"clip embed vs encode_image alone on decoded images ({what})",
            "Threads": f"{threads} + {f['workers']} decoding",
            "Ours": f"{rate['embed']:.1f} img/s",
            "Original": f"{rate['encode']:.1f} img/s (encode_image alone, ours)",
            "Ours / original": f"{100 * f['embed_vs_encode']:.0f}%",
            "Goal": f"≥ {100 * bench_embed.GOAL_VS_ENCODE:.0f}% of encode_image",
            "Met": _met(f["embed_vs_encode"] >= bench_embed.GOAL_VS_ENCODE),
        },
    ]


def train_rows(options: Dict[str, Any]) -> List[Row]:
    from benchmarks import bench_train

    batch = 32
    f = bench_train.run(
        images=options["train_images"], batch_size=batch, epochs=2, threads=options["threads"]
    )
    options["raw"]["train"] = f
    return [
        {
            "Row": f"training steps/s, tiny ViT CLIP, fp32, batch {batch} "
            f"({f['steps_per_epoch']} steps/epoch, last of 2 epochs); original: open_clip_train",
            "Threads": str(options["threads"] or options["default_threads"]),
            "Ours": f"{f['ours_steps_per_s']:.2f} steps/s",
            "Original": f"{f['open_clip_steps_per_s']:.2f} steps/s",
            "Ours / original": _x(f["ratio"]),
            "Goal": f"≥ {bench_train.GOAL_RATIO:.0f}x open_clip_train",
            "Met": _met(f["ratio"] >= bench_train.GOAL_RATIO),
        }
    ]


def encode_rows(options: Dict[str, Any], models: Sequence[str]) -> List[Row]:
    threads = options["threads"]
    f = bench_encode.run(
        models=models,
        towers=options["towers"],
        batches=options["batches"],
        modes=options["modes"],
        repeats=options["repeats"],
        low_precision_batch=options["low_precision_batch"],
        oracle=options["oracle"],
        threads=threads,
        slow_layout=options["slow_layout"],
    )
    options["raw"]["encode"] = f
    threads_cell = str(f["threads"])
    rows = []
    for dtype, label in (("float32", "fp32"), ("bfloat16", "bf16")):
        roof = f["roofline"][dtype]
        best_layout = max(roof["by_layout"], key=roof["by_layout"].get)
        rows.append(
            {
                "Row": f"matmul roofline, {label} (best of {len(roof['by_layout'])}: {best_layout})",
                "Threads": threads_cell,
                "Ours": f"{roof['best']:.1f} GFLOP/s",
                "Original": "(same machine)",
            }
        )
    for r in f["rows"]:
        rows.append(_encode_row(r, threads_cell))
    return rows


def _encode_row(r: Dict[str, Any], threads: str) -> Row:
    unit = UNITS[r["tower"]]
    mode = {
        "fp32": "fp32",
        "bf16": "bf16",
        "autocast": "fp32 under bf16 autocast",
        "bf16-torch": "bf16 on torch's kernels (CLIP_CPU_BF16_KERNELS=torch)",
    }[r["mode"]]
    passes = f"best of {r['passes']}" if r["passes"] > 1 else "1 pass"
    row: Row = {
        "Row": f"encode_{r['tower']} {r['model']}, {mode}, batch {r['batch']} ({passes})",
        "Threads": threads,
        "Ours": f"{r['ours_items_per_s']:.2f} {unit}"
        if "ours_items_per_s" in r
        else r.get("ours_error", DASH),
        "Original": (
            f"{r['original_items_per_s']:.2f} {unit}"
            if "original_items_per_s" in r
            else f"fails: {r['original_error']}"
            if "original_error" in r
            else DASH
        ),
        "Ours / original": _x(r.get("ratio")),
    }
    if "roofline_fraction" in r:
        row["% of roofline"] = f"{100 * r['roofline_fraction']:.0f}% ({r['ours_gflop_per_s']:.1f} GFLOP/s)"
    if "vs_ours_fp32" in r:
        row["Ours / our fp32"] = f"{r['vs_ours_fp32']:.2f}x (vs b{r['vs_ours_fp32_batch']})"
    cosine = r.get("ours_min_cosine_to_fp32")
    cosine_ok = None if cosine is None else cosine >= bench_encode.GOAL_COSINE
    if r["mode"] == "fp32":
        row["Goal"] = f"≥ {bench_encode.GOAL_FP32_RATIO}x original"
        row["Met"] = _met(r["ratio"] >= bench_encode.GOAL_FP32_RATIO if "ratio" in r else None)
        row["Row"] += f"; max abs diff to the original {r['max_abs_diff']:.1e}"
    elif r["mode"] == "autocast":
        row["Goal"] = f"≥ {bench_encode.GOAL_FP32_RATIO}x original; cos ≥ {bench_encode.GOAL_COSINE}"
        row["Met"] = _met(
            None if "ratio" not in r else r["ratio"] >= bench_encode.GOAL_FP32_RATIO and bool(cosine_ok)
        )
    else:
        row["Goal"] = f"cos ≥ {bench_encode.GOAL_COSINE}"
        row["Met"] = _met(cosine_ok)
        goal_row = (r["model"], r["tower"], r["batch"]) == ("ViT-B/32", "image", bench_encode.GOAL_BF16_BATCH)
        if r["mode"] == "bf16" and goal_row:
            speedup, fraction = r.get("vs_ours_fp32"), r.get("roofline_fraction")
            row["Goal"] = (
                f"≥ {bench_encode.GOAL_BF16_SPEEDUP}x our fp32 b32, "
                f"≥ {100 * bench_encode.GOAL_BF16_ROOFLINE:.0f}% of roofline, " + row["Goal"]
            )
            row["Met"] = _met(
                bool(cosine_ok)
                and speedup is not None
                and speedup >= bench_encode.GOAL_BF16_SPEEDUP
                and fraction is not None
                and fraction >= bench_encode.GOAL_BF16_ROOFLINE
            )
    if cosine is not None:
        row["Row"] += f"; cos to fp32 ≥ {cosine:.5f}"
    return row


# ------------------------------------------------------------------------------------------------
# the table and RESULTS.md


def markdown_table(rows: Sequence[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def header_lines(machine: Dict[str, Any], options: Dict[str, Any], seconds: float) -> List[str]:
    encode = options["raw"].get("encode", {})
    info = encode.get("info", {})
    load = machine["load_average_1min"], _common.load_average()
    lines = [
        f"- Date: {options['date']}; suite wall time {seconds / 60:.1f} min"
        + (" (--quick)" if options["quick"] else ""),
        f"- CPU: {machine['cpu']}, {machine['cpus']} logical CPUs, torch CPU capability "
        f"{machine['cpu_capability']}; torch {machine['torch']}; Python {machine['python']}",
        f"- Threads: torch intra-op threads {options['threads'] or machine['torch_threads']} "
        f"(machine default {machine['torch_threads']}); the tokenizer is single-threaded Python",
        f"- GPU: {'available, not used' if machine['cuda_available'] else 'none'}; every row runs on the CPU",
        f"- 1-minute load average before/after: {load[0]:.2f} / {load[1]:.2f} "
        "(other processes share this machine: passes alternate between the sides and the best pass counts)",
        "- Allocator in the encode and peers workers: " + _common.workers_malloc_note(),
    ]
    if info:
        supported = info["mkldnn_bf16_supported"]
        lines.append(
            f"- Native bf16 matmul (oneDNN bf16 support): {'yes' if supported else 'no'}"
            + (
                ""
                if supported
                else " — torch's bf16 kernels here are generic ones, far below fp32; clip times them "
                "against fp32 products (torch's fp32 kernels, oneDNN with packed weights for linear "
                "layers and convolutions, 1x1 convolutions as matrix products) and uses the fastest "
                "(rows: bf16 vs bf16 on torch's kernels)"
            )
        )
    return lines


def notes(options: Dict[str, Any]) -> List[str]:
    out = [
        "Ratios are ours / original (throughput; for load time: original time / ours). Encode rows use "
        "seeded random weights in the release's layout (tests/support/_model_factory.py), the same for both "
        "sides; `Ours / our fp32` compares a low-precision row with our fp32 row of the same batch, or "
        "of the largest fp32 batch when that batch was not run in fp32.",
    ]
    encode = options["raw"].get("encode")
    if encode:
        roof = encode["roofline"]
        for dtype in ("float32", "bfloat16"):
            layouts = ", ".join(f"{k} {v:.1f}" for k, v in roof[dtype]["by_layout"].items())
            out.append(
                f"Roofline {dtype} GFLOP/s by layout@size (nn: a @ b, nt: a @ b.T as in F.linear, "
                f"tn: a.T @ b): {layouts}."
            )
        flops = {}
        for r in encode["rows"]:
            flops[f"{r['model']} {r['tower']}"] = r["gflop_per_item"]
        listed = ", ".join(f"{k} {v:.2f}" for k, v in flops.items())
        out.append(
            f"GFLOP per item (torch.utils.flop_counter.FlopCounterMode, batch 1, 77-token texts): {listed}."
        )
        if not encode["info"]["mkldnn_bf16_supported"]:
            out.append(
                "This CPU has no bf16 units: clip times torch's bf16 kernels against fp32 products "
                "rounded to bf16 (on torch's fp32 kernels; for linear layers and convolutions also on "
                "oneDNN with the weights packed once; 1x1 convolutions also as matrix products) once per "
                "shape class and uses the fastest (clip/_bf16.py); the "
                "bf16-on-torch's-kernels rows show what torch's generic bf16 kernels do alone. The bf16 "
                "roofline is the faster of torch's bf16 kernels and fp32 products (torch's fp32 kernels)."
            )
        slow = "batch 1 (best of 2 passes)"
        if options["low_precision_batch"]:
            slow += f" and, for ViT-B/32, batch {options['low_precision_batch']} (1 pass)"
        out.append(
            f"Rows on torch's generic bf16 kernels (the original under autocast, bf16-torch) run at {slow} "
            "only: they are several times slower than fp32 here. Ratios to the original are given where "
            "both sides ran the same batch."
        )
        goals = encode["goals"]
        if goals["bf16_speedup"] is not None:
            out.append(
                f"bf16 goal (ViT-B/32 encode_image): {goals['bf16_speedup']:.2f}x our fp32 "
                f"(goal ≥ {goals['bf16_speedup_goal']}x), {100 * goals['bf16_roofline_fraction']:.0f}% of "
                f"the bf16 roofline (goal ≥ {100 * goals['bf16_roofline_goal']:.0f}%), batch "
                f"{goals['bf16_speedup_batch']}."
            )
    return out


def peers_table(options: Dict[str, Any], args: argparse.Namespace) -> str:
    """Run bench_peers with the suite's settings; its markdown table (the figures go to the JSON)."""
    from benchmarks import bench_peers

    result = bench_peers.run(
        batches=args.batches,
        rounds=1 if options["quick"] else bench_peers.DEFAULT_ROUNDS,
        passes=options["repeats"],
        load_repeats=1 if options["quick"] else bench_peers.DEFAULT_LOAD_REPEATS,
        captions=bench_peers.QUICK_CAPTIONS if options["quick"] else bench_peers.DEFAULT_CAPTIONS,
        threads=options["threads"],
    )
    options["raw"]["peers"] = result
    return bench_peers.markdown(result)


def write_results(text: str) -> None:
    partial = RESULTS_FILE.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, RESULTS_FILE)  # never a half-written RESULTS.md


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0],
        epilog="See docs/development.md, section Benchmarks.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 pass per row, 2,000 captions (sustained: 100,000), batch-1 bf16",
    )
    parser.add_argument("--rows", nargs="+", choices=GROUPS, default=list(GROUPS), help="groups of rows")
    parser.add_argument("--models", nargs="+", choices=bench_encode.MODELS, default=list(bench_encode.MODELS))
    parser.add_argument("--towers", nargs="+", choices=bench_encode.TOWERS, default=list(bench_encode.TOWERS))
    parser.add_argument("--modes", nargs="+", choices=bench_encode.MODES, default=list(bench_encode.MODES))
    parser.add_argument("--batches", nargs="+", type=int, default=list(bench_encode.DEFAULT_BATCHES))
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed passes per side (default 5; quick 1)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--oracle", default=None, help="folder holding the original `clip` package")
    parser.add_argument(
        "--write-results", action="store_true", help=f"write the table to {RESULTS_FILE.name}"
    )
    parser.add_argument("--json", default=None, help="also save every figure to this JSON file")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    import torch

    preset = QUICK if args.quick else FULL
    options: Dict[str, Any] = {
        **preset,
        "repeats": args.repeats or preset["repeats"],
        "quick": args.quick,
        "oracle": _common.resolve_oracle(args.oracle),  # fail early, with the install command
        "threads": args.threads,
        "default_threads": torch.get_num_threads(),
        "towers": args.towers,
        "modes": args.modes,
        "batches": args.batches,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "raw": {},
    }
    machine = _common.machine_info()
    start = time.perf_counter()
    groups: Dict[str, Callable[[], List[Row]]] = {
        "tokenizer": lambda: tokenizer_rows(options),
        "load": lambda: load_rows(options),
        "preprocess": lambda: preprocess_rows(options),
        "embed": lambda: embed_rows(options),
        "train": lambda: train_rows(options),
    }
    rows: List[Row] = []
    for group in GROUPS:
        if group not in args.rows or group in ("roofline", "encode", "peers"):
            continue
        print(f"[{time.perf_counter() - start:5.0f} s] {group} ...", file=sys.stderr, flush=True)
        rows += groups[group]()
    if "encode" in args.rows or "roofline" in args.rows:
        print(f"[{time.perf_counter() - start:5.0f} s] roofline/encode ...", file=sys.stderr, flush=True)
        rows += encode_rows(options, args.models if "encode" in args.rows else ())
    peers = ""
    if "peers" in args.rows:
        print(f"[{time.perf_counter() - start:5.0f} s] peers ...", file=sys.stderr, flush=True)
        peers = peers_table(options, args)
    seconds = time.perf_counter() - start

    command = "python -m benchmarks" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    header = header_lines(machine, options, seconds)
    table = markdown_table(rows)
    print("\n".join(header) + "\n\n" + table + "\n\n" + "\n".join(f"- {n}" for n in notes(options)))
    if peers:
        print("\n## Peers\n\n" + peers)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine, "options": options, "rows": rows}, indent=1, default=str),
            encoding="utf-8",
        )
    if args.write_results:
        text = "\n".join(
            [
                "# Benchmark results",
                "",
                f"Written by `{command}`; see docs/development.md, section Benchmarks, for what each row "
                "measures.",
                "",
                *header,
                "",
                table,
                "",
                "Notes:",
                "",
                *(f"- {n}" for n in notes(options)),
                "",
                *(["## Peers", "", peers, ""] if peers else []),
            ]
        )
        write_results(text)
        print(f"wrote {RESULTS_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
