"""encode_text computes only the positions up to the batch's last end-of-text token (issue 27, point 1).

Features are compared with the original's (tests/data/make_text_trim_golden.py: all 77 positions,
always) within 1e-5 of the largest value, and with our own full path. How many positions the tower
computed is read by wrapping `model.transformer.forward` (an instance attribute, not a hook: hooks
turn the trimming off).
"""

import contextlib
import importlib.util
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import torch
import torch.nn.functional as F

import clip
from clip.model import CLIP, build_model

HERE = Path(__file__).resolve().parent
GOLDEN = torch.load(HERE / "data" / "text_trim_golden.pt", weights_only=True)
CONFIGS = list(GOLDEN["seeds"])
BATCHES = list(GOLDEN["tokens"])
CONTEXT = 77
RELATIVE_TOLERANCE = 1e-5  # of the largest feature value: the bound
BF16_MIN_COSINE = 0.999  # bf16 against the original's fp32, as tests/test_model.py


def _load_factory() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_text_trim_factory", HERE / "support" / "_model_factory.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


factory = _load_factory()


@pytest.fixture(scope="module")
def models() -> Dict[str, CLIP]:
    return {
        config: build_model(factory.make_state_dict(config, seed)).float()
        for config, seed in GOLDEN["seeds"].items()
    }


@contextlib.contextmanager
def positions_seen(model: CLIP) -> Iterator[List[int]]:
    """The sequence lengths `model.transformer` is called with, inside the block."""
    seen: List[int] = []
    forward = model.transformer.forward

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return forward(x)

    model.transformer.forward = recording
    try:
        yield seen
    finally:
        del model.transformer.forward


def longest(tokens: torch.Tensor) -> int:
    return int(tokens.argmax(dim=-1).max()) + 1


