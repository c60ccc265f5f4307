"""Code written against the original runs unchanged on this package and gives the original's numbers.

Each pattern of tests/support/_downstream.py (18 of them, from projects that `import clip`: shap-e, CoOp,
DALLE2-pytorch, StyleGAN-nada, clipseg, motion-diffusion-model, CLIP-LoRA, ultralytics, transformers'
conversion, ...) runs here against this package; tests/data/downstream_golden.pt holds what the
original returned for the same code and inputs (regenerate: `python tests/data/make_downstream_golden.py
ORACLE_DIR`). Integers, strings, dtypes and counts must be equal; floats agree within the tolerance
stated per pattern below.
"""

import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import torch
from _peers import import_transformers

import clip

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
GOLDEN_PATH = HERE / "data" / "downstream_golden.pt"


def _load_patterns() -> Any:
    spec = importlib.util.spec_from_file_location("_clip_downstream", HERE / "support" / "_downstream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


patterns = _load_patterns()

# (rtol, atol) per pattern. The golden was computed by the original on another CPU: fp32 kernels
# there and here may sum in other orders (SIMD width, blocking), so fp32 results through the tiny
# models' 2 blocks (width 128, values of order 1) differ by a few ulps times the depth: ~1e-6
# relative, bounded here by 1e-4 relative and 1e-5 absolute.
FP32 = (1e-4, 1e-5)
TOLERANCES: Dict[str, Tuple[float, float]] = {
    # fp16 weights and activations (convert_weights) on the CPU: fp16 has 11 significant bits
    # (eps 9.8e-4) and CPU fp16 kernels differ in where they round; 2 blocks of rounding: ~1e-2.
    "mdm_fp16_short_context": (2e-2, 2e-2),
    # gradients: a backward pass sums over the batch and both towers in orders that differ between
    # CPUs, and the softmax of the loss amplifies relative error a little: 1e-3 relative.
    "finetune_step": (1e-3, 1e-5),
    "lora_every_attention": (1e-3, 1e-5),
    "coop_prompt_learning": (1e-3, 1e-5),
    # torchvision's bicubic resize of float tensors: fp32 filter sums, as FP32
    "stylegan_nada_slicing": FP32,
}


@pytest.fixture(scope="module")
def golden() -> Dict[str, Any]:
    return torch.load(GOLDEN_PATH, weights_only=False)["patterns"]


def _hub_load(entry: str, **kwargs: Any) -> Any:
    """torch.hub.load on this repository, as a user points it at a local clone."""
    return torch.hub.load(str(REPO_ROOT), entry, source="local", **kwargs)


def _compare(got: Any, expected: Any, tolerance: Tuple[float, float], where: str) -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert got.shape == expected.shape and got.dtype == expected.dtype, (where, got.shape, expected.shape)
        if expected.is_floating_point():
            rtol, atol = tolerance
            torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")
        else:
            assert torch.equal(got, expected), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected), (where, list(got), list(expected))
        for key in expected:
            _compare(got[key], expected[key], tolerance, f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert type(got) is type(expected) and len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            _compare(a, b, tolerance, f"{where}[{index}]")
    else:
        assert got == expected, (where, got, expected)


@pytest.mark.golden
def test_at_least_fifteen_patterns_have_goldens(golden: Dict[str, Any]) -> None:
    assert len(patterns.PATTERNS) >= 15
    assert list(golden) == list(patterns.PATTERNS), "stale golden: run tests/data/make_downstream_golden.py"


SLOW = {"transformers_conversion"}  # importing transformers takes ~10 s on a loaded machine


@pytest.mark.golden
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in patterns.PATTERNS]
)
def test_pattern_gives_the_originals_numbers(
    name: str, golden: Dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "transformers_conversion":
        import_transformers()  # the conversion pattern needs transformers with torch models
    monkeypatch.chdir(tmp_path)
    got = patterns.run(clip, tmp_path, _hub_load, only={name})[name]
    _compare(got, golden[name], TOLERANCES.get(name, FP32), name)


@pytest.mark.golden
def test_isinstance_count_is_the_originals(golden: Dict[str, Any], tmp_path: Path) -> None:
    counts = patterns.run(clip, tmp_path, _hub_load, only={"isinstance_count"})["isinstance_count"]["counts"]
    assert counts["ViT-B/32"] == 24 == golden["isinstance_count"]["counts"]["ViT-B/32"]


@pytest.mark.golden
def test_comparison_can_fail(golden: Dict[str, Any], tmp_path: Path) -> None:
    """The comparison notices a change the size of a real regression (one weight off by 1%)."""
    expected = golden["manual_vit_forward"]
    got = patterns.run(clip, tmp_path, _hub_load, only={"manual_vit_forward"})["manual_vit_forward"]
    _compare(got, expected, FP32, "baseline")
    perturbed = {"tokens": got["tokens"] * 1.01}
    with pytest.raises(AssertionError):
        _compare(perturbed, expected, FP32, "perturbed")


def test_download_without_root_uses_the_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers written against early releases call `clip.clip._download(url)` with no root."""
    import hashlib

    payload = b"weights"
    url = f"https://example.invalid/clip/models/{hashlib.sha256(payload).hexdigest()}/x.pt"
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path))
    (tmp_path / "x.pt").write_bytes(payload)  # already there and verified: no network
    assert clip.clip._download(url) == os.path.join(str(tmp_path), "x.pt")


def test_assigned_tokenizer_is_used_and_restored() -> None:
    """`clip.clip._tokenizer = t` reroutes `clip.tokenize` (and its errors); `del` restores the default."""
    default = clip.clip._tokenizer
    expected = clip.tokenize(["a dog", "a cat"])

    class Doubled(type(default)):
        def encode(self, text: str) -> list:
            return super().encode(text) * 2

    clip.clip._tokenizer = Doubled()
    try:
        assert isinstance(clip.clip._tokenizer, Doubled)
        doubled = clip.tokenize(["a dog", "a cat"])
        ids = default.encode("a dog")
        sot, eot = expected[0, 0].item(), default.encoder["<|endoftext|>"]
        assert doubled[0, : 2 * len(ids) + 2].tolist() == [sot, *ids, *ids, eot]
        assert doubled.dtype == expected.dtype and doubled.shape == expected.shape
        with pytest.raises(RuntimeError, match="too long for context length 4"):
            clip.tokenize("a dog", context_length=4)
    finally:
        del clip.clip._tokenizer
    assert torch.equal(clip.tokenize(["a dog", "a cat"]), expected)
    assert type(clip.clip._tokenizer) is type(default)


def test_tokenizer_reads_a_binary_file_object() -> None:
    from clip.simple_tokenizer import SimpleTokenizer, default_bpe

    with open(default_bpe(), "rb") as raw:
        from_file = SimpleTokenizer(bpe_path=raw)
        assert not raw.closed  # the caller's file stays the caller's
    from_path = SimpleTokenizer(bpe_path=Path(default_bpe()))
    text = "Hello, World! a photo of 2 cats"
    assert from_file.encode(text) == from_path.encode(text) == clip.clip._tokenizer.encode(text)
