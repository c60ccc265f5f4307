"""Benchmark: `clip.load(path, device="cpu")` against the original's, on a ViT-B/32-sized archive.

Builds once (cached in `--workdir`, default ~/.cache/clip-bench) a TorchScript archive in the
release's layout with the dimensions of ViT-B/32 (151,277,313 parameters; seeded random weights
from tests/support/_model_factory.py, fp16 where `convert_weights` casts; traced like the release, storages
recorded on cuda:0), then, for each side, `--repeats` times in a fresh process of its own:

- imports torch and `clip`, reads the peak RSS (VmHWM, else `ru_maxrss`) as the baseline,
- times `clip.load(archive, device="cpu", jit=False)`,
- reads the peak RSS again: peak memory of loading = peak - baseline.

Our side also loads the same weights written by ``clip convert`` as a release-layout
``.safetensors`` file (issue 13: at least as fast as the archive), interleaved with the others.

It prints the median load time of each side and their ratio, and each side's peak memory relative
to the size of the fp32 model (the result: 151,277,313 x 4 bytes), after checking that both sides
gave the same weights. The archive is read once beforehand so that both sides find it in the page
cache. Goal: at least 5x faster than the original, peak memory at most 1.5x the fp32 model.

Both packages are named `clip`, so each side runs in a subprocess: the original with only the
oracle folder on PYTHONPATH and its working directory outside the repository, ours with the
repository first. The original is `clip-anytorch` (the release's code, lightly patched), installed
in a folder of its own; its `pkg_resources` import needs setuptools < 81 (its `load` fails on plain
state-dict files, but reads TorchScript archives like this one):

    pip install --no-deps --target .oracle clip-anytorch "setuptools<81"

Run (from the repository root, with our package installed):

    python -m benchmarks.bench_load [--oracle DIR] [--workdir DIR] [--repeats 3]

The oracle folder comes from `--oracle`, else the CLIP_ORACLE_PATH environment variable, else
.oracle in the repository. `run(...)` returns the figures as a dict, for a suite runner.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

try:
    from benchmarks import _common
except ImportError:  # run by path: benchmarks/ itself is first on sys.path
    import _common  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ORACLE = _common.DEFAULT_ORACLE
DEFAULT_WORKDIR = "~/.cache/clip-bench"
DEFAULT_REPEATS = 3
SEED = 0
ARCHIVE_NAME = "ViT-B-32-random.pt"
VIT_B_32 = dict(
    embed_dim=512,
    image_resolution=224,
    vision_layers=12,
    vision_width=768,
    vision_patch_size=32,
    context_length=77,
    vocab_size=49408,
    transformer_width=512,
    transformer_heads=8,
    transformer_layers=12,
)
VIT_B_32_PARAMS = 151_277_313  # FACTS: parameters of ViT-B/32
FP32_BYTES = 4
MIB = 1024 * 1024
GOAL_SPEEDUP = 5.0
GOAL_PEAK_RATIO = 1.5
SAFETENSORS_NAME = "ViT-B-32-random.safetensors"
GOAL_SAFETENSORS_SPEEDUP = 1.0  # issue 13: our .safetensors loads at least as fast as the archive

# Runs in a fresh interpreter: argv[1] = archive. Prints one JSON line.
_CHILD = r"""
import hashlib, json, resource, sys, time
import torch
import clip

def peak_kib():
    # VmHWM: this process's own high-water mark (ru_maxrss may carry the parent's over fork+exec)
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

baseline_kib = peak_kib()
start = time.perf_counter()
model, preprocess = clip.load(sys.argv[1], device="cpu", jit=False)
seconds = time.perf_counter() - start
peak_kib = peak_kib()
state = model.state_dict()
digest = hashlib.sha256()
for key in sorted(state):
    tensor = state[key]
    digest.update(key.encode())
    digest.update(str(tensor.dtype).encode())
    digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
