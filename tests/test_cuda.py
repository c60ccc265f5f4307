"""Every CUDA path of `clip.load` and the encoders, on test-made release-layout archives.

Marked `cuda` and skipped (with the reason) where `torch.cuda.is_available()` is False; the default
`pytest` runs them wherever a GPU is present, and `python -m benchmarks.gpu_check` runs them first.
The archives are the release's layout (tests/support/_checkpoints.py: traced in fp16, graphs holding "cuda"
device constants and Half dtype constants, storages recorded on cuda:0): the tiny ViT and ResNet
ones, and archives of the full-size ViT-B/32 and RN50 shapes with seeded random weights
(tests/support/_model_factory.py), built once per session (several seconds each: marked slow).

Reduced-precision outputs are compared with the CPU fp32 model of the same archive through
tests/support/_cuda_checks.py, whose tolerance (FP16_FEATURE_REL_ERR) is stated and justified there and
exercised on the CPU by tests/test_cuda_checks.py.
"""

import functools
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from _checkpoints import TINY_DIMS, _cache_dir, release_archive, save_torchscript_archive
from _cuda_checks import (
    FUSED_SDPA_OPS,
    assert_features_close,
    cpu_device_constants,
    device_constants,
    host_reads,
    sdpa_ops,
    to_dtype_constants,
)
from _model_factory import layout, make_images, make_state_dict
from _published import CLIP_PNG, readme_label_probs
from PIL import Image

import clip
from clip._weights.jit import FLOAT, HALF
from clip.model import CLIP, build_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False); on a GPU machine run "
        "`python -m benchmarks.gpu_check` or `pytest -m cuda`",
    ),
]

TINY = {"tiny-vit": "vit", "tiny-resnet": "resnet"}
FULL_SIZE = ("ViT-B/32", "RN50")
ARCHIVES = [*TINY, *(pytest.param(name, marks=pytest.mark.slow) for name in FULL_SIZE)]
SEED = 0
IMAGE_SEED = 1
N_IMAGES = 4
TEXTS = ("a diagram", "a dog", "a cat", "a photo of a snake lying on a warm rock in the sun")
ORIGINAL_ATOL = 0.01  # the original's test_consistency tolerances (tests/test_consistency.py)
ORIGINAL_RTOL = 0.1
JIT_CPU_ATOL = 1e-3  # jit=True on the CPU is fp32 throughout, as in tests/test_jit.py
DEVICE_FORMS = {"cuda:0": "cuda:0", "torch.device": torch.device("cuda", 0), "index": 0}


@functools.cache
def archive(name: str) -> Path:
    """The release-layout archive for `name` (tiny or full-size), built once per session; read-only."""
    if name in TINY:
        return release_archive(TINY[name], SEED)
    path = _cache_dir() / f"full-{name.replace('/', '-')}-{SEED}.pt"
    model = build_model(make_state_dict(name, SEED))
    return save_torchscript_archive(model, path, device="cuda")  # fp16 traces are slow on CPUs


def _dims(name: str):
    return TINY_DIMS[TINY[name]] if name in TINY else name


@functools.cache
def inputs(name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images (4, 3, R, R) float32, token ids (4, 77)) on the CPU, for the archive `name`."""
    resolution = TINY_DIMS[TINY[name]]["image_resolution"] if name in TINY else 224
    return make_images(resolution, IMAGE_SEED, N_IMAGES), clip.tokenize(list(TEXTS))


@functools.cache
def cpu_features(name: str) -> Dict[str, torch.Tensor]:
    """fp32 features of the archive's weights on the CPU (`clip.load(..., device="cpu")`, jit=False)."""
    model, _ = clip.load(str(archive(name)), device="cpu")
    images, tokens = inputs(name)
    with torch.no_grad():
        return {"image": model.encode_image(images), "text": model.encode_text(tokens)}


