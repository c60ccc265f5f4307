"""Benchmark: `clip.explain.relevance` against the reference recipe run on the original's modules.

The workload of `clip explain`: one image against three labels, i.e. three (image, text) pairs, for
ViT-B/32 and RN50 shapes with seeded random weights in the release's layout
(tests/support/_model_factory.py), fp32, on the CPU. Each side runs in a process of its own (both
packages are named `clip`):

- ours: `clip.explain.relevance(model, images, texts, ...)` on the model as `build_model` returns it
  (fused attention; the probabilities are written out inside the call);
- the original: the Chefer et al. notebook's recipe, as tests/data/make_explain_golden.py runs it:
  the original's blocks patched to call `nn.MultiheadAttention` with need_weights=True, a full
  `model(images, texts)` with gradients, then one `torch.autograd.grad` per contributing block
  (retain_graph), the rollout; Grad-CAM with a forward hook on `visual.layer4` for RN50;
- beside them, each side's plain `model(image, texts)` under no_grad (one image, three texts), the
  cost of the probabilities alone.

Rows: default start layers (the last block) and `start_layer=0, start_layer_text=0` (every block;
ViT only). The fastest of `--repeats` timed calls after one warm-up, over `--rounds` worker
processes per side started in alternation (ours, original, original, ours, ...), counts. Workers
start with the steady glibc allocator settings of benchmarks/_common.py.

Run (from the repository root): python -m benchmarks.bench_explain [--oracle DIR] [--repeats 3]
[--rounds 2] [--json FILE]
"""

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

MODELS = ("ViT-B/32", "RN50")
LABELS = ["a diagram", "a dog", "a cat"]
SEED = 0
IMAGE_SEED = 1
DEFAULT_REPEATS = 3
DEFAULT_ROUNDS = 2
FACTORY = Path(__file__).resolve().parents[1] / "tests" / "support" / "_model_factory.py"


def _factory() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_clip_bench_explain_factory", FACTORY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fastest(call: Any, repeats: int) -> float:
    call()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def _original_relevance(
    model: Any, images: Any, texts: Any, start: Optional[int], start_text: Optional[int]
) -> None:
    """The notebook's recipe on the original's modules (blocks patched by `_patch_original`)."""
    import torch

    caught: Dict[str, Any] = {}
    vit = hasattr(model.visual, "transformer")
    handle = None if vit else model.visual.layer4.register_forward_hook(lambda m, i, o: caught.update(A=o))
    logits, _ = model(images, texts)
    if handle is not None:
        handle.remove()
    objective = logits.diagonal().sum()
    batch = texts.shape[0]

    def rollout(blocks: List[Any], first: int) -> Any:
        tokens = blocks[0].attn_probs.shape[-1]
        R = torch.eye(tokens).unsqueeze(0).expand(batch, tokens, tokens)
        for i, blk in enumerate(blocks):
            if i < first:
                continue
            grad = torch.autograd.grad(objective, [blk.attn_probs], retain_graph=True)[0]
            cam = (grad * blk.attn_probs.detach()).reshape(batch, -1, tokens, tokens).clamp(min=0).mean(dim=1)
            R = R + torch.bmm(cam, R)
        return R

    if vit:
        blocks = list(model.visual.transformer.resblocks)
        rollout(blocks, len(blocks) - 1 if start is None else start)
    else:
        grad = torch.autograd.grad(objective, [caught["A"]], retain_graph=True)[0]
        torch.relu((grad.mean(dim=(2, 3), keepdim=True) * caught["A"]).sum(dim=1))
    text_blocks = list(model.transformer.resblocks)
    rollout(text_blocks, len(text_blocks) - 1 if start_text is None else start_text)


def _patch_original(model: Any) -> None:
    import types

    def attention(self: Any, x: Any) -> Any:
        mask = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        out, probs = self.attn(x, x, x, need_weights=True, average_attn_weights=False, attn_mask=mask)
        self.attn_probs = probs._base if probs._base is not None else probs
        return out

    towers = [model.transformer] + (
        [model.visual.transformer] if hasattr(model.visual, "transformer") else []
    )
    for tower in towers:
        for block in tower.resblocks:
            block.attention = types.MethodType(attention, block)