def close_to(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference relative to the largest expected value."""
    return ((got.float() - expected).abs().max() / expected.abs().max()).item()


# the full-size tower on two batches (one trimmed, one at 77): its build dominates the time
CASES = [(c, b) for c in CONFIGS if c.startswith("tiny") for b in BATCHES] + [
    ("ViT-B/32", "mixed"),
    ("ViT-B/32", "mixed_full"),
]


@pytest.mark.golden
@pytest.mark.parametrize("config, batch", CASES)
def test_matches_original(config: str, batch: str, models: Dict[str, CLIP]) -> None:
    model, tokens = models[config], GOLDEN["tokens"][batch]
    with torch.no_grad(), positions_seen(model) as seen:
        features = model.encode_text(tokens)
    assert seen == [longest(tokens)]
    assert close_to(features, GOLDEN["features"][config][batch]) <= RELATIVE_TOLERANCE


@pytest.mark.golden
@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
def test_forward_matches_original(config: str, models: Dict[str, CLIP]) -> None:
    """model(image, text) goes through the trimmed encode_text: the same logits as from the golden."""
    model, tokens = models[config], GOLDEN["tokens"]["mixed"]
    images = factory.make_images(model.visual.input_resolution, 0, 2)
    with torch.no_grad(), positions_seen(model) as seen:
        logits_per_image, _ = model(images, tokens)
        image_features = F.normalize(model.encode_image(images), dim=-1)
    expected = model.logit_scale.exp() * image_features @ F.normalize(GOLDEN["features"][config]["mixed"]).T
    assert seen == [longest(tokens)]
    assert close_to(logits_per_image, expected) <= RELATIVE_TOLERANCE


@pytest.mark.golden
def test_golden_check_can_fail(models: Dict[str, CLIP]) -> None:
    """The full path's features differ from another model's by far more than the tolerance."""
    tokens = GOLDEN["tokens"]["mixed"]
    with torch.no_grad():
        other = models["tiny-rn"].encode_text(tokens)
    assert close_to(other, GOLDEN["features"]["tiny-vit"]["mixed"]) > 1000 * RELATIVE_TOLERANCE


@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
def test_same_as_full_path(config: str, models: Dict[str, CLIP], monkeypatch: pytest.MonkeyPatch) -> None:
    model = models[config]
    tokens = GOLDEN["tokens"]["mixed"]
    with torch.no_grad(), positions_seen(model) as seen:
        trimmed = model.encode_text(tokens)
        monkeypatch.setattr(model, "trim_text_padding", False)
        full = model.encode_text(tokens)
    assert seen == [longest(tokens), CONTEXT]
    assert close_to(trimmed, full) <= RELATIVE_TOLERANCE


@pytest.mark.golden
@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
def test_bf16(config: str, models: Dict[str, CLIP]) -> None:
    """bf16 weights (clip/_bf16.py's products) trim too; cosine to the original's fp32 as in fp32."""
    model = build_model(factory.make_state_dict(config, GOLDEN["seeds"][config])).to(torch.bfloat16)
    tokens = GOLDEN["tokens"]["mixed"]
    with torch.no_grad(), positions_seen(model) as seen:
        trimmed = model.encode_text(tokens)
        model.trim_text_padding = False
        full = model.encode_text(tokens)
    assert seen == [longest(tokens), CONTEXT]
    assert trimmed.dtype == torch.bfloat16
    expected = GOLDEN["features"][config]["mixed"]
    assert F.cosine_similarity(trimmed.float(), expected, dim=-1).min() >= BF16_MIN_COSINE
    assert F.cosine_similarity(trimmed.float(), full.float(), dim=-1).min() >= 0.9999


def test_switch_on_the_class(models: Dict[str, CLIP], monkeypatch: pytest.MonkeyPatch) -> None:
    model = models["tiny-vit"]
    monkeypatch.setattr(CLIP, "trim_text_padding", False)
    with torch.no_grad(), positions_seen(model) as seen:
        model.encode_text(GOLDEN["tokens"]["mixed"])
    assert seen == [CONTEXT]


@pytest.mark.parametrize("where", ["block", "attn", "token_embedding", "ln_final", "pre_hook", "global"])
def test_hooks_see_the_release_shapes(where: str, models: Dict[str, CLIP]) -> None:
    model = models["tiny-vit"]
    tokens = GOLDEN["tokens"]["mixed"]
    width = model.transformer.width
    seen: List[tuple] = []

    def record(module: torch.nn.Module, inputs: Any, output: Any = None) -> None:
        seen.append(tuple(inputs[0].shape))

    block = model.transformer.resblocks[1]
    register = {
        "block": lambda: block.register_forward_hook(record),
        "attn": lambda: block.attn.register_forward_hook(record),
        "token_embedding": lambda: model.token_embedding.register_forward_hook(record),
        "ln_final": lambda: model.ln_final.register_forward_hook(record),
        "pre_hook": lambda: block.mlp.c_fc.register_forward_pre_hook(record),
        "global": lambda: torch.nn.modules.module.register_module_forward_hook(record),
    }[where]
    handle = register()
    try:
        with torch.no_grad():
            hooked = model.encode_text(tokens)
    finally:
        handle.remove()
    expected = {
        "block": [(CONTEXT, 4, width)],
        "attn": [(CONTEXT, 4, width)],
        "token_embedding": [(4, CONTEXT)],
        "ln_final": [(4, CONTEXT, width)],
        "pre_hook": [(CONTEXT, 4, width)],
    }
    if where == "global":
        assert (4, CONTEXT) in seen and (CONTEXT, 4, width) in seen and all(CONTEXT in s for s in seen)
    else:
        assert seen == expected[where]
    with torch.no_grad(), positions_seen(model) as lengths:  # the hook is gone: trimmed again
        trimmed = model.encode_text(tokens)
    assert lengths == [longest(tokens)]
    assert close_to(trimmed, hooked) <= RELATIVE_TOLERANCE


@pytest.mark.parametrize(
    "flag",
    [
        "torch.jit.is_tracing",
        "torch.jit.is_scripting",
        "torch.onnx.is_in_onnx_export",
        "torch.compiler.is_compiling",
        "torch.compiler.is_exporting",
    ],
)
def test_graph_capture_computes_every_position(
    flag: str, models: Dict[str, CLIP], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under tracing, scripting, ONNX export, torch.compile and torch.export (flag raised by hand;
    tests/test_model.py traces, exports and compiles for real and compares bit for bit)."""
    model = models["tiny-vit"]
    monkeypatch.setattr(flag, lambda: True)
    with torch.no_grad(), positions_seen(model) as seen:
        model.encode_text(GOLDEN["tokens"]["mixed"])
    assert seen == [CONTEXT]


def test_torch_jit_trace_is_full(models: Dict[str, CLIP]) -> None:
    """A trace of encode_text on short texts still works on a batch with a 77-token text."""
    model = models["tiny-vit"]
    short, full = GOLDEN["tokens"]["mixed"], GOLDEN["tokens"]["mixed_full"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated
        traced = torch.jit.trace_module(model, {"encode_text": short}, check_trace=False)
    with torch.no_grad():
        got = traced.encode_text(full)
        expected = model.encode_text(full)
    assert close_to(got, expected) <= RELATIVE_TOLERANCE


def test_masks_that_are_not_causal_turn_it_off(models: Dict[str, CLIP]) -> None:
    model = build_model(factory.make_state_dict("tiny-vit", GOLDEN["seeds"]["tiny-vit"])).float()
    tokens = GOLDEN["tokens"]["mixed"]
    block = model.transformer.resblocks[0]
    causal = block.attn_mask
    try:
        block.attn_mask = None  # a bidirectional block: later positions matter
        with torch.no_grad(), positions_seen(model) as seen:
            model.encode_text(tokens)
        block.attn_mask = causal.clone()
        block.attn_mask[0, 5] = 0.0  # written in place: checked again
        with torch.no_grad(), positions_seen(model) as edited:
            model.encode_text(tokens)
    finally:
        block.attn_mask = causal
    assert seen == edited == [CONTEXT]
    with torch.no_grad(), positions_seen(model) as restored:
        model.encode_text(tokens)
    assert restored == [longest(tokens)]


def test_empty_batch_and_short_input(models: Dict[str, CLIP]) -> None:
    model = models["tiny-vit"]
    tokens = GOLDEN["tokens"]["mixed"]
    with torch.no_grad(), positions_seen(model) as seen:
        empty = model.encode_text(torch.zeros((0, CONTEXT), dtype=torch.int64))
        short = model.encode_text(tokens[:, :30])  # already shorter than 77: cut to the longest
    assert empty.shape == (0, model.text_projection.shape[1])
    assert seen == [CONTEXT, longest(tokens)]
    assert close_to(short, GOLDEN["features"]["tiny-vit"]["mixed"]) <= RELATIVE_TOLERANCE


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_gradients(checkpointing: bool, models: Dict[str, CLIP]) -> None:
    """Gradients of every text parameter are the full path's to rounding, also with checkpointing."""
    tokens = GOLDEN["tokens"]["mixed"]
    weights = torch.linspace(-1.0, 1.0, 4 * 64).reshape(4, 64)
    grads = {}
    for trim in (True, False):
        model = build_model(factory.make_state_dict("tiny-vit", GOLDEN["seeds"]["tiny-vit"])).float()
        model.train().set_grad_checkpointing(checkpointing)
        model.trim_text_padding = trim
        with positions_seen(model) as seen:
            (model.encode_text(tokens) * weights).sum().backward()
        assert seen == [longest(tokens) if trim else CONTEXT]
        grads[trim] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and "positional_embedding" in grads[True]
    for name, full in grads[False].items():
        assert close_to(grads[True][name], full) <= 1e-4, name
    assert not grads[True]["positional_embedding"][longest(tokens) :].any()


def test_build_classifier_encodes_shortest_first(models: Dict[str, CLIP]) -> None:
    """zeroshot.build_classifier sorts its prompts by length: each call computes its own longest."""
    from clip import zeroshot

    model = models["tiny-vit"]
    classes = ["dog", "a very long name of a rather unusual kind of sea creature", "cat"]
    templates = ["a photo of a {}.", "{}", "a blurry photo taken at night of the small {} on the left."]
    with positions_seen(model) as seen:
        sorted_result = zeroshot.build_classifier(model, classes, templates, batch_size=2, progress=False)
    assert seen == sorted(seen) and seen[0] < seen[-1] < CONTEXT and len(seen) == 5
    with torch.no_grad():  # the release notebook's per-class recipe
        columns = []
        for name in classes:
            embeddings = F.normalize(model.encode_text(clip.tokenize([t.format(name) for t in templates])))
            columns.append(F.normalize(embeddings.mean(dim=0), dim=0))
    assert close_to(sorted_result, torch.stack(columns, dim=1)) <= RELATIVE_TOLERANCE
