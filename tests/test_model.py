"""Tests of `clip.model`: layout of the nine released architectures, `build_model`'s contract,
numerical parity with the original implementation, low precision on CPU and input checks.

Self-contained (no conftest fixtures). State dicts come from tests/support/_model_factory.py (seeded,
reproducible, release layout); golden outputs of the original (clip-anytorch 2.6.0) come from
tests/data/make_model_golden.py. Measured parity diffs are printed (`pytest -s`) and recorded as
test properties.
"""

import copy
import hashlib
import importlib.util
import json
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clip.model import (
    CLIP,
    CLIPDimensions,
    LayerNorm,
    MultiheadAttention,
    QuickGELU,
    build_model,
    convert_weights,
)

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def _load_factory() -> Any:
    # loaded by path, as the golden script loads it, so no package or conftest is involved
    spec = importlib.util.spec_from_file_location(
        "_clip_test_model_factory", HERE / "support" / "_model_factory.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


factory = _load_factory()

RELEASED = list(factory.RELEASED)
TINY = list(factory.TINY)
SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")

# FACTS.md, "Architectures": parameter count and state-dict key count (without the 3 scalars).
RELEASED_COUNTS = {
    "RN50": (102_007_137, 489),
    "RN101": (119_688_033, 795),
    "RN50x4": (178_300_601, 669),
    "RN50x16": (290_979_217, 921),
    "RN50x64": (623_258_305, 1353),
    "ViT-B/32": (151_277_313, 302),
    "ViT-B/16": (149_620_737, 302),
    "ViT-L/14": (427_616_513, 446),
    "ViT-L/14@336px": (427_944_193, 446),
}

# Parity with the original in fp32: same weights, same inputs, golden made on another CPU. Same
# arithmetic, but the order of float additions inside matrix products, softmax and LayerNorm
# reductions depends on the kernels (AVX2 / AVX-512 / ARM, BLAS blocking): fp32 rounds at ~6e-8
# relative per operation, and through 12 residual blocks of width 768 the outputs move by up to
# ~1e-6 relative. Measured with baseline kernels (ATEN_CPU_CAPABILITY=default, oneDNN and MKL at
# SSE4) against a golden made with AVX2 kernels: 7.6e-7 relative on the largest value (RN50 image
# features, |max| 13.9), 1.1e-5 absolute on logits (scale 100). Hence 1e-5 relative plus 1e-5
# absolute for values near zero: 10x above that drift, 100x below a wrong weight or a changed op.
PARITY_RTOL = 1e-5
PARITY_ATOL = 1e-5
# Low precision vs the original's fp32 outputs, whole model cast with `model.to(dtype)`. Measured
# (torch 2.14.1 CPU; tiny-vit, tiny-rn, ViT-B/32, RN50): feature cosine bf16 >= 0.99991, fp16 >=
# 0.999998; logits max abs diff bf16 <= 0.35, fp16 <= 0.028. The bounds below keep a margin of about
# 10x in (1 - cosine) and 3x in logits; bf16 cosine >= 0.999 is the bar of issue 6.
LOW_PRECISION_BOUNDS = {  # dtype: (min feature cosine, max logits abs diff)
    torch.bfloat16: (0.999, 1.0),
    torch.float16: (0.9999, 0.1),
}
SHORT_TEXT_ATOL = 1e-5


def golden_path(config: str) -> Path:
    return DATA / f"model_golden_{config.replace('/', '-').replace('@', '-')}.pt"


def load_golden(config: str) -> Dict[str, Any]:
    return torch.load(golden_path(config), weights_only=True)


def layout_of(state_dict: Dict[str, torch.Tensor]) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
    return [(key, tuple(value.shape), value.dtype) for key, value in state_dict.items()]


def layout_digest(entries: List[Tuple[str, Tuple[int, ...], torch.dtype]]) -> str:
    # the same text and hash as tests/data/make_model_golden.py
    text = "".join(f"{key}|{tuple(shape)}|{dtype}\n" for key, shape, dtype in entries)
    return hashlib.sha256(text.encode()).hexdigest()


def weights_only(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if k not in SCALAR_KEYS}


def text_length(tokens: torch.Tensor) -> int:
    """Shortest context holding every caption: up to and including its end-of-text token."""
    return int(tokens.argmax(dim=-1).max()) + 1


@pytest.fixture(scope="module")
def tiny_state_dicts() -> Dict[str, Dict[str, torch.Tensor]]:
    return {name: factory.make_state_dict(name, load_golden(name)["seed"]) for name in TINY}


@pytest.fixture(scope="module")
def tiny_vit(tiny_state_dicts: Dict[str, Dict[str, torch.Tensor]]) -> CLIP:
    return build_model(tiny_state_dicts["tiny-vit"]).float()


@pytest.fixture(scope="module")
def vit_b32_state_dict() -> Iterator[Dict[str, torch.Tensor]]:
    state_dict = factory.make_state_dict("ViT-B/32", load_golden("ViT-B/32")["seed"])
    yield state_dict
    state_dict.clear()


# ------------------------------------------------------------------------------------------------
# import


def test_import_clip_model_builds_nothing() -> None:
    """`import clip.model` constructs no module and reads no vocabulary (fresh interpreter)."""
    script = textwrap.dedent(
        """
        import builtins, gzip, json, time
        import torch
        from torch import nn

        built, opened = [], []
        module_init, gzip_open, builtin_open = nn.Module.__init__, gzip.open, builtins.open

        def counting_init(self, *args, **kwargs):
            built.append(type(self).__name__)
            module_init(self, *args, **kwargs)

        def recording_gzip_open(filename, *args, **kwargs):
            opened.append(str(filename))
            return gzip_open(filename, *args, **kwargs)

        def recording_open(file, *args, **kwargs):
            if "bpe_simple_vocab" in str(file):
                opened.append(str(file))
            return builtin_open(file, *args, **kwargs)

        nn.Module.__init__, gzip.open, builtins.open = counting_init, recording_gzip_open, recording_open
        start = time.perf_counter()
        import clip.model
        seconds = time.perf_counter() - start
        assert hasattr(clip.model, "build_model")
        print(json.dumps({"built": built, "opened": opened, "seconds": seconds}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=HERE.parent, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["built"] == [], f"modules built at import time: {report['built']}"
    assert report["opened"] == [], f"vocabulary read at import time: {report['opened']}"
    assert report["seconds"] < 10, f"importing clip.model (torch already imported) took {report['seconds']}s"


# ------------------------------------------------------------------------------------------------
# layout of the released architectures (meta device: no memory, no random numbers)


@pytest.fixture(scope="module")
def golden_layouts() -> Dict[str, Dict[str, Any]]:
    return torch.load(DATA / "model_golden_layout.pt", weights_only=True)["layouts"]


@pytest.mark.golden
@pytest.mark.parametrize("name", RELEASED)
def test_release_layout_keys_shapes_dtypes_and_counts(name: str, golden_layouts: Dict[str, Any]) -> None:
    with torch.device("meta"):
        model = CLIP(**factory.dims_of(name))
        convert_weights(model)
    entries = layout_of(model.state_dict())
    expected = factory.layout(name)  # checked against the original by make_model_golden.py
    assert [e[0] for e in entries] == [e[0] for e in expected], "key set or key order differs"
    assert entries == expected, [(a, b) for a, b in zip(entries, expected) if a != b][:5]
    params, keys = RELEASED_COUNTS[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(entries) == keys
    assert golden_layouts[name] == {"keys": keys, "params": params, "sha256": layout_digest(entries)}


@pytest.mark.parametrize("name", RELEASED)
def test_build_model_on_meta_state_dict(name: str) -> None:
    state_dict = factory.make_meta_state_dict(name, scalars=True)
    model = build_model(state_dict)
    assert layout_of(model.state_dict()) == factory.layout(name)
    assert all(t.is_meta for t in model.state_dict().values())
    assert sum(p.numel() for p in model.parameters()) == RELEASED_COUNTS[name][0]
    assert not model.training


@pytest.mark.parametrize("name", RELEASED + TINY)
def test_dimensions_from_state_dict(name: str) -> None:
    expected = CLIPDimensions(**factory.dims_of(name))
    assert CLIPDimensions.from_state_dict(factory.make_meta_state_dict(name)) == expected
    assert CLIPDimensions.from_state_dict(factory.make_meta_state_dict(name, scalars=True)) == expected


# ------------------------------------------------------------------------------------------------
# build_model's contract, on tiny models


def _release_fp16_keys(model: nn.Module) -> set:
    """Keys the original's convert_weights casts, found from the module types alone."""
    keys = set()
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            keys.add(f"{dot}weight")
            if module.bias is not None:
                keys.add(f"{dot}bias")
        if isinstance(module, nn.MultiheadAttention):
            keys.update({f"{dot}in_proj_weight", f"{dot}in_proj_bias"})
        for name in ("text_projection", "proj"):
            if isinstance(getattr(module, name, None), nn.Parameter):
                keys.add(f"{dot}{name}")
    return keys


@pytest.mark.parametrize("name", TINY)
def test_round_trip_and_release_dtypes(name: str, tiny_state_dicts: Dict[str, Any]) -> None:
    given = tiny_state_dicts[name]
    model = build_model(given)
    assert not any(m.training for m in model.modules())
    out = model.state_dict()
    weights = weights_only(given)
    assert list(out) == list(weights)
    for key, value in weights.items():
        assert out[key].dtype == value.dtype, key
        assert torch.equal(out[key], value), key

    fp16 = _release_fp16_keys(model)
    assert "text_projection" in fp16 and "visual.conv1.weight" in fp16
    for key, value in out.items():
        if key in fp16:
            assert value.dtype == torch.float16, key
        elif key.endswith("num_batches_tracked"):
            assert value.dtype == torch.int64, key
        else:
            assert value.dtype == torch.float32, key
    assert model.dtype == torch.float16
    assert model.logit_scale.item() == pytest.approx(math.log(100))


def test_fp32_state_dict_is_converted_like_the_release(tiny_state_dicts: Dict[str, Any]) -> None:
    given = tiny_state_dicts["tiny-vit"]
    as_fp32 = {k: v.float() if v.is_floating_point() else v for k, v in given.items()}
    out = build_model(as_fp32).state_dict()
    for key, value in weights_only(given).items():
        assert out[key].dtype == value.dtype, key
        assert torch.equal(out[key], value), key


@pytest.mark.parametrize("name", TINY)
def test_build_model_does_not_mutate_or_alias(name: str, tiny_state_dicts: Dict[str, Any]) -> None:
    given = dict(tiny_state_dicts[name])
    before = list(given.items())
    copies = {k: v.clone() for k, v in given.items()}
    model = build_model(given)
    assert list(given.items()) == before  # same keys, same order, the very same tensor objects
    for key, value in given.items():
        assert value.dtype == copies[key].dtype and torch.equal(value, copies[key]), key

    caller_storage = {v.untyped_storage().data_ptr() for v in given.values()}
    model_storage = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    assert not caller_storage & model_storage
    with torch.no_grad():
        model.ln_final.weight.add_(1.0)
        model.text_projection.mul_(2.0)
    assert torch.equal(given["ln_final.weight"], copies["ln_final.weight"])
    assert torch.equal(given["text_projection"], copies["text_projection"])


def test_share_memory_keeps_tensors_whose_dtype_fits(tiny_state_dicts: Dict[str, Any]) -> None:
    given = tiny_state_dicts["tiny-rn"]
    model = build_model(given, share_memory=True)
    out = model.state_dict()
    for key, value in weights_only(given).items():
        assert out[key].data_ptr() == value.data_ptr(), key
    # a tensor that needs a cast is copied, never shared
    as_fp32 = {k: v.float() if v.is_floating_point() else v for k, v in given.items()}
    out = build_model(as_fp32, share_memory=True).state_dict()
    assert out["text_projection"].data_ptr() != as_fp32["text_projection"].data_ptr()
    assert out["ln_final.weight"].data_ptr() == as_fp32["ln_final.weight"].data_ptr()


@pytest.mark.parametrize("scalars", ["tensors", "ints", "absent"])
def test_scalar_entries_are_ignored(scalars: str, tiny_state_dicts: Dict[str, Any]) -> None:
    given = weights_only(tiny_state_dicts["tiny-vit"])
    entries = factory.scalar_entries("tiny-vit")
    if scalars == "tensors":
        given.update(entries)
    elif scalars == "ints":
        given.update({k: int(v) for k, v in entries.items()})
    out = build_model(given).state_dict()
    assert not set(SCALAR_KEYS) & set(out)
    reference = weights_only(tiny_state_dicts["tiny-vit"])
    assert list(out) == list(reference)
    assert all(torch.equal(out[k], reference[k]) for k in reference)


def test_build_model_does_no_random_initialisation(
    tiny_state_dicts: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    touched: List[str] = []

    def recording(init):
        def wrapper(tensor, *args, **kwargs):
            if not tensor.is_meta:
                touched.append(f"{init.__name__}{tuple(tensor.shape)}")
            return init(tensor, *args, **kwargs)

        return wrapper

    for name in ("normal_", "uniform_", "xavier_uniform_", "trunc_normal_", "kaiming_uniform_"):
        monkeypatch.setattr(nn.init, name, recording(getattr(nn.init, name)))
    rng_before = torch.get_rng_state()
    build_model(tiny_state_dicts["tiny-rn"])
    build_model(tiny_state_dicts["tiny-vit"])
    assert touched == []
    assert torch.equal(torch.get_rng_state(), rng_before), "build_model drew random numbers"


def test_causal_mask_is_a_non_persistent_buffer(tiny_vit: CLIP) -> None:
    context = tiny_vit.context_length
    expected = torch.full((context, context), float("-inf")).triu(1)
    assert not any("attn_mask" in key for key in tiny_vit.state_dict())
    for block in tiny_vit.transformer.resblocks:
        assert "attn_mask" in dict(block.named_buffers())
        assert torch.equal(block.attn_mask, expected)
    for block in tiny_vit.visual.transformer.resblocks:
        assert block.attn_mask is None  # the image tower attends both ways

    on_meta = build_model(factory.make_meta_state_dict("tiny-vit"))
    assert on_meta.transformer.resblocks[0].attn_mask.is_meta
    moved = build_model(factory.make_state_dict("tiny-vit", 0)).to("meta")
    assert all(block.attn_mask.is_meta for block in moved.transformer.resblocks)
    halved = build_model(factory.make_state_dict("tiny-vit", 0)).to(torch.bfloat16)
    assert halved.transformer.resblocks[0].attn_mask.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# bad state dicts


def _tiny_vit_weights(tiny_state_dicts: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    return dict(tiny_state_dicts["tiny-vit"])


def test_missing_key_is_named(tiny_state_dicts: Dict[str, Any]) -> None:
    given = _tiny_vit_weights(tiny_state_dicts)
    del given["transformer.resblocks.1.ln_2.bias"]
    with pytest.raises(ValueError, match=r"missing keys.*transformer\.resblocks\.1\.ln_2\.bias"):
        build_model(given)


def test_unexpected_key_is_named(tiny_state_dicts: Dict[str, Any]) -> None:
    given = _tiny_vit_weights(tiny_state_dicts)
    given["visual.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected keys.*visual\.extra_head\.weight"):
        build_model(given)


@pytest.mark.parametrize(
    "key, shape",
    [
        ("transformer.resblocks.0.mlp.c_fc.weight", (512, 100)),
        ("visual.positional_embedding", (18, 128)),  # not a square grid + 1
        ("visual.attnpool.c_proj.bias", (65,)),
    ],
)
def test_wrong_shape_is_named(key: str, shape: Tuple[int, ...], tiny_state_dicts: Dict[str, Any]) -> None:
    name = "tiny-rn" if key.startswith("visual.attnpool") else "tiny-vit"
    given = dict(tiny_state_dicts[name])
    given[key] = torch.zeros(shape, dtype=given[key].dtype)
    with pytest.raises(ValueError, match=r"wrong shapes.*" + key.replace(".", r"\.")):
        build_model(given)


def test_not_a_clip_state_dict() -> None:
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        resnet = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match="not a CLIP state dict"):
        build_model(resnet.state_dict())
    with pytest.raises(ValueError, match="not a CLIP state dict"):
        build_model({})


def test_non_tensor_entry_with_shape_is_named(tiny_state_dicts: Dict[str, Any]) -> None:
    numpy = pytest.importorskip("numpy")
    given = _tiny_vit_weights(tiny_state_dicts)
    given["transformer.resblocks.0.ln_1.bias"] = numpy.zeros(128, dtype=numpy.float32)
    with pytest.raises(ValueError, match=r"transformer\.resblocks\.0\.ln_1\.bias"):
        build_model(given)


def test_non_tensor_entry_is_a_value_error(tiny_state_dicts: Dict[str, Any]) -> None:
    given = _tiny_vit_weights(tiny_state_dicts)
    given["transformer.resblocks.0.ln_1.bias"] = [0.0] * 128
    with pytest.raises(ValueError, match=r"transformer\.resblocks\.0\.ln_1\.bias"):
        build_model(given)


# ------------------------------------------------------------------------------------------------
# numerical parity with the original (golden outputs of clip-anytorch 2.6.0, fp32)


@pytest.mark.golden
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn", "ViT-B/32", "RN50"])
def test_parity_with_original(name: str, record_property: Any, request: pytest.FixtureRequest) -> None:
    golden = load_golden(name)
    if name == "ViT-B/32":
        state_dict = request.getfixturevalue("vit_b32_state_dict")
    else:
        state_dict = factory.make_state_dict(name, golden["seed"])
    model = build_model(state_dict).float()
    del state_dict
    resolution = factory.dims_of(name)["image_resolution"]
    images = factory.make_images(resolution, golden["image_seed"], golden["image_batch"])
    tokens = golden["tokens"]
    with torch.no_grad():
        image_features = model.encode_image(images)
        text_features = model.encode_text(tokens)
        logits_per_image, logits_per_text = model(images, tokens)
    got = {"image_features": image_features, "text_features": text_features}
    got["logits_per_image"] = logits_per_image
    diffs = {key: (value - golden[key]).abs().max().item() for key, value in got.items()}
    record_property("max_abs_diff", diffs)
    print(f"\nparity {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    assert torch.equal(logits_per_text, logits_per_image.t())
    for key, value in got.items():
        torch.testing.assert_close(value, golden[key], rtol=PARITY_RTOL, atol=PARITY_ATOL, msg=key)


@pytest.mark.golden
def test_parity_check_can_fail(tiny_state_dicts: Dict[str, Any]) -> None:
    """Another seed gives clearly different outputs: the golden comparison is not vacuous."""
    golden = load_golden("tiny-vit")
    model = build_model(factory.make_state_dict("tiny-vit", golden["seed"] + 1)).float()
    with torch.no_grad():
        text_features = model.encode_text(golden["tokens"])
    assert (text_features - golden["text_features"]).abs().max() > 100 * PARITY_ATOL


# ------------------------------------------------------------------------------------------------
# bf16 and fp16 on CPU (the original fails on both)


def _low_precision_check(model: CLIP, golden: Dict[str, Any], images: torch.Tensor, dtype: torch.dtype):
    tokens = golden["tokens"][:, : text_length(golden["tokens"])]  # same result as 77, less work
    with torch.no_grad():
        image_features = model.encode_image(images.to(dtype))
        text_features = model.encode_text(tokens)
        logits_per_image, _ = model(images.to(dtype), tokens)
    assert image_features.dtype == text_features.dtype == logits_per_image.dtype == dtype
    min_cosine, max_logit_diff = LOW_PRECISION_BOUNDS[dtype]
    image_cos = F.cosine_similarity(image_features.float(), golden["image_features"], dim=-1).min().item()
    text_cos = F.cosine_similarity(text_features.float(), golden["text_features"], dim=-1).min().item()
    logit_diff = (logits_per_image.float() - golden["logits_per_image"]).abs().max().item()
    print(f"\n{dtype}: image cos {image_cos:.7f}, text cos {text_cos:.7f}, logits diff {logit_diff:.3g}")
    assert image_cos >= min_cosine and text_cos >= min_cosine
    assert logit_diff <= max_logit_diff


@pytest.mark.golden
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", TINY)
def test_low_precision_on_cpu_tiny(name: str, dtype: torch.dtype, tiny_state_dicts: Dict[str, Any]) -> None:
    golden = load_golden(name)
    model = build_model(tiny_state_dicts[name]).to(dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    resolution = factory.dims_of(name)["image_resolution"]
    images = factory.make_images(resolution, golden["image_seed"], golden["image_batch"])
    _low_precision_check(model, golden, images, dtype)


@pytest.mark.golden
def test_bf16_on_cpu_vit_b32(vit_b32_state_dict: Dict[str, torch.Tensor]) -> None:
    """Issue 6: the full-size ViT-B/32 in bf16 on CPU, feature cosine >= 0.999 to fp32."""
    golden = load_golden("ViT-B/32")
    model = build_model(vit_b32_state_dict).to(torch.bfloat16)
    images = factory.make_images(224, golden["image_seed"], golden["image_batch"])
    _low_precision_check(model, golden, images, torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# input checks of encode_text / encode_image


def test_short_text_matches_padded(tiny_vit: CLIP) -> None:
    tokens = load_golden("tiny-vit")["tokens"]
    with torch.no_grad():
        padded = tiny_vit.encode_text(tokens)
        for length in (text_length(tokens), 20, 76):
            short = tiny_vit.encode_text(tokens[:, :length])
            assert (short - padded).abs().max() <= SHORT_TEXT_ATOL, length
        as_int32 = tiny_vit.encode_text(tokens.to(torch.int32))  # the original tokenize's dtype
    assert torch.equal(as_int32, padded)


def test_bad_text_raises(tiny_vit: CLIP) -> None:
    tokens = load_golden("tiny-vit")["tokens"]
    too_long = torch.cat([tokens, torch.zeros(tokens.shape[0], 1, dtype=tokens.dtype)], dim=1)
    with pytest.raises(ValueError, match="L <= 77"):
        tiny_vit.encode_text(too_long)
    with pytest.raises(ValueError, match="integer token ids"):
        tiny_vit.encode_text(tokens.float())
    with pytest.raises(ValueError, match="shape"):
        tiny_vit.encode_text(tokens[0])
    out_of_vocab = tokens.clone()
    out_of_vocab[0, 1] = 49408
    with pytest.raises(ValueError, match=r"\[0, 49408\)"):
        tiny_vit.encode_text(out_of_vocab)
    negative = tokens.clone()
    negative[1, 1] = -1
    with pytest.raises(ValueError, match=r"\[0, 49408\)"):
        tiny_vit.encode_text(negative)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 64, 64), (2, 3, 32, 31), (3, 32, 32)])
def test_bad_image_shape_names_expected_shape(shape: Tuple[int, ...], tiny_vit: CLIP) -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        tiny_vit.encode_image(torch.zeros(shape))


def test_uint8_image_warns(tiny_vit: CLIP) -> None:
    image = torch.zeros((1, 3, 32, 32), dtype=torch.uint8)
    with pytest.warns(UserWarning, match="preprocess"):
        features = tiny_vit.encode_image(image)
    assert features.shape == (1, 64)


# ------------------------------------------------------------------------------------------------
# building blocks


def _attention_pair(width: int, heads: int, seed: int, **kwargs: Any) -> Tuple[nn.Module, nn.Module]:
    """Ours and torch's nn.MultiheadAttention with the same (integer-drawn) weights."""
    gen = torch.Generator().manual_seed(seed)
    ours = MultiheadAttention(width, heads, **kwargs)
    reference = nn.MultiheadAttention(width, heads, **kwargs)
    state = {
        k: torch.randint(-8, 9, v.shape, generator=gen).float() / 32 for k, v in ours.state_dict().items()
    }
    ours.load_state_dict(state)
    reference.load_state_dict(state)  # the same parameter names and shapes
    return ours, reference


def _grid_inputs(
    seq: int, src: int, batch: int, width: int, heads: int, gen: torch.Generator
) -> Dict[str, Any]:
    """Every mask form nn.MultiheadAttention accepts, for a query of `seq` and keys of `src`."""
    causal_bool = torch.ones(seq, src, dtype=torch.bool).triu(1)
    random_bool = torch.randint(0, 4, (batch * heads, seq, src), generator=gen) == 0  # True: masked
    random_bool[..., 0] = False  # every query may attend somewhere: no all -inf rows
    return {
        "none": None,
        "bool-2d": causal_bool,
        "float-2d": torch.zeros(seq, src).masked_fill(causal_bool, float("-inf")),
        "bool-3d": random_bool,
        "float-3d": torch.randint(-4, 5, (batch * heads, seq, src), generator=gen).float() / 4,
    }


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch's, for bool + float
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("padding", [None, "bool", "float"])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("average", [True, False])
def test_attention_matches_nn_multihead_attention(
    train: bool, cross: bool, padding: Any, need_weights: bool, average: bool
) -> None:
    """Our attention module gives torch's answer for every call form, fast path or not."""
    width, heads, seq, batch = 32, 4, 6, 3
    src = 5 if cross else seq
    ours, reference = _attention_pair(width, heads, seed=5)
    ours.train(train)
    reference.train(train)
    gen = torch.Generator().manual_seed(6)
    query = torch.randint(-16, 17, (seq, batch, width), generator=gen).float() / 16  # (L, N, D)
    key = torch.randint(-16, 17, (src, batch, width), generator=gen).float() / 16 if cross else query
    value = torch.randint(-16, 17, (src, batch, width), generator=gen).float() / 16 if cross else query
    key_padding_mask = None
    if padding is not None:
        pad = torch.zeros(batch, src, dtype=torch.bool)
        pad[0, -2:] = True
        key_padding_mask = (
            pad if padding == "bool" else torch.zeros(batch, src).masked_fill(pad, float("-inf"))
        )
    for mask_name, attn_mask in _grid_inputs(seq, src, batch, width, heads, gen).items():
        if padding == "float" and attn_mask is not None and attn_mask.dtype == torch.bool:
            continue  # torch refuses mixed mask types
        kwargs = dict(
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average,
        )
        got, got_weights = ours(query, key, value, **kwargs)
        expected, expected_weights = reference(query, key, value, **kwargs)
        # the fast path runs the kernels torch runs, in the same order: equal, not merely close
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=mask_name)
        if need_weights:
            assert got_weights.shape == expected_weights.shape
            torch.testing.assert_close(got_weights, expected_weights, rtol=0, atol=0, msg=mask_name)
        else:
            assert got_weights is None and expected_weights is None


def test_attention_is_causal_and_unbatched_match_torch() -> None:
    width, heads, seq = 32, 2, 7
    ours, reference = _attention_pair(width, heads, seed=7)
    x = torch.randint(-16, 17, (seq, 2, width), generator=torch.Generator().manual_seed(8)).float() / 16
    causal = nn.Transformer.generate_square_subsequent_mask(seq)
    for need_weights in (False, True):
        got = ours(x, x, x, need_weights=need_weights, attn_mask=causal, is_causal=True)
        expected = reference(x, x, x, need_weights=need_weights, attn_mask=causal, is_causal=True)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    unbatched = x[:, 0]  # (L, D)
    got, got_weights = ours(unbatched, unbatched, unbatched)
    expected, expected_weights = reference(unbatched, unbatched, unbatched)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got_weights, expected_weights, rtol=0, atol=0)


def test_attention_is_torch_multihead_attention() -> None:
    import inspect

    attn = MultiheadAttention(64, 2)
    assert isinstance(attn, nn.MultiheadAttention)
    ours, torchs = (
        inspect.signature(f).parameters for f in (type(attn).forward, nn.MultiheadAttention.forward)
    )
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in torchs.values()
    ]
    assert list(attn.state_dict()) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert attn.bias_k is None and attn.bias_v is None and not attn.batch_first and attn._qkv_same_embed_dim
    assert (attn.embed_dim, attn.num_heads, attn.head_dim, attn.dropout) == (64, 2, 32, 0.0)
    assert type(attn.out_proj) is type(nn.MultiheadAttention(64, 2).out_proj)


