"""Make tests/data/export_golden.pt, the reference outputs of tests/test_export.py, with the ORIGINAL
implementation (the oracle).

Run with our virtual environment; the script runs itself again with only the oracle folder on
PYTHONPATH and a scratch working directory, so that our own `clip/` package cannot shadow it:

    .venv/bin/python tests/data/make_export_golden.py [--oracle DIR]

(DIR defaults to $CLIP_ORACLE_PATH, else .oracle in the repository.)

The goldens of tests/test_model.py (model_golden_tiny-*.pt) hold short captions only and one grid
size per tower. The ONNX export is checked on the structural variants of the nine released models,
at a few hundred thousand parameters each:

- "rn-odd-grid": a ResNet with attention pooling over a 3x3 grid (the released ResNets pool 7x7 to
  14x14 grids), at a width that is not a power of two (like RN50x4's 80);
- "vit-32px-patch": a ViT with 32-pixel patches at 224 pixels, a 7x7 grid (ViT-B/32);
- "vit-14px-patch-336": a ViT with 14-pixel patches at 336 pixels, a 24x24 grid (ViT-L/14@336px).

For each it stores the ten dimensions, the weight seed (`_model_factory.make_state_dict`), the
image seed and batch (`_model_factory.make_images`), the texts and the original tokenizer's ids
(int32; an empty text, short ones, one cut to exactly 77 tokens, non-ASCII ones), and the
original's fp32 `encode_image` and `encode_text` of the whole batch.
"""

import importlib.util
import sys
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent
FACTORY_PATH = DATA.parent / "support" / "_model_factory.py"
sys.path.insert(0, str(DATA.parent / "support"))  # _golden (imports no clip)
from _golden import oracle_argument, under_oracle  # noqa: E402

GOLDEN = DATA / "export_golden.pt"
TEXTS = [
    "",
    "a diagram",
    "a photo of a cat sitting on a red sofa " * 12,  # cut to 77 tokens: the last position is EOT
    "一张猫的照片",
    "Café, crème brûlée & naïve 🍰!",
]
IMAGE_BATCH = 3
VOCAB = 49408
CONTEXT = 77


def _dims(embed, res, layers, vwidth, patch, twidth, theads, tlayers):
    return {
        "embed_dim": embed,
        "image_resolution": res,
        "vision_layers": layers,
        "vision_width": vwidth,
        "vision_patch_size": patch,
        "context_length": CONTEXT,
        "vocab_size": VOCAB,
        "transformer_width": twidth,
        "transformer_heads": theads,
        "transformer_layers": tlayers,
    }


# name: (dims, weight seed)
CONFIGS = {
    "rn-odd-grid": (_dims(48, 96, (1, 1, 1, 1), 10, None, 64, 1, 2), 281),
    "vit-32px-patch": (_dims(64, 224, 1, 64, 32, 64, 1, 2), 282),
    "vit-14px-patch-336": (_dims(64, 336, 1, 64, 14, 64, 1, 1), 283),
}
IMAGE_SEED_OFFSET = 1000


def load_factory():
    spec = importlib.util.spec_from_file_location("_model_factory", FACTORY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    under_oracle(__file__, oracle_argument(__doc__))
    import clip  # the oracle (checked by under_oracle)
    from clip.model import build_model

    factory = load_factory()
    tokens = clip.tokenize(TEXTS, truncate=True).to(torch.int32)  # (5, 77)
    if int(tokens[2, -1]) != VOCAB - 1:
        sys.exit("the long text does not fill the 77 positions; make it longer")
    models = {}
    for name, (dims, seed) in CONFIGS.items():
        model = build_model(factory.make_state_dict(dims, seed)).float().eval()
        image_seed = seed + IMAGE_SEED_OFFSET
        images = factory.make_images(dims["image_resolution"], image_seed, IMAGE_BATCH)
        with torch.no_grad():
            image_features = model.encode_image(images)
            text_features = model.encode_text(tokens.to(torch.int64))
        models[name] = {
            "dims": dims,
            "seed": seed,
            "image_seed": image_seed,
            "image_batch": IMAGE_BATCH,
            "image_features": image_features.clone(),
            "text_features": text_features.clone(),
        }
        print(
            f"{name}: image {tuple(image_features.shape)} |max| {image_features.abs().max():.3g}, "
            f"text {tuple(text_features.shape)} |max| {text_features.abs().max():.3g}"
        )
    golden = {
        "texts": TEXTS,
        "tokens": tokens.clone(),
        "models": models,
        "oracle": "clip-anytorch 2.6.0",
        "torch": str(torch.__version__),
    }
    torch.save(golden, GOLDEN)


if __name__ == "__main__":
    main()