def _encode(model: torch.nn.Module, name: str, device="cuda") -> Dict[str, torch.Tensor]:
    images, tokens = inputs(name)
    with torch.no_grad():
        return {"image": model.encode_image(images.to(device)), "text": model.encode_text(tokens.to(device))}


def _tensors(model: torch.nn.Module):
    return [*model.parameters(), *model.buffers()]


# ---- jit=True on the GPU ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHIVES)
def test_jit_on_cuda_leaves_no_cpu_device_constant_and_matches_the_cpu_model(name: str) -> None:
    model, _ = clip.load(str(archive(name)), device="cuda", jit=True)
    assert isinstance(model, torch.jit.ScriptModule)
    assert not cpu_device_constants(model)
    assert device_constants(model) and set(device_constants(model)) == {"cuda"}
    assert {tensor.device.type for tensor in _tensors(model)} == {"cuda"}
    assert model.visual.conv1.weight.dtype == torch.float16  # the release's weights, not cast
    features = _encode(model, name)
    for tower, value in features.items():
        assert value.device.type == "cuda" and value.dtype == torch.float16, tower
        assert_features_close(value, cpu_features(name)[tower], f"{name} jit=True {tower} (fp16 on cuda)")
    images, tokens = inputs(name)
    with torch.no_grad():
        logits_per_image, logits_per_text = model(images.cuda(), tokens.cuda())
    assert logits_per_image.shape == (N_IMAGES, len(TEXTS)) and logits_per_image.is_cuda
    torch.testing.assert_close(logits_per_text, logits_per_image.t())


# ---- jit=False on the GPU -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHIVES)
def test_python_model_on_cuda_keeps_the_release_mixed_precision(name: str) -> None:
    model, _ = clip.load(str(archive(name)), device="cuda")
    assert isinstance(model, CLIP) and model.dtype == torch.float16
    # the release's dtypes, written out independently in _model_factory.layout: fp16 where the
    # original's convert_weights casts, fp32 norms, embeddings, logit scale and BatchNorm statistics
    expected = {key: dtype for key, _, dtype in layout(_dims(name))}
    assert {key: value.dtype for key, value in model.state_dict().items()} == expected
    assert {tensor.device.type for tensor in _tensors(model)} == {"cuda"}
    assert all(block.attn_mask.is_cuda for block in model.transformer.resblocks)  # not a state-dict key
    for tower, value in _encode(model, name).items():
        assert value.is_cuda and value.dtype == torch.float16, tower
        assert_features_close(value, cpu_features(name)[tower], f"{name} jit=False {tower} (fp16 on cuda)")


def test_attention_mask_follows_the_model_to_cuda() -> None:
    moved = build_model(make_state_dict(_dims("tiny-vit"), SEED)).to("cuda")
    assert all(block.attn_mask.is_cuda for block in moved.transformer.resblocks)


@pytest.mark.parametrize("name", ARCHIVES)
def test_jit_and_python_models_agree_on_cuda(name: str) -> None:
    """As tests/test_consistency.py requires on the CPU: the README probabilities within the
    original's tolerance; the features of both within fp16 tolerance of each other."""
    probs, features = {}, {}
    for jit in (True, False):
        model, preprocess = clip.load(str(archive(name)), device="cuda", jit=jit)
        with Image.open(CLIP_PNG) as image:
            probs[jit] = readme_label_probs(model, preprocess, image, device="cuda")
        features[jit] = _encode(model, name)
    np.testing.assert_allclose(probs[True], probs[False], atol=ORIGINAL_ATOL, rtol=ORIGINAL_RTOL)
    for tower in ("image", "text"):
        assert_features_close(features[False][tower], features[True][tower].float(), f"{name} {tower}")