def worker(side: str, repeats: int) -> List[Dict[str, Any]]:
    """Time one side (in a process that imports that side's `clip`); rows as dicts."""
    import torch

    import clip
    from clip.model import build_model

    if hasattr(clip, "explain") != (side == "ours"):
        sys.exit(f"the {side} worker imported the wrong clip: {clip.__file__}")
    factory = _factory()
    texts = clip.tokenize(LABELS)
    rows = []
    for name in MODELS:
        model = build_model(dict(factory.make_state_dict(name, SEED))).float().eval()
        resolution = model.visual.input_resolution
        image = factory.make_images(resolution, IMAGE_SEED, 1)
        images = image.expand(len(LABELS), -1, -1, -1)
        with torch.no_grad():
            plain = _fastest(functools.partial(model, image, texts), repeats)
        starts = [(None, None), (0, 0)] if hasattr(model.visual, "transformer") else [(None, None)]
        if side == "original":
            _patch_original(model)
        for start, start_text in starts:
            if side == "ours":
                from clip import explain

                call = functools.partial(
                    explain.relevance, model, images, texts, start_layer=start, start_layer_text=start_text
                )
            else:
                call = functools.partial(_original_relevance, model, images, texts, start, start_text)
            seconds = _fastest(call, repeats)
            rows.append(
                {"model": name, "start": "last" if start is None else str(start), "side": side,
                 "relevance_s": seconds, "plain_forward_s": plain}
            )  # fmt: skip
    return rows


def _run_side(side: str, oracle: str, repeats: int) -> List[Dict[str, Any]]:
    from benchmarks import _common

    env, cwd = _common.side_env(side, oracle)
    env = _common.steady_malloc(env)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--repeats", str(repeats)]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(ours: Sequence[Dict[str, Any]], original: Sequence[Dict[str, Any]]) -> str:
    lines = [
        "| model | rollout from | ours: relevance | original: notebook recipe | ours / original "
        "| plain forward (ours / original) |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in zip(ours, original):
        lines.append(
            f"| {a['model']} | block {a['start']} | {a['relevance_s'] * 1000:.0f} ms | "
            f"{b['relevance_s'] * 1000:.0f} ms | {a['relevance_s'] / b['relevance_s']:.2f} | "
            f"{a['plain_forward_s'] * 1000:.0f} / {b['plain_forward_s'] * 1000:.0f} ms |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", default=None, help="folder holding the original clip")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="worker processes per side")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--worker", choices=("ours", "original"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))  # noqa: T201 - the worker's answer
        return
    from benchmarks import _common

    oracle = _common.resolve_oracle(args.oracle)
    machine = _common.machine_info()
    results: Dict[str, List[Dict[str, Any]]] = {}
    for round_number in range(args.rounds):  # sides alternate, in turned order: load drifts hit both
        order = ("ours", "original") if round_number % 2 == 0 else ("original", "ours")
        for side in order:
            rows = _run_side(side, oracle, args.repeats)
            kept = results.setdefault(side, rows)
            for old, new in zip(kept, rows):
                for key in ("relevance_s", "plain_forward_s"):
                    old[key] = min(old[key], new[key])
    ours, original = results["ours"], results["original"]
    print(  # noqa: T201 - a benchmark's report
        f"{machine['cpu']}, {machine['cpus']} CPUs, torch {machine['torch']} ({machine['torch_threads']} "
        f"threads), load average {machine['load_average_1min']}; {_common.workers_malloc_note()}\n"
        f"one image x {len(LABELS)} labels, fp32, fastest of {args.repeats} calls in each of {args.rounds} "
        f"worker processes per side (sides alternating)\n\n{table(ours, original)}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine, "ours": ours, "original": original}, indent=1)
        )


if __name__ == "__main__":
    main()