def test_block_mask_bool_follows_torch_convention(tiny_vit: CLIP) -> None:
    """A boolean attn_mask on a block means True = may not attend (torch's), not an additive 0/1."""
    block = copy.deepcopy(tiny_vit.transformer.resblocks[0])
    seq = 5
    x = torch.randint(-16, 17, (seq, 2, block.attn.embed_dim), generator=torch.Generator().manual_seed(3))
    x = x.float() / 16
    additive = block.attn_mask[:seq, :seq].clone()
    with torch.no_grad():
        expected = block(x)  # the float causal mask
        block.attn_mask = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-6)
        block.attn_mask = additive.isinf().float()  # an additive 0/1 mask means something else
        assert not torch.allclose(block(x), expected)


def test_quick_gelu_and_fp32_layer_norm() -> None:
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    norm = LayerNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(8.0))
        norm.bias.fill_(0.5)
    half = (torch.arange(16.0).reshape(2, 8) * 300).half()
    out = norm(half)
    assert out.dtype == torch.float16
    expected = F.layer_norm(half.float(), (8,), norm.weight, norm.bias, norm.eps).half()
    assert torch.equal(out, expected)
    norm_bf16 = LayerNorm(8).to(torch.bfloat16)  # bf16 weights and input: no mixed-dtype error
    assert norm_bf16(torch.ones(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


class _Tower(nn.Module):
    """encode_image or encode_text as a module's forward, for torch.export and torch.jit.trace."""

    def __init__(self, model: CLIP, tower: str) -> None:
        super().__init__()
        self.model, self.tower = model, tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x) if self.tower == "image" else self.model.encode_text(x)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_encoders_export_trace_and_compile(tower: str, tiny_vit: CLIP) -> None:
    """The input checks must not break tracing: torch.export fails on data-dependent checks.

    Captured graphs compute every text position, bit for bit the eager path with trimming off."""
    golden = load_golden("tiny-vit")
    images = factory.make_images(
        tiny_vit.visual.input_resolution, golden["image_seed"], golden["image_batch"]
    )
    x = images if tower == "image" else golden["tokens"]
    module = _Tower(tiny_vit, tower).eval()
    with torch.no_grad():
        tiny_vit.trim_text_padding = False  # the release's computation: all 77 positions
        try:
            eager = module(x)
        finally:
            del tiny_vit.trim_text_padding
        exported = torch.export.export(module, (x,)).module()
        torch.testing.assert_close(exported(x), eager, rtol=0, atol=0)
        compiled = torch.compile(module, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), eager, rtol=0, atol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", torch.jit.TracerWarning)  # no tensor-to-bool conversions
            warnings.filterwarnings("ignore", category=FutureWarning)  # trace itself is deprecated
            traced = torch.jit.trace(module, x)
        torch.testing.assert_close(traced(x), eager, rtol=0, atol=0)


def test_token_range_is_not_read_back_from_other_devices(tiny_vit: CLIP) -> None:
    """On the CPU the range check raises; elsewhere it must not copy ids to the host (meta: no data)."""
    with pytest.raises(ValueError, match=r"\[0, 49408\)"):
        tiny_vit.encode_text(torch.full((1, 77), 49408))
    on_meta = build_model(factory.make_meta_state_dict("tiny-vit"))
    features = on_meta.encode_text(torch.zeros((2, 77), dtype=torch.int64, device="meta"))
    assert features.is_meta and features.shape == (2, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_token_range_on_cuda_is_asserted_asynchronously(
    tiny_vit: CLIP, monkeypatch: pytest.MonkeyPatch
) -> None:
    asserted = []
    monkeypatch.setattr(torch, "_assert_async", lambda flag, msg: asserted.append((flag.device.type, msg)))
    model = copy.deepcopy(tiny_vit).cuda()
    model.encode_text(torch.zeros((1, 77), dtype=torch.int64, device="cuda"))
    assert asserted and asserted[0][0] == "cuda" and "49408" in asserted[0][1]
