"""Make tests/data/load_golden.pt: the ORIGINAL `clip.load` (the oracle) on our test archives.

Run from the repository root with our virtual environment (the oracle runs in a subprocess of its
own, with only the oracle folder on its path and its working directory outside the repository):

    .venv/bin/python tests/data/make_load_golden.py [--oracle DIR]

For the tiny ViT and ResNet release-layout archives of tests/support/_checkpoints.py (seed 0: weights of
tests/support/_model_factory.py, traced like the release, "cuda" device constants, Half dtype constants,
storages recorded on cuda:0) it records, for the original's `load(path, device="cpu", jit=False)`
and `load(path, device="cpu", jit=True)`: image features, text features and logits_per_image on
`example_inputs(arch)`. Also recorded: SHA256 digests of the archive's weights and of the inputs, so
that the test can tell stale golden data from a regression.
"""

import sys
import tempfile
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent
TESTS = DATA.parent
OUTPUT = DATA / "load_golden.pt"
ARCHES = ("vit", "resnet")

_ORACLE_SCRIPT = r"""
import sys, torch, clip
jobs = torch.load(sys.argv[1])
out = {}
for arch, job in jobs.items():
    out[arch] = {}
    for mode, jit in (("python", False), ("jit", True)):
        model, _ = clip.load(job["path"], device="cpu", jit=jit)
        with torch.no_grad():
            out[arch][mode] = {
                "image_features": model.encode_image(job["images"]).float(),
                "text_features": model.encode_text(job["tokens"]).float(),
                "logits_per_image": model(job["images"], job["tokens"])[0].float(),
            }
torch.save(out, sys.argv[2])
"""


def main() -> None:
    sys.path.insert(0, str(TESTS / "support"))
    from _checkpoints import example_inputs, release_archive, tiny_state_dict
    from _golden import digest, oracle_argument, resolve_oracle, run_oracle_script

    oracle = resolve_oracle(oracle_argument(__doc__))

    golden = {}
    jobs = {}
    for arch in ARCHES:
        images, tokens = example_inputs(arch)
        jobs[arch] = {"path": str(release_archive(arch)), "images": images, "tokens": tokens}
        golden[arch] = {
            "state_sha256": digest(tiny_state_dict(arch)),
            "inputs_sha256": digest({"images": images, "tokens": tokens}),
        }
    with tempfile.TemporaryDirectory() as scratch:
        jobs_path, out_path = Path(scratch) / "jobs.pt", Path(scratch) / "out.pt"
        torch.save(jobs, jobs_path)
        run_oracle_script(_ORACLE_SCRIPT, [str(jobs_path), str(out_path)], scratch, oracle)
        results = torch.load(out_path)
    for arch in ARCHES:
        golden[arch].update(results[arch])
    torch.save(golden, OUTPUT)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
