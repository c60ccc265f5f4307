"""Make tests/data/published_golden.json: the ORIGINAL `clip` (the oracle) on the README's examples,
run on the tiny test-made archives instead of the released weights.

Run from the repository root with our virtual environment (the oracle runs in a subprocess of its
own, with only the oracle folder on its path and its working directory outside the repository):

    .venv/bin/python tests/data/make_published_golden.py [--oracle DIR]

For the tiny ViT and ResNet release-layout archives of tests/support/_checkpoints.py (seed 0), the oracle's
`clip.load(path, device="cpu", jit=False)` and `jit=True` compute

* the README's first example: CLIP.png against "a diagram", "a dog", "a cat", the softmax of
  `logits_per_image` (the published run: [[0.9927937, 0.00421068, 0.00299572]] with ViT-B/32);
* the README's second example, with a deterministic 32 x 32 pattern (tests/support/_published.py) in place of
  CIFAR-100 test image 3637: "a photo of a {label}" for the 100 CIFAR-100 classes, softmax of 100 x
  cosine similarity, top 5.

The file also records what the numbers depend on (SHA256 of the archive's weights, of CLIP.png and of
the pattern's pixels, the texts and classes), so that the tests can tell stale data from a regression.
"""

import hashlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parent
TESTS = DATA.parent
REPO = TESTS.parent
OUTPUT = DATA / "published_golden.json"
ARCHES = ("vit", "resnet")
PROB_DIGITS = 9  # significant digits kept in the JSON (float32 carries ~7)

_ORACLE_SCRIPT = r"""
import json, sys
import torch
from PIL import Image
import clip

job = json.loads(open(sys.argv[1]).read())
out = {}
for arch, path in job["archives"].items():
    out[arch] = {}
    for mode, jit in (("python", False), ("jit", True)):
        model, preprocess = clip.load(path, device="cpu", jit=jit)
        with torch.no_grad():
            # README example 1
            image = preprocess(Image.open(job["clip_png"])).unsqueeze(0)
            text = clip.tokenize(job["texts"])
            logits_per_image, logits_per_text = model(image, text)
            probs = logits_per_image.softmax(dim=-1).cpu().numpy()
            # README example 2 (CIFAR-100 classes, the pattern image)
            image_input = preprocess(Image.open(job["pattern_png"])).unsqueeze(0)
            text_inputs = torch.cat([clip.tokenize(job["template"].format(c)) for c in job["classes"]])
            image_features = model.encode_image(image_input).float()
            text_features = model.encode_text(text_inputs).float()
        image_features /= image_features.norm(dim=-1, keepdim=True)
        text_features /= text_features.norm(dim=-1, keepdim=True)
        similarity = (100.0 * image_features @ text_features.T).softmax(dim=-1)
        values, indices = similarity[0].topk(5)
        out[arch][mode] = {
            "clip_png_probs": probs.tolist(),
            "cifar_top5": [[job["classes"][int(i)], float(v)] for v, i in zip(values, indices)],
        }
open(sys.argv[2], "w").write(json.dumps(out))
"""


def _round(value, digits: int = PROB_DIGITS):
    if isinstance(value, dict):
        return {key: _round(v, digits) for key, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    return value


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    sys.path.insert(0, str(TESTS / "support"))
    from _checkpoints import release_archive, tiny_state_dict
    from _golden import digest, oracle_argument, resolve_oracle, run_oracle_script

    oracle = resolve_oracle(oracle_argument(__doc__))
    from _published import CIFAR_TEMPLATE, CLIP_PNG, README_TEXTS, image_sha256, pattern_image

    classes = list(_load_by_path("_datasets", REPO / "notebooks" / "_datasets.py").CIFAR100_CLASSES)
    pattern = pattern_image()
    with tempfile.TemporaryDirectory() as scratch:
        pattern_png = Path(scratch) / "pattern.png"
        pattern.save(pattern_png)
        job = {
            "archives": {arch: str(release_archive(arch)) for arch in ARCHES},
            "clip_png": str(CLIP_PNG),
            "pattern_png": str(pattern_png),
            "texts": list(README_TEXTS),
            "template": CIFAR_TEMPLATE,
            "classes": classes,
        }
        job_path, out_path = Path(scratch) / "job.json", Path(scratch) / "out.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        run_oracle_script(_ORACLE_SCRIPT, [str(job_path), str(out_path)], scratch, oracle)
        results = json.loads(out_path.read_text(encoding="utf-8"))

    golden = {
        "about": "The original clip (clip-anytorch 2.6.0) on the README examples with the tiny test "
        "archives; made by tests/data/make_published_golden.py",
        "clip_png_sha256": hashlib.sha256(CLIP_PNG.read_bytes()).hexdigest(),
        "texts": list(README_TEXTS),
        "template": CIFAR_TEMPLATE,
        "classes": classes,
        "pattern_sha256": image_sha256(pattern),
        "archives": {
            arch: {"state_sha256": digest(tiny_state_dict(arch)), **_round(results[arch])} for arch in ARCHES
        },
    }
    OUTPUT.write_text(json.dumps(golden, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
