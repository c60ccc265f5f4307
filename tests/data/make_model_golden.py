"""Make the golden files of tests/test_model.py with the ORIGINAL implementation (the oracle).

Run with our virtual environment; the script runs itself again with only the oracle folder on
PYTHONPATH and a scratch working directory, so that our own `clip/` package cannot shadow it:

    .venv/bin/python tests/data/make_model_golden.py [--oracle DIR]

(DIR defaults to $CLIP_ORACLE_PATH, else .oracle in the repository.)

Writes next to this script:
- model_golden_layout.pt: for the nine released architectures and the two tiny test configs,
  the key count, parameter count and a SHA256 of the (key, shape, dtype) list, in order, of the
  original's `CLIP` after `convert_weights` (built on the meta device). Before writing, it checks
  that tests/support/_model_factory.py describes exactly that layout.
- model_golden_<config>.pt for tiny-vit, tiny-rn, ViT-B/32 and RN50: the seeds, the token ids
  (the original tokenizer on fixed captions) and the original's fp32 outputs
  (`build_model(sd).float()`): image features, text features and logits_per_image, for the
  state dict of `_model_factory.make_state_dict(config, seed)` and the images of
  `_model_factory.make_images(resolution, image_seed)`.
"""

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch

DATA = Path(__file__).resolve().parent
FACTORY_PATH = DATA.parent / "support" / "_model_factory.py"
sys.path.insert(0, str(DATA.parent / "support"))  # _golden (imports no clip)
from _golden import oracle_argument, under_oracle  # noqa: E402

CAPTIONS = ["a diagram", "a dog", "a cat", "a photo of a cat sitting on a red sofa at night"]
SEEDS = {"tiny-vit": 11, "tiny-rn": 12, "ViT-B/32": 13, "RN50": 14}
IMAGE_SEED_OFFSET = 1000
IMAGE_BATCH = 2


def load_factory():
    spec = importlib.util.spec_from_file_location("_model_factory", FACTORY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def golden_path(config: str) -> Path:
    return DATA / f"model_golden_{config.replace('/', '-').replace('@', '-')}.pt"


def layout_digest(entries: List[Tuple[str, Tuple[int, ...], torch.dtype]]) -> str:
    text = "".join(f"{key}|{tuple(shape)}|{dtype}\n" for key, shape, dtype in entries)
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> None:
    under_oracle(__file__, oracle_argument(__doc__))
    import clip  # the oracle (checked by under_oracle)
    from clip.model import CLIP, build_model, convert_weights

    factory = load_factory()

    layouts: Dict[str, Dict[str, object]] = {}
    for name in factory.CONFIGS:
        with torch.device("meta"):
            model = CLIP(**factory.dims_of(name))
            convert_weights(model)
        entries = [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]
        if entries != factory.layout(name):
            sys.exit(f"tests/support/_model_factory.py disagrees with the original's layout for {name}")
        layouts[name] = {
            "keys": len(entries),
            "params": sum(p.numel() for p in model.parameters()),
            "sha256": layout_digest(entries),
        }
        print(f"{name}: {layouts[name]}")
    torch.save({"layouts": layouts, "torch": str(torch.__version__)}, DATA / "model_golden_layout.pt")

    tokens = clip.tokenize(CAPTIONS).to(torch.int64)  # (4, 77)
    for config, seed in SEEDS.items():
        dims = factory.dims_of(config)
        state_dict = factory.make_state_dict(config, seed)
        model = build_model(dict(state_dict)).float()  # a copy: the original deletes the scalar keys
        image_seed = seed + IMAGE_SEED_OFFSET
        images = factory.make_images(dims["image_resolution"], image_seed, IMAGE_BATCH)
        with torch.no_grad():
            image_features = model.encode_image(images)
            text_features = model.encode_text(tokens)
            logits_per_image, _ = model(images, tokens)
        golden = {
            "config": config,
            "seed": seed,
            "image_seed": image_seed,
            "image_batch": IMAGE_BATCH,
            "captions": CAPTIONS,
            "tokens": tokens.clone(),
            "image_features": image_features.clone(),
            "text_features": text_features.clone(),
            "logits_per_image": logits_per_image.clone(),
            "oracle": "clip-anytorch 2.6.0",
            "torch": str(torch.__version__),
        }
        torch.save(golden, golden_path(config))
        print(
            f"{config}: image {tuple(image_features.shape)} |max| {image_features.abs().max():.3g}, "
            f"text {tuple(text_features.shape)} |max| {text_features.abs().max():.3g}, "
            f"logits {logits_per_image.flatten().tolist()}"
        )


if __name__ == "__main__":
    main()
