"""The device-independent checks behind tests/test_cuda.py (tests/support/_cuda_checks.py), run on the CPU.

What the CUDA tests rely on is checked here where every machine can run it: the graph-constant
scan against an archive before and after patching, the feature tolerance against fp16 arithmetic
on the CPU, the operator recorder against known attention backends and host reads, and
`preprocess_batch(pin_memory=True)`'s error on a machine without a GPU.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from _checkpoints import example_inputs, release_archive, tiny_model
from _cuda_checks import (
    FP16_FEATURE_REL_ERR,
    FUSED_SDPA_OPS,
    MATH_SDPA_OPS,
    assert_features_close,
    cpu_device_constants,
    device_constants,
    feature_errors,
    host_reads,
    sdpa_ops,
    to_dtype_constants,
)
from _published import CLIP_PNG
from torch.nn.attention import SDPBackend, sdpa_kernel

import clip
from clip._weights.jit import FLOAT, HALF, load_jit


def _raw_archive(arch: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(release_archive(arch)), map_location="cpu")


# ---- graph constants ---------------------------------------------------------------------------


def test_device_constants_before_and_after_patching_for_the_cpu() -> None:
    raw = _raw_archive("vit")
    assert device_constants(raw) and set(device_constants(raw)) == {"cuda"}  # as released
    assert not cpu_device_constants(raw)
    assert HALF in to_dtype_constants(raw)
    patched = load_jit(str(release_archive("vit")), torch.device("cpu"))
    assert set(device_constants(patched)) == {"cpu"} and cpu_device_constants(patched)
    assert HALF not in to_dtype_constants(patched) and FLOAT in to_dtype_constants(patched)
    cuda1 = _raw_archive("vit")
    from clip._weights.jit import patch_device

    patch_device(cuda1, torch.device("cuda", 1))  # rewrites the graphs only; nothing runs
    assert set(device_constants(cuda1)) == {"cuda:1"} and not cpu_device_constants(cuda1)


class _Strings(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.div(x, 2, rounding_mode="floor").to(device="cpu")


def test_device_constants_ignore_strings_that_name_no_device() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(_Strings())
    assert device_constants(scripted) == ["cpu"]  # "floor" is a string constant too, not a device


# ---- feature tolerance -------------------------------------------------------------------------


def test_feature_errors_measure_relative_distance_and_cosine() -> None:
    expected = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    scaled = expected * 1.005  # exact relative error 0.005 per row, same direction
    errors = feature_errors(scaled, expected)
    assert errors["rel_err"] == pytest.approx(0.005) and errors["cosine"] == pytest.approx(1.0)
    assert errors["max_abs"] == pytest.approx(0.02)  # 4 * 0.005
    assert_features_close(scaled.half(), expected, "within")
    with pytest.raises(AssertionError, match="relative error 0.02"):
        assert_features_close(expected * 1.02, expected, "scaled by 1.02")
    with pytest.raises(AssertionError):
        assert_features_close(torch.full_like(expected, float("nan")), expected, "NaN")
    with pytest.raises(ValueError, match="two"):
        feature_errors(expected[0], expected[0])


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_fp16_arithmetic_stays_within_the_fp16_tolerance(arch: str) -> None:
    """The tolerance holds for fp16 activations computed on the CPU (the GPU's kernels round in
    another order, within the margin FP16_FEATURE_REL_ERR leaves), and a defect breaks it."""
    half = tiny_model(arch)  # the release's mixed precision: fp16 weights, fp16 activations
    images, tokens = example_inputs(arch)
    full = tiny_model(arch).float()
    with torch.no_grad():
        for tower, encode in (("image", "encode_image"), ("text", "encode_text")):
            argument = images if tower == "image" else tokens
            reference = getattr(full, encode)(argument)
            errors = assert_features_close(getattr(half, encode)(argument), reference, f"{arch} {tower}")
            assert errors["rel_err"] > 0  # fp16 really ran
        full.transformer.resblocks[0].attn_mask = None  # a defect: the text tower sees the future
        broken = full.encode_text(tokens)
    assert feature_errors(broken, reference)["rel_err"] > FP16_FEATURE_REL_ERR


# ---- operator recording -------------------------------------------------------------------------


def test_sdpa_ops_name_the_backend_that_ran() -> None:
    q = torch.arange(2 * 2 * 5 * 8, dtype=torch.float32).reshape(2, 2, 5, 8) / 100
    taken = sdpa_ops(lambda: F.scaled_dot_product_attention(q, q, q))
    assert taken and taken <= FUSED_SDPA_OPS  # the CPU's flash kernel
    with sdpa_kernel([SDPBackend.MATH]):
        assert sdpa_ops(lambda: F.scaled_dot_product_attention(q, q, q)) <= MATH_SDPA_OPS
    assert not sdpa_ops(lambda: q @ q.transpose(-1, -2))


def test_sdpa_ops_see_the_attention_of_both_towers() -> None:
    model = tiny_model("resnet").float()
    images, tokens = example_inputs("resnet")
    with torch.no_grad():
        assert sdpa_ops(lambda: model.encode_image(images))  # attention pooling
        assert sdpa_ops(lambda: model.encode_text(tokens))  # causal self-attention


def test_host_reads_find_values_read_back_to_the_host() -> None:
    values = torch.arange(6)
    assert host_reads(lambda: int(values.min())) == ["aten._local_scalar_dense.default"]
    assert host_reads(lambda: values.nonzero()) == ["aten.nonzero.default"]
    assert host_reads(lambda: (values + 1).argmax(dim=-1)) == []


# ---- pinned memory without a GPU ---------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_preprocess_batch_pin_memory_without_a_gpu_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"pin_memory=True.*pass pin_memory=False"):
        clip.preprocess_batch([CLIP_PNG], 32, pin_memory=True)
    batch = clip.preprocess_batch([CLIP_PNG], 32, num_workers=0)
    assert not batch.is_pinned() and batch.shape == (1, 3, 32, 32)
    with pytest.raises(TypeError, match="pin_memory"):
        clip.preprocess_batch([CLIP_PNG], 32, pin_memory="yes")
