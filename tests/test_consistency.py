"""jit=True and jit=False give the same predictions, as the original's own test checks.

For every released model whose weights are available (cached, or ``CLIP_ALLOW_DOWNLOAD=1``; marker
`real_weights`) and always for the tiny test-made archives (ViT and ResNet): the softmax of
`logits_per_image` on CLIP.png against "a diagram", "a dog", "a cat" agrees between the TorchScript
model and the Python one within the original's tolerance (atol 0.01, rtol 0.1). On the tiny archives
both must also match what the original implementation computes (tests/data/published_golden.json).
"""

import numpy as np
import pytest
import torch
from _checkpoints import release_archive, tiny_state_dict
from _golden import digest
from _published import (
    CLIP_PNG,
    GOLDEN_ATOL,
    GOLDEN_RTOL,
    REGENERATE,
    load_golden,
    readme_label_probs,
    released_model,
)
from PIL import Image

import clip

ORIGINAL_ATOL = 0.01  # the original's test_consistency tolerances
ORIGINAL_RTOL = 0.1
TINY = ("tiny-vit", "tiny-resnet")
MODELS = [pytest.param(name, marks=pytest.mark.real_weights) for name in clip.available_models()]


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"  # as the original's test


@pytest.mark.golden
@pytest.mark.parametrize("model_name", MODELS + list(TINY))
def test_jit_and_python_models_agree_on_clip_png(model_name: str) -> None:
    arch = model_name[len("tiny-") :] if model_name in TINY else None
    checkpoint = str(release_archive(arch)) if arch else released_model(model_name)
    device = _device()
    probs = {}
    for jit in (True, False):
        model, preprocess = clip.load(checkpoint, device=device, jit=jit)
        with Image.open(CLIP_PNG) as image:
            probs[jit] = readme_label_probs(model, preprocess, image, device=device)
        del model
    np.testing.assert_allclose(probs[True], probs[False], atol=ORIGINAL_ATOL, rtol=ORIGINAL_RTOL)

    if arch and device == "cpu":
        entry = load_golden()["archives"][arch]
        assert digest(tiny_state_dict(arch)) == entry["state_sha256"], REGENERATE
        for jit, mode in ((True, "jit"), (False, "python")):
            np.testing.assert_allclose(
                probs[jit], entry[mode]["clip_png_probs"], rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL
            )
