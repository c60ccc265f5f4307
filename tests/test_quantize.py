"""int8 inference (clip/_quantize.py): what is quantised, how close it stays to fp32, errors.

References are independent: the same tiny models run in fp32 (`build_model(...).float()`).
"""

from pathlib import Path
from typing import Any, Dict, Tuple

import _checkpoints
import _model_factory as factory
import pytest
import torch
import torch.nn.functional as F

import clip
from clip import _bf16, _quantize
from clip._quantize import Int8Linear, Int8SelfAttention
from clip.model import CLIP, build_model

# int8 weights (per output channel) and 8-bit dynamic activations through every block of both towers:
# the bar for every item. Measured on these models: >= 0.998 (images), >= 0.998 (texts).
MIN_COSINE_TO_FP32 = 0.995
MIN_ZERO_SHOT_AGREEMENT = 0.99  # the bar: int8 top-1 == fp32 top-1 on >= 99% of the items
CLASSES = 10
ITEMS_PER_CLASS = 20
PROTOTYPE_SHARE = 0.7  # each item: 70% its class's prototype image, 30% another seeded image


@pytest.fixture(scope="module")
def models() -> Dict[str, Tuple[CLIP, CLIP]]:
    out = {}
    for config in ("tiny-vit", "tiny-rn"):
        fp32 = build_model(factory.make_state_dict(config, 0)).float().eval()
        out[config] = (fp32, clip.quantize(fp32))
    return out


def _texts(model: CLIP, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(1, model.vocab_size - 1, (count, model.context_length), generator=generator)
    ends = torch.randint(2, model.context_length, (count,), generator=generator)
    text[:, 0] = 0
    text[torch.arange(count), ends] = model.vocab_size - 1  # end-of-text at varied positions
    return text


def test_every_linear_product_is_int8_and_the_original_is_unchanged(
    models: Dict[str, Tuple[CLIP, CLIP]],
) -> None:
    for fp32, int8 in models.values():
        attention_type = type(fp32.transformer.resblocks[0].attn)  # whatever class the blocks use
        linears = [m for m in fp32.modules() if isinstance(m, torch.nn.Linear)]
        attentions = [m for m in fp32.modules() if isinstance(m, attention_type)]
        assert attentions and linears
        assert not any(isinstance(m, (torch.nn.Linear, attention_type)) for m in int8.modules())
        int8_attentions = [m for m in int8.modules() if isinstance(m, Int8SelfAttention)]
        int8_linears = [m for m in int8.modules() if isinstance(m, Int8Linear)]
        assert len(int8_attentions) == len(attentions)
        # each attention's out_proj is an nn.Linear; its in_proj (a raw parameter) adds one more
        assert len(int8_linears) == len(linears) + len(attentions)
        assert int8.dtype == fp32.dtype == torch.float32  # convolutions and norms stay fp32
        assert not int8.training


@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("tower", ["image", "text"])
def test_features_stay_close_to_fp32_for_every_item(
    config: str, tower: str, models: Dict[str, Tuple[CLIP, CLIP]]
) -> None:
    fp32, int8 = models[config]
    if tower == "image":
        x = factory.make_images(fp32.visual.input_resolution, seed=3, batch=32)
        encode = "encode_image"
    else:
        x = _texts(fp32, 32, seed=4)
        encode = "encode_text"
    with torch.no_grad():
        ours, reference = getattr(int8, encode)(x), getattr(fp32, encode)(x)
    assert ours.dtype == reference.dtype and ours.shape == reference.shape
    assert F.cosine_similarity(ours, reference, dim=-1).min().item() >= MIN_COSINE_TO_FP32


def test_zero_shot_top1_agrees_with_fp32(models: Dict[str, Tuple[CLIP, CLIP]]) -> None:
    """A labelled set of CLASSES x ITEMS_PER_CLASS images, classified against CLASSES embeddings.

    A random tiny model has no image-text alignment, so text prompts would give arbitrary, near-tied
    predictions. Each class is a seeded prototype image instead, its class embedding the model's
    features of that prototype (computed by each model itself, as zero-shot computes its prompts);
    an item blends its class's prototype with another image, and is labelled with that class.

    ViT only: the random tiny ResNet's features are nearly collinear (median top-2 margin 0.003 in
    cosine, below int8's noise), so agreement there would count ties, not quantisation errors; its
    features are checked item by item above.
    """
    fp32, int8 = models["tiny-vit"]
    res = fp32.visual.input_resolution
    prototypes = factory.make_images(res, seed=5, batch=CLASSES)
    others = factory.make_images(res, seed=6, batch=CLASSES * ITEMS_PER_CLASS)
    labels = torch.arange(CLASSES).repeat_interleave(ITEMS_PER_CLASS)
    items = PROTOTYPE_SHARE * prototypes[labels] + (1 - PROTOTYPE_SHARE) * others

    def predict(model: CLIP) -> torch.Tensor:
        with torch.no_grad():
            classes = F.normalize(model.encode_image(prototypes), dim=-1)
            return (F.normalize(model.encode_image(items), dim=-1) @ classes.T).argmax(dim=-1)

    reference, ours = predict(fp32), predict(int8)
    assert (reference == labels).float().mean() > 0.5  # the set is learnable, not all ties
    assert (ours == reference).float().mean().item() >= MIN_ZERO_SHOT_AGREEMENT


def test_attention_weights_path_matches_fp32(models: Dict[str, Tuple[CLIP, CLIP]]) -> None:
    fp32, int8 = models["tiny-vit"]
    attention, twin = fp32.transformer.resblocks[0].attn, int8.transformer.resblocks[0].attn
    x = torch.randint(-64, 64, (7, 3, attention.embed_dim)).float() / 64  # (L, N, D)
    mask = fp32.build_attention_mask()[:7, :7]  # the causal mask for these 7 positions, as the blocks pass it
    with torch.no_grad():
        out, weights = twin(x, x, x, need_weights=True, attn_mask=mask)
        fast, no_weights = twin(x, x, x, need_weights=False, attn_mask=mask)
        ref_out, ref_weights = attention(x, x, x, need_weights=True, attn_mask=mask)
    assert no_weights is None and weights.shape == ref_weights.shape == (3, 7, 7)
    torch.testing.assert_close(fast, out, rtol=1e-4, atol=1e-5)  # one product, two fp32 attention paths
    flat = (out.flatten(), ref_out.flatten())
    assert F.cosine_similarity(*flat, dim=0) >= MIN_COSINE_TO_FP32
    with pytest.raises(ValueError, match="self-attention"):
        twin(x, x.clone(), x)
    with pytest.raises(ValueError, match="key_padding_mask"):
        twin(x, x, x, key_padding_mask=torch.zeros(3, 7, dtype=torch.bool))


def test_load_quantizes_on_request(tmp_path: Path) -> None:
    path = _checkpoints.save_state_dict(tmp_path / "tiny.pt", "vit")
    plain, _ = clip.load(str(path), device="cpu")
    int8, _ = clip.load(str(path), device="cpu", quantize="int8")
    assert any(isinstance(m, Int8SelfAttention) for m in int8.modules())
    assert not any(isinstance(m, Int8Linear) for m in plain.modules())
    images = factory.make_images(plain.visual.input_resolution, seed=7, batch=4)
    with torch.no_grad():
        cosine = F.cosine_similarity(int8.encode_image(images), plain.encode_image(images), dim=-1)
    assert cosine.min().item() >= MIN_COSINE_TO_FP32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantize": "int4"}, "quantize must be None or one of"),
        ({"quantize": True}, "quantize must be None or one of"),
        ({"quantize": "INT8 "}, "quantize must be None or one of"),
        ({"quantize": "int8", "jit": True}, "jit=False"),
        ({"quantize": "int8", "dtype": torch.bfloat16}, "dtype"),
    ],
)
def test_load_rejects_bad_requests_before_reading(kwargs: Dict, match: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "never-read.pt")  # checks come first: the file is never looked at
    with pytest.raises(ValueError, match=match):
        clip.load(missing, device="cpu", **kwargs)


