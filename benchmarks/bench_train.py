"""Training steps per second: `clip train` against open_clip's training loop (`open_clip_train`).

Both sides train the same small CLIP (ViT image tower, QuickGELU, the release's layout) on the same
procedural image-caption CSV (examples/shapes_dataset.py), at the same batch size and precision,
each in a process of its own, on the CPU. A side's figure is the steps per second of its last
epoch's training loop (data loading included, validation and checkpoint writing excluded), timed
around the loop itself: `clip.train`'s own epoch timer, and a wrapper around open_clip's
`train_one_epoch`.

    python -m benchmarks.bench_train                      # defaults below
    python -m benchmarks.bench_train --images 512 --batch-size 64 --epochs 3
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from benchmarks import _common

GOAL_RATIO = 1.0  # the issue: at least open_clip's steps per second
MODEL = {  # CLIPDimensions fields; open_clip's config below describes the same network
    "embed_dim": 64,
    "image_resolution": 32,
    "vision_layers": 2,
    "vision_width": 128,
    "vision_patch_size": 8,
    "context_length": 16,
    "vocab_size": 49408,
    "transformer_width": 128,
    "transformer_heads": 2,
    "transformer_layers": 2,
}
OPEN_CLIP_NAME = "bench-tiny-clip"
RESULT_PREFIX = "RESULT "


def _open_clip_config() -> Dict[str, Any]:
    return {
        "embed_dim": MODEL["embed_dim"],
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": MODEL["image_resolution"],
            "layers": MODEL["vision_layers"],
            "width": MODEL["vision_width"],
            "patch_size": MODEL["vision_patch_size"],
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": MODEL["context_length"],
            "vocab_size": MODEL["vocab_size"],
            "width": MODEL["transformer_width"],
            "heads": MODEL["transformer_heads"],
            "layers": MODEL["transformer_layers"],
        },
    }


_OURS = """
import json, sys
from clip.train import TrainConfig, train
spec = json.loads(sys.argv[1])
history = train(TrainConfig(**spec))
print("RESULT " + json.dumps({"steps_per_s": history[-1]["steps_per_s"], "steps": history[-1]["steps"]}))
"""

_OPEN_CLIP = """
import json, sys, time
import open_clip
import open_clip_train.main as entry
config_dir, argv = sys.argv[1], json.loads(sys.argv[2])
open_clip.add_model_config(config_dir)
timings = []
inner = entry.train_one_epoch
def timed(model, data, *args, **kwargs):
    start = time.perf_counter()
    inner(model, data, *args, **kwargs)
    timings.append((data["train"].dataloader.num_batches, time.perf_counter() - start))
entry.train_one_epoch = timed
entry.main(argv)
steps, seconds = timings[-1]
print("RESULT " + json.dumps({"steps_per_s": steps / seconds, "steps": steps}))
"""


def _run(code: str, args: Sequence[str], env: Dict[str, str], cwd: str) -> Dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(
        f"training process failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    )


def run(
    images: int = 512, batch_size: int = 64, epochs: int = 2, threads: Optional[int] = None, repeats: int = 1
) -> Dict[str, Any]:
    """Steps per second of both sides (best of `repeats`, alternating), and the ratio ours / open_clip."""
    sys.path.insert(0, str(_common.REPO / "examples"))
    import shapes_dataset

    work = Path(tempfile.mkdtemp(prefix="clip-bench-train-"))
    every = [(s, c) for s in shapes_dataset.SHAPES for c in shapes_dataset.COLOURS]
    train_csv = shapes_dataset.generate(str(work), "train", images, every, seed=0)
    (work / "ours.json").write_text(json.dumps(MODEL), encoding="utf-8")
    (work / "open_clip").mkdir()
    (work / "open_clip" / f"{OPEN_CLIP_NAME}.json").write_text(
        json.dumps(_open_clip_config()), encoding="utf-8"
    )
    common = dict(epochs=epochs, batch_size=batch_size, lr=5e-4, wd=0.1, warmup=2, workers=0, seed=0)
    ours_spec = dict(
        train_data=str(train_csv), model_config=str(work / "ours.json"), precision="fp32", **common
    )
    open_clip_argv = [
        "--train-data", str(train_csv), "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", OPEN_CLIP_NAME,
        "--batch-size", str(batch_size), "--epochs", str(epochs), "--lr", "5e-4", "--wd", "0.1",
        "--warmup", "2", "--workers", "0", "--precision", "fp32", "--seed", "0", "--report-to", "",
        "--logs", str(work / "open_clip_logs"), "--zeroshot-frequency", "0",
    ]  # fmt: skip
    env, cwd = _common.ours_env()
    if threads:
        env = {**env, "OMP_NUM_THREADS": str(threads)}
    ours, theirs = [], []
    for attempt in range(repeats):
        logs = str(work / f"ours_logs_{attempt}")
        ours.append(_run(_OURS, [json.dumps({**ours_spec, "logs": logs})], env, cwd))
        argv = [*open_clip_argv, "--name", f"run{attempt}"]
        theirs.append(_run(_OPEN_CLIP, [str(work / "open_clip"), json.dumps(argv)], env, str(work)))
    ours_best = max(r["steps_per_s"] for r in ours)
    theirs_best = max(r["steps_per_s"] for r in theirs)
    return {
        "images": images,
        "batch_size": batch_size,
        "epochs": epochs,
        "steps_per_epoch": ours[0]["steps"],
        "open_clip_steps_per_epoch": theirs[0]["steps"],
        "ours_steps_per_s": ours_best,
        "open_clip_steps_per_s": theirs_best,
        "ratio": ours_best / theirs_best,
        "repeats": repeats,
        "model": MODEL,
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.images, args.batch_size, args.epochs, args.threads, args.repeats)
    print(json.dumps(result, indent=1))
    print(
        f"training steps/s, batch {result['batch_size']}, fp32: clip train {result['ours_steps_per_s']:.2f}, "
        f"open_clip_train {result['open_clip_steps_per_s']:.2f}, ratio {result['ratio']:.2f}x "
        f"(goal >= {GOAL_RATIO}x)"
    )


if __name__ == "__main__":
    main()
