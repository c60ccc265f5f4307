"""Regression against the release's published outputs (the README's two examples).

Each test is parametrised over
* the released ViT-B/32 against the published numbers (marker `real_weights`; runs when the weights
  are cached or ``CLIP_ALLOW_DOWNLOAD=1``, and for CIFAR-100 when the dataset is present), and
* the tiny test-made archives against what the original implementation computes for them
  (tests/data/published_golden.json, made by tests/data/make_published_golden.py),
so the code that checks the published figures is exercised offline too.
"""

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, List, Sequence, Tuple

import numpy as np
import pytest
from _checkpoints import release_archive, tiny_state_dict
from _golden import digest
from _published import (
    CIFAR_IMAGE_INDEX,
    CLIP_PNG,
    GOLDEN_ATOL,
    GOLDEN_RTOL,
    PUBLISHED_ATOL,
    PUBLISHED_CIFAR_TOP5,
    PUBLISHED_README_PROBS,
    PUBLISHED_RTOL,
    README_TEXTS,
    REGENERATE,
    cifar100_test_set,
    cifar_top5,
    image_sha256,
    load_golden,
    pattern_image,
    readme_label_probs,
    released_model,
)
from PIL import Image

import clip

TopK = List[Tuple[str, float]]


@dataclass(frozen=True)
class Source:
    """A model and what it must produce: published numbers (released weights) or golden ones."""

    model: Callable[[], str]  # what to pass to clip.load; may skip the test
    arch: str  # "released", or the tiny archive's architecture
    rtol: float
    atol: float

    @property
    def tiny(self) -> bool:
        return self.arch != "released"


RELEASED = Source(lambda: released_model("ViT-B/32"), "released", PUBLISHED_RTOL, PUBLISHED_ATOL)
TINY_VIT = Source(lambda: str(release_archive("vit")), "vit", GOLDEN_RTOL, GOLDEN_ATOL)
TINY_RESNET = Source(lambda: str(release_archive("resnet")), "resnet", GOLDEN_RTOL, GOLDEN_ATOL)
SOURCES = [
    pytest.param(RELEASED, marks=pytest.mark.real_weights, id="ViT-B/32-published"),
    pytest.param(TINY_VIT, id="tiny-vit-oracle"),
    pytest.param(TINY_RESNET, id="tiny-resnet-oracle"),
]


def _golden_for(source: Source) -> Any:
    golden = load_golden()
    entry = golden["archives"][source.arch]
    assert digest(tiny_state_dict(source.arch)) == entry["state_sha256"], REGENERATE
    return golden, entry["python"]


def _assert_top5_matches(ours: TopK, expected: Sequence[Tuple[str, float]], rtol: float, atol: float) -> None:
    assert ours[0][0] == expected[0][0], f"top-1 {ours[0]} != {expected[0]}"
    assert {label for label, _ in ours} == {label for label, _ in expected}, f"top-5 {ours} != {expected}"
    ours_by_label = dict(ours)
    labels = [label for label, _ in expected]
    np.testing.assert_allclose(
        [ours_by_label[label] for label in labels],
        [p for _, p in expected],
        rtol=rtol,
        atol=atol,
        err_msg=f"top-5 probabilities {ours} != {list(expected)}",
    )


@pytest.mark.golden
@pytest.mark.parametrize("source", SOURCES)
def test_readme_example_clip_png(source: Source) -> None:
    """README: CLIP.png vs "a diagram", "a dog", "a cat" -> label probs."""
    model, preprocess = clip.load(source.model(), device="cpu")
    if source.tiny:
        golden, outputs = _golden_for(source)
        assert hashlib.sha256(CLIP_PNG.read_bytes()).hexdigest() == golden["clip_png_sha256"], REGENERATE
        assert tuple(golden["texts"]) == README_TEXTS, REGENERATE
        expected = np.array(outputs["clip_png_probs"])
    else:
        expected = np.array(PUBLISHED_README_PROBS)
    with Image.open(CLIP_PNG) as image:
        probs = readme_label_probs(model, preprocess, image, README_TEXTS)
    assert probs.shape == expected.shape == (1, len(README_TEXTS))
    assert probs.argmax() == expected.argmax()
    np.testing.assert_allclose(probs, expected, rtol=source.rtol, atol=source.atol)


@pytest.mark.golden
@pytest.mark.parametrize("source", SOURCES)
def test_readme_example_cifar100_top5(source: Source) -> None:
    """README: CIFAR-100 test image 3637, "a photo of a {label}" -> top-5 classes and probabilities.

    The tiny archives stand in a deterministic 32 x 32 pattern for the CIFAR image (the dataset
    cannot be shipped) and use the same 100 class names.
    """
    checkpoint = source.model()  # first: skips before the dataset is looked for if weights are missing
    if source.tiny:
        golden, outputs = _golden_for(source)
        image = pattern_image()
        assert image_sha256(image) == golden["pattern_sha256"], REGENERATE
        classes, expected = golden["classes"], [tuple(pair) for pair in outputs["cifar_top5"]]
    else:
        dataset = cifar100_test_set()
        image, _ = dataset[CIFAR_IMAGE_INDEX]
        classes, expected = dataset.classes, list(PUBLISHED_CIFAR_TOP5)
    model, preprocess = clip.load(checkpoint, device="cpu")
    ours = cifar_top5(model, preprocess, image, classes)
    _assert_top5_matches(ours, expected, source.rtol, source.atol)


@pytest.mark.golden
def test_golden_tolerance_can_fail() -> None:
    """The golden comparison is tight enough to notice a different model: the ResNet's numbers do
    not pass for the ViT archive."""
    outputs = load_golden()["archives"]
    model, preprocess = clip.load(str(release_archive("vit")), device="cpu")
    with Image.open(CLIP_PNG) as image:
        probs = readme_label_probs(model, preprocess, image)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(
            probs, outputs["resnet"]["python"]["clip_png_probs"], rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL
        )
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(probs, PUBLISHED_README_PROBS, rtol=PUBLISHED_RTOL, atol=PUBLISHED_ATOL)


def test_real_weight_tests_say_how_to_run_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Without cached weights and without permission to download, the skip reason says what to do."""
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CLIP_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        released_model("ViT-B/32")
    reason = str(skipped.value)
    assert str(tmp_path / "ViT-B-32.pt") in reason
    assert "CLIP_ALLOW_DOWNLOAD=1" in reason and "https://openaipublic.azureedge.net/" in reason
    (tmp_path / "ViT-B-32.pt").write_bytes(b"")  # present: clip.load gets the name (and verifies it)
    assert released_model("ViT-B/32") == "ViT-B/32"
    monkeypatch.setenv("CLIP_DATA_DIR", str(tmp_path))
    with pytest.raises(pytest.skip.Exception) as skipped:
        cifar100_test_set()
    assert str(tmp_path / "cifar-100-python") in str(skipped.value)