def test_quantize_rejects_bad_arguments(models: Dict[str, Tuple[CLIP, CLIP]]) -> None:
    fp32, _ = models["tiny-vit"]
    with pytest.raises(ValueError, match="quantize must be None or one of"):
        clip.quantize(fp32, "fp8")
    with pytest.raises(TypeError, match="CLIP model"):
        clip.quantize("ViT-B/32")
    with pytest.raises(ValueError, match="on the CPU"):
        clip.quantize(build_model(factory.make_state_dict("tiny-vit", 0)).to("meta"))


@pytest.mark.parametrize("engine", [e for e in ("x86", "fbgemm", "onednn") if e in _quantize._engines()])
def test_each_x86_engine_packs_every_layer_and_stays_close_to_fp32(
    engine: str, models: Dict[str, Tuple[CLIP, CLIP]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = models["tiny-vit"][0]
    before = torch.backends.quantized.engine
    monkeypatch.setenv(_quantize.ENGINE_ENV_VAR, engine)
    int8 = clip.quantize(fp32)
    assert torch.backends.quantized.engine == before  # torch's own setting is restored
    images = factory.make_images(fp32.visual.input_resolution, seed=3, batch=8)
    texts = _texts(fp32, 8, seed=4)
    with torch.no_grad():
        for encode, x in (("encode_image", images), ("encode_text", texts)):
            ours, reference = getattr(int8, encode)(x), getattr(fp32, encode)(x)
            assert F.cosine_similarity(ours, reference, dim=-1).min().item() >= MIN_COSINE_TO_FP32


def test_the_engine_is_the_measured_fastest_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    engines = _quantize._engines()
    if len(engines) < 2:
        pytest.skip("this torch offers one int8 engine: nothing to choose")
    calls = []

    def measure(runs: Dict[str, Any]) -> Dict[str, float]:
        calls.append(sorted(runs))
        return {engine: 1.0 if engine == engines[-1] else 2.0 for engine in runs}

    monkeypatch.delenv(_quantize.ENGINE_ENV_VAR, raising=False)
    monkeypatch.setattr(_quantize, "_chosen_engine", None)
    monkeypatch.setattr(_bf16, "_measure", measure)
    assert _quantize._fastest_engine() == engines[-1]
    assert _quantize._fastest_engine() == engines[-1]
    assert len(calls) == 1 and set(calls[0]) <= set(engines) and len(calls[0]) >= 2


def test_a_forced_unknown_engine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_quantize.ENGINE_ENV_VAR, "vnni-please")
    with pytest.raises(ValueError, match="CLIP_INT8_ENGINE='vnni-please' is not an int8 engine"):
        _quantize._fastest_engine()
