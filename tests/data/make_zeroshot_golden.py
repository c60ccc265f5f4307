"""Make tests/data/zeroshot_golden.json: the release notebook's zero-shot recipe run with the ORIGINAL
`clip` (the oracle) on the tiny test-made archives.

Run from the repository root with our virtual environment (the oracle runs in a subprocess of its
own, with only the oracle folder on its path and its working directory outside the repository):

    .venv/bin/python tests/data/make_zeroshot_golden.py [--oracle DIR]   # else $CLIP_ORACLE_PATH, .oracle

For the tiny ViT and ResNet release-layout archives of tests/support/_checkpoints.py (seed 0), loaded with
`clip.load(path, device="cpu", jit=False)`, the oracle computes

* ``classifier``: the `zeroshot_classifier` of the release's "Prompt Engineering for ImageNet"
  notebook (per class: encode the filled templates, normalise each, average, renormalise; columns
  stacked) for the classes and templates of tests/support/_zeroshot_inputs.py;
* ``logits``: the notebook's evaluation step on the integer-drawn images of
  tests/support/_zeroshot_inputs.py (normalised image features, ``100. * image_features @ classifier``).
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent
TESTS = DATA.parent
OUTPUT = DATA / "zeroshot_golden.json"
ARCHES = ("vit", "resnet")
DIGITS = 9  # significant digits kept (float32 carries ~7)

_ORACLE_SCRIPT = r"""
import json, sys
import torch
import clip
assert not hasattr(clip, "zeroshot"), clip.__file__  # the original, not ours

job = json.loads(open(sys.argv[1]).read())
out = {}
for arch, path in job["archives"].items():
    model, preprocess = clip.load(path, device="cpu", jit=False)

    def zeroshot_classifier(classnames, templates):  # the release notebook's recipe
        with torch.no_grad():
            zeroshot_weights = []
            for classname in classnames:
                texts = [template.format(classname) for template in templates]
                texts = clip.tokenize(texts)
                class_embeddings = model.encode_text(texts)
                class_embeddings /= class_embeddings.norm(dim=-1, keepdim=True)
                class_embedding = class_embeddings.mean(dim=0)
                class_embedding /= class_embedding.norm()
                zeroshot_weights.append(class_embedding)
            zeroshot_weights = torch.stack(zeroshot_weights, dim=1)
        return zeroshot_weights

    weights = zeroshot_classifier(job["classes"], job["templates"])
    images = torch.load(job["images"][arch])
    with torch.no_grad():
        image_features = model.encode_image(images)
        image_features /= image_features.norm(dim=-1, keepdim=True)
        logits = 100. * image_features @ weights
    out[arch] = {"classifier": weights.tolist(), "logits": logits.tolist()}
open(sys.argv[2], "w").write(json.dumps(out))
"""


def _round(value):
    if isinstance(value, list):
        return [_round(v) for v in value]
    return float(f"{value:.{DIGITS}g}")


def main() -> None:
    sys.path.insert(0, str(TESTS / "support"))
    from _checkpoints import TINY_DIMS, release_archive, tiny_state_dict
    from _golden import digest, oracle_argument, resolve_oracle, run_oracle_script
    from _zeroshot_inputs import CLASSES, TEMPLATES, pixel_batch

    oracle = resolve_oracle(oracle_argument(__doc__))

    with tempfile.TemporaryDirectory() as scratch:
        images = {}
        for arch in ARCHES:
            images[arch] = str(Path(scratch) / f"images-{arch}.pt")
            torch.save(pixel_batch(TINY_DIMS[arch]["image_resolution"]), images[arch])
        job = {
            "archives": {arch: str(release_archive(arch)) for arch in ARCHES},
            "classes": CLASSES,
            "templates": TEMPLATES,
            "images": images,
        }
        job_path, out_path = Path(scratch) / "job.json", Path(scratch) / "out.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        run_oracle_script(_ORACLE_SCRIPT, [str(job_path), str(out_path)], scratch, oracle)
        results = json.loads(out_path.read_text(encoding="utf-8"))

    golden = {
        "about": "The release notebook's zero-shot recipe run with the original clip on the tiny test "
        "archives; made by tests/data/make_zeroshot_golden.py",
        "classes": CLASSES,
        "templates": TEMPLATES,
        "archives": {
            arch: {
                "state_sha256": digest(tiny_state_dict(arch)),
                "images_sha256": digest({"images": pixel_batch(TINY_DIMS[arch]["image_resolution"])}),
                "classifier": _round(results[arch]["classifier"]),
                "logits": _round(results[arch]["logits"]),
            }
            for arch in ARCHES
        },
    }
    OUTPUT.write_text(json.dumps(golden) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