# ---- how the device is named --------------------------------------------------------------------


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "python"])
@pytest.mark.parametrize("form", list(DEVICE_FORMS))
def test_explicit_cuda_device_forms(form: str, jit: bool) -> None:
    device = DEVICE_FORMS[form]
    model, _ = clip.load(str(archive("tiny-vit")), device=device, jit=jit)
    assert {tensor.device for tensor in _tensors(model)} == {torch.device("cuda", 0)}
    if jit:
        assert set(device_constants(model)) == {"cuda:0"}
    for tower, value in _encode(model, "tiny-vit", device=torch.device("cuda", 0)).items():
        assert value.device == torch.device("cuda", 0) and value.dtype == torch.float16, tower
        assert_features_close(value, cpu_features("tiny-vit")[tower], f"device={form!r} {tower}")


@pytest.mark.parametrize("name", list(TINY))
def test_jit_on_the_cpu_with_a_gpu_present_takes_the_half_to_float_path(name: str) -> None:
    """The original's CPU path (Half constants patched to Float, then .float()) on a GPU machine:
    the storages recorded on cuda:0 are read onto the CPU, nothing lands on the GPU."""
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    model, _ = clip.load(str(archive(name)), device="cpu", jit=True)
    assert torch.cuda.memory_allocated() == allocated
    assert {(tensor.device.type, tensor.dtype) for tensor in model.parameters()} == {("cpu", torch.float32)}
    assert not [value for value in device_constants(model) if torch.device(value).type == "cuda"]
    assert HALF not in to_dtype_constants(model) and FLOAT in to_dtype_constants(model)
    for tower, value in _encode(model, name, device="cpu").items():
        assert value.dtype == torch.float32 and value.device.type == "cpu", tower
        torch.testing.assert_close(value, cpu_features(name)[tower], atol=JIT_CPU_ATOL, rtol=0, msg=tower)


# ---- no waiting for the GPU; fused attention ----------------------------------------------------


def test_sync_debug_mode_catches_a_host_read() -> None:
    """Control for the next test: in "error" mode a value read back to the host raises."""
    values = torch.arange(4, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            int(values.sum())
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("tower", ["image", "text"])
@pytest.mark.parametrize("name", ARCHIVES)
def test_encoders_do_not_wait_for_the_gpu(name: str, tower: str) -> None:
    model, _ = clip.load(str(archive(name)), device="cuda")
    images, tokens = inputs(name)
    batch = (images if tower == "image" else tokens).cuda()
    encode = model.encode_image if tower == "image" else model.encode_text
    with torch.no_grad():
        encode(batch)  # warm-up: lazy initialisation (cuBLAS handles, workspaces) may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            encode(batch)
        except RuntimeError as exc:
            torch.cuda.set_sync_debug_mode("default")
            reads = host_reads(lambda: encode(batch))
            pytest.fail(f"encode_{tower} synchronised with the GPU ({exc}); host reads: {reads}")
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ARCHIVES)
def test_attention_takes_fused_kernels_in_fp16(name: str) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, _ = clip.load(str(archive(name)), device="cuda")
    taken = sdpa_ops(lambda: _encode(model, name))
    assert taken and taken <= FUSED_SDPA_OPS, f"attention ran {sorted(taken)}, not only fused kernels"
    default = _encode(model, name)
    # where no flash or memory-efficient kernel fits the inputs, this raises instead of falling back
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        fused = _encode(model, name)
    for tower in default:
        assert_features_close(fused[tower], default[tower].float(), f"{name} {tower} flash/efficient only")


# ---- preprocessing into pinned memory -----------------------------------------------------------


def test_preprocess_batch_into_pinned_memory_moves_without_waiting() -> None:
    items = [CLIP_PNG, str(CLIP_PNG)]
    pinned = clip.preprocess_batch(items, 224, pin_memory=True)
    pageable = clip.preprocess_batch(items, 224)
    assert pinned.is_pinned() and not pageable.is_pinned()
    assert torch.equal(pinned, pageable)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu = pinned.to("cuda", non_blocking=True)  # an asynchronous copy: no wait
        with pytest.raises(RuntimeError):
            pageable.to("cuda")  # control: a blocking copy waits, and the mode catches it
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.cpu(), pageable)