print(json.dumps({
    "seconds": seconds,
    "peak_bytes": (peak_kib - baseline_kib) * 1024,
    "baseline_bytes": baseline_kib * 1024,
    "model_bytes": sum(t.numel() * t.element_size() for t in state.values()),
    "parameters": sum(p.numel() for p in model.parameters()),
    "weights_sha256": digest.hexdigest(),
    "clip_file": clip.__file__,
}))
"""


def build_archive(workdir: Path) -> Path:
    """The cached ViT-B/32-sized release-layout archive (built on first use, ~1 minute).

    Built in a subprocess, so that the memory it takes is not inherited by the measured processes.
    """
    target = workdir / ARCHIVE_NAME
    if not target.is_file():
        code = "import sys; from benchmarks.bench_load import _build; _build(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(workdir)], cwd=str(REPO), check=True)
    return target


def _build(workdir_name: str) -> None:
    workdir = Path(workdir_name)
    target = workdir / ARCHIVE_NAME
    workdir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "tests" / "support"))  # the release-layout archive writer used by the tests
    sys.path.insert(0, str(REPO))
    from _checkpoints import save_torchscript_archive
    from _model_factory import make_state_dict

    from clip.model import build_model

    model = build_model(make_state_dict(VIT_B_32, SEED, scalars=False))
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        partial = Path(scratch) / ARCHIVE_NAME
        save_torchscript_archive(model, partial)
        os.replace(partial, target)  # only a complete archive ever sits at the final path


def build_safetensors(archive: Path) -> Path:
    """The same weights as `archive`, written by ``clip convert`` as a release-layout .safetensors."""
    target = archive.with_name(SAFETENSORS_NAME)
    if not target.is_file():
        env, cwd = _common.ours_env()
        command = [sys.executable, "-m", "clip", "convert", str(archive), str(target)]
        subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return target


def _measure(side: str, archive: Path, oracle: str) -> Dict[str, Any]:
    # the original's working directory is outside the repository: our own clip/ must not shadow it
    env, cwd = _common.side_env(side, oracle)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(archive)], cwd=cwd, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {side} side failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected_root = Path(oracle) if side == "original" else REPO
    if not Path(result["clip_file"]).resolve().is_relative_to(expected_root.resolve()):
        raise RuntimeError(f"the {side} side imported clip from {result['clip_file']}")
    return result


def _warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(16 * MIB):
            pass


def run(
    oracle: Optional[str] = None, workdir: Optional[str] = None, repeats: int = DEFAULT_REPEATS
) -> Dict[str, Any]:
    """Measure both sides; return the figures (seconds, peak bytes, ratios) as a dict."""
    oracle = _common.resolve_oracle(oracle)
    archive = build_archive(Path(os.path.expanduser(workdir or DEFAULT_WORKDIR)))
    safetensors = build_safetensors(archive)
    _warm_page_cache(archive)
    _warm_page_cache(safetensors)
    runs: Dict[str, List[Dict[str, Any]]] = {"ours": [], "original": [], "safetensors": []}
    for _ in range(repeats):
        for side in ("original", "ours", "safetensors"):  # interleaved, so drifting load hits all
            path = safetensors if side == "safetensors" else archive
            runs[side].append(_measure("ours" if side == "safetensors" else side, path, oracle))

    ours, original, ours_st = runs["ours"], runs["original"], runs["safetensors"]
    if {r["weights_sha256"] for r in ours + original + ours_st} != {ours[0]["weights_sha256"]}:
        raise RuntimeError("the sides loaded different weights")
    fp32_bytes = VIT_B_32_PARAMS * FP32_BYTES
    assert ours[0]["parameters"] == VIT_B_32_PARAMS, ours[0]["parameters"]

    def median(side: List[Dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in side)

    figures = {
        "archive": str(archive),
        "archive_bytes": archive.stat().st_size,
        "fp32_model_bytes": fp32_bytes,
        "repeats": repeats,
        "ours_s": median(ours, "seconds"),
        "original_s": median(original, "seconds"),
        "ours_peak_bytes": median(ours, "peak_bytes"),
        "original_peak_bytes": median(original, "peak_bytes"),
        "ours_all_s": [r["seconds"] for r in ours],
        "original_all_s": [r["seconds"] for r in original],
    }
    figures["ours_safetensors_s"] = median(ours_st, "seconds")
    figures["ours_safetensors_peak_bytes"] = median(ours_st, "peak_bytes")
    figures["safetensors_bytes"] = safetensors.stat().st_size
    figures["safetensors_speedup"] = figures["ours_s"] / figures["ours_safetensors_s"]
    figures["speedup"] = figures["original_s"] / figures["ours_s"]
    figures["ours_peak_ratio"] = figures["ours_peak_bytes"] / fp32_bytes
    figures["original_peak_ratio"] = figures["original_peak_bytes"] / fp32_bytes
    figures["meets_goals"] = (
        figures["speedup"] >= GOAL_SPEEDUP and figures["ours_peak_ratio"] <= GOAL_PEAK_RATIO
    )
    return figures


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", default=None, help="folder holding the original clip package")
    parser.add_argument("--workdir", default=None, help=f"where the archive is cached ({DEFAULT_WORKDIR})")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    f = run(args.oracle, args.workdir, args.repeats)
    archive_mib, fp32_mib = f["archive_bytes"] / MIB, f["fp32_model_bytes"] / MIB
    print(f"archive: {f['archive']} ({archive_mib:.0f} MiB); fp32 model {fp32_mib:.0f} MiB")
    print(
        f"load time (median of {f['repeats']}):  original {f['original_s']:.2f} s   "
        f"ours {f['ours_s']:.2f} s   "
        f"speed-up {f['speedup']:.1f}x (goal >= {GOAL_SPEEDUP:.0f}x)"
    )
    print(
        f"peak memory of loading:  original {f['original_peak_bytes'] / MIB:.0f} MiB "
        f"({f['original_peak_ratio']:.2f}x fp32 model)   ours {f['ours_peak_bytes'] / MIB:.0f} MiB "
        f"({f['ours_peak_ratio']:.2f}x; goal <= {GOAL_PEAK_RATIO}x)"
    )
    print(
        f"ours, our .safetensors vs the release archive (same weights):  .safetensors "
        f"{f['ours_safetensors_s']:.2f} s   archive {f['ours_s']:.2f} s   "
        f"{f['safetensors_speedup']:.2f}x (goal >= {GOAL_SAFETENSORS_SPEEDUP:.0f}x)"
    )
    print(f"goals met: {f['meets_goals']}   (benchmark wall time {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
