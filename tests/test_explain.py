"""clip.explain and `clip explain`: relevance maps against the reference recipes run on the original's
modules, what a call leaves behind, bad input, the pictures, and a sanity check on a model trained here.

Goldens: tests/data/explain_golden.pt, made by tests/data/make_explain_golden.py with the original
implementation (Chefer et al.'s notebook recipe on its `nn.MultiheadAttention` blocks; Grad-CAM on its
`visual.layer4`), for seeded tiny fp32 models of tests/support/_model_factory.py.
"""

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _checkpoints import release_archive, tiny_model
from _golden import digest
from _model_factory import make_images, make_state_dict
from PIL import Image

import clip
from clip import explain
from clip.__main__ import main as cli_main
from clip.model import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "explain_golden.pt"
CLIP_PNG = HERE.parent / "CLIP.png"
# Ours writes the attention out as torch's need_weights path does (same scaling, mask, softmax), and
# both take gradients of the same graph. Measured against the golden on an AMD EPYC (AVX-512): 6e-6
# absolute on maps whose largest values are 0.5 to 12, 2e-5 relative to them. Kernel paths
# (ATEN_CPU_CAPABILITY) move fp32 sums by a few 1e-7 relative per block: 10x margin.
RTOL = 1e-4
ATOL = 5e-5


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=False)


def _golden_model(entry):
    state_dict = make_state_dict(entry["dims"], entry["seed"])
    assert digest(state_dict) == entry["state_dict_sha256"], (
        "the factory's weights changed: remake the golden"
    )
    images = make_images(entry["dims"]["image_resolution"], entry["image_seed"], 3)
    assert digest({"images": images}) == entry["images_sha256"]
    return build_model(state_dict).float(), images


def _cases():
    data = torch.load(GOLDEN, weights_only=False)
    return [(name, i) for name, entry in data["models"].items() for i in range(len(entry["cases"]))]


@pytest.mark.golden
@pytest.mark.parametrize("name, case", _cases())
def test_relevance_is_the_reference_recipe_run_on_the_original(golden, name, case):
    entry = golden["models"][name]
    model, images = _golden_model(entry)
    expected = entry["cases"][case]
    got = explain.relevance(
        model,
        images,
        golden["tokens"],
        start_layer=expected["start_layer"],
        start_layer_text=expected["start_layer_text"],
    )
    assert got.image.dtype == torch.float32 and got.text.dtype == torch.float32
    assert got.image.shape == expected["image"].shape and got.text.shape == (3, 77)
    torch.testing.assert_close(got.image, expected["image"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got.text, expected["text"], rtol=RTOL, atol=ATOL)
    assert got.image.abs().max() > 100 * ATOL  # not a trivially small map


def test_start_layers_default_to_the_last_block_and_count_from_the_end():
    model = tiny_model("vit").float()  # 2 blocks per tower
    images, texts = torch.randn(2, 3, 32, 32), clip.tokenize(["a diagram", "a dog"])
    default = explain.relevance(model, images, texts)
    last = explain.relevance(model, images, texts, start_layer=1, start_layer_text=-1)
    first = explain.relevance(model, images, texts, start_layer=-2, start_layer_text=0)
    torch.testing.assert_close(default.image, last.image, rtol=0, atol=0)
    torch.testing.assert_close(default.text, last.text, rtol=0, atol=0)
    assert not torch.allclose(first.image, default.image) and not torch.allclose(first.text, default.text)
    # the text map is zero after each text's end-of-text token (the causal mask), positive at it
    eot = texts.argmax(dim=-1)
    for n in range(2):
        assert default.text[n, eot[n]] >= 1 and (default.text[n, eot[n] + 1 :] == 0).all()


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_leaves_no_hooks_gradients_or_mode_changes_behind(arch):
    model = tiny_model(arch).float()
    res = model.visual.input_resolution
    images, texts = torch.randn(2, 3, res, res), clip.tokenize(["a diagram", "a dog"])
    expected = explain.relevance(model, images, texts)
    model.train()
    model.transformer.eval()  # a mix of modes, to be given back as they were
    model.ln_final.weight.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm statistics included
    got = explain.relevance(model, images, texts)
    torch.testing.assert_close(got.image, expected.image, rtol=0, atol=0)  # computed as in eval mode
    torch.testing.assert_close(got.text, expected.text, rtol=0, atol=0)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for module in model.modules():
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
        assert not any(hooks), module
    assert type(model.transformer.resblocks[0].attn) is clip.model.MultiheadAttention
    assert not got.image.requires_grad and not got.text.requires_grad
    # a frozen model (no parameter needs gradients) is explained the same
    model.requires_grad_(False)
    frozen = explain.relevance(model, images, texts)
    torch.testing.assert_close(frozen.image, expected.image, rtol=0, atol=0)


def test_shorter_texts_run_the_full_context_and_keep_their_width():
    model = tiny_model("vit").float()
    images = torch.randn(2, 3, 32, 32)
    full = explain.relevance(model, images, clip.tokenize(["a diagram", "a dog"]))
    short = explain.relevance(model, images, clip.tokenize(["a diagram", "a dog"], context_length=10))
    assert short.text.shape == (2, 10)
    torch.testing.assert_close(short.text, full.text[:, :10], rtol=0, atol=0)
    torch.testing.assert_close(short.image, full.image, rtol=0, atol=0)


def test_bf16_model_gives_nearly_the_fp32_maps():
    model = tiny_model("vit").float()
    images, texts = torch.randn(2, 3, 32, 32), clip.tokenize(["a diagram", "a dog"])
    fp32 = explain.relevance(model, images, texts)
    bf16 = explain.relevance(model.to(torch.bfloat16), images, texts)
    assert bf16.image.dtype == torch.float32 and torch.isfinite(bf16.image).all()
    cosine = torch.nn.functional.cosine_similarity(bf16.image.flatten(1), fp32.image.flatten(1))
    assert (cosine > 0.95).all(), cosine  # bf16 keeps 8 bits: close, not equal


def test_bad_input_is_refused_with_a_clear_error():
    model = tiny_model("vit").float()
    images, texts = torch.randn(2, 3, 32, 32), clip.tokenize(["a diagram", "a dog"])
    with pytest.raises(ValueError, match=r"2 images and 3 texts.*expand"):
        explain.relevance(model, images, clip.tokenize(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"start_layer=2 is out of range: the image tower has 2 blocks"):
        explain.relevance(model, images, texts, start_layer=2)
    with pytest.raises(ValueError, match=r"start_layer_text=-3 is out of range: the text tower has 2"):
        explain.relevance(model, images, texts, start_layer_text=-3)
    with pytest.raises(TypeError, match="start_layer must be an int"):
        explain.relevance(model, images, texts, start_layer=True)
    with pytest.raises(ValueError, match=r"shape \(N, 3, 32, 32\)"):
        explain.relevance(model, torch.randn(2, 3, 64, 64), texts)
    with pytest.raises(ValueError, match="integer token ids"):
        explain.relevance(model, images, texts.float())
    with pytest.raises(ValueError, match="integer token ids"):
        explain.relevance(model, images, torch.zeros(2, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must lie in"):
        explain.relevance(model, images, texts + 49408)
    with pytest.raises(ValueError, match="empty"):
        explain.relevance(model, images[:0], texts[:0])
    with pytest.raises(TypeError, match="expects a CLIP model"):
        explain.relevance(model.visual, images, texts)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        explain.relevance(model, images, texts)
    resnet = tiny_model("resnet").float()
    with pytest.raises(ValueError, match="ViT image towers only.*Grad-CAM"):
        explain.relevance(resnet, torch.randn(2, 3, 64, 64), texts, start_layer=0)


def test_torchscript_and_int8_models_are_refused_saying_what_to_pass():
    jit_model, _ = clip.load(str(release_archive("vit")), device="cpu", jit=True)
    images, texts = torch.randn(1, 3, 32, 32), clip.tokenize(["a diagram"])
    with pytest.raises(ValueError, match=r"not TorchScript.*jit=False"):
        explain.relevance(jit_model, images, texts)
    int8 = clip.quantize(tiny_model("vit").float())
    with pytest.raises(ValueError, match=r"int8.*without quantize"):
        explain.relevance(int8, images, texts)


# ------------------------------------------------------------------------------------------ pictures


def test_jet_is_matplotlibs_and_other_names_come_from_matplotlib():
    matplotlib = pytest.importorskip("matplotlib")
    ramp = np.linspace(0.0, 1.0, 256)
    for name in ("jet", "gray", "viridis"):
        expected = np.rint(matplotlib.colormaps[name](ramp)[:, :3] * 255)
        assert np.abs(explain._colormap_lut(name).astype(int) - expected).max() <= 1, name
    with pytest.raises(ValueError, match="unknown colormap 'no-such-map'"):
        explain._colormap_lut("no-such-map")


def test_overlay_covers_the_centre_square_that_preprocess_takes():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8))  # 60 wide, 40 high
    heatmap = torch.zeros(4, 4)
    heatmap[0, 0] = 1.0  # hottest at the top left
    plain = explain.overlay(photo, heatmap, alpha=0.0)
    assert plain.size == (40, 40) and plain.mode == "RGB"
    assert np.array_equal(np.asarray(plain), np.asarray(photo)[:, 10:50])
    colours = np.asarray(explain.overlay(photo, heatmap, alpha=1.0))
    assert tuple(colours[0, 0]) == (128, 0, 0)  # jet at 1: dark red
    assert tuple(colours[-1, -1]) == (0, 0, 128)  # jet at 0: dark blue
    assert explain.overlay(photo, heatmap[None], size=16).size == (16, 16)
    flat = np.asarray(explain.overlay(photo, torch.ones(4, 4), alpha=1.0))
    assert (flat == flat[0, 0]).all()  # a constant map is one colour
    with pytest.raises(ValueError, match="alpha must be a number from 0 to 1"):
        explain.overlay(photo, heatmap, alpha=1.5)
    with pytest.raises(ValueError, match="one 2-D map"):
        explain.overlay(photo, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        explain.overlay(photo, torch.full((4, 4), float("nan")))
    with pytest.raises(TypeError, match="PIL image"):
        explain.overlay(np.asarray(photo), heatmap)


def test_clip_explain_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "diagram.png"
    args = [
        "explain",
        str(CLIP_PNG),
        "--labels",
        "a diagram",
        "a dog",
        "--model",
        str(release_archive("vit")),
    ]
    assert cli_main([*args, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    probabilities = [float(p) for p in re.findall(r"(\d+\.\d\d)%", printed)]
    assert len(probabilities) == 2 and abs(sum(probabilities) - 100) < 0.02, printed
    assert f"wrote {out}" in printed
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        width, height = picture.size
        pixels = np.asarray(picture)
    panel, margin = explain.FIGURE_PANEL, explain.FIGURE_MARGIN
    assert width == margin + 3 * (panel + margin) and height > panel
    # the two overlays are pictures, and not the plain image
    top = 2 * (explain.FIGURE_FONT_SIZE + 6) + margin
    plain = pixels[top : top + panel, margin : margin + panel].astype(int)
    for k in (1, 2):
        left = margin + k * (panel + margin)
        assert np.abs(pixels[top : top + panel, left : left + panel].astype(int) - plain).mean() > 5
    assert [p.name for p in tmp_path.iterdir()] == ["diagram.png"]  # no temporary left


def test_clip_explain_refuses_bad_arguments_before_writing(tmp_path, capsys):
    model = str(release_archive("vit"))
    base = ["explain", str(CLIP_PNG), "--labels", "a diagram", "--model", model]
    assert cli_main([*base, "-o", str(tmp_path / "missing" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main([*base, "-o", str(tmp_path / "x.txt")]) == 2
    assert ".png" in capsys.readouterr().err
    assert cli_main([*base, "-o", str(tmp_path / "x.png"), "--start-layer", "7"]) == 2
    err = capsys.readouterr().err
    assert "--start-layer 7 is out of range" in err and "Traceback" not in err
    assert cli_main(["explain", str(tmp_path / "nope.png"), "--labels", "a", "--model", model]) == 2
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- sanity: trained model

SANITY_STEPS = 200
SANITY_SCENES = 100
CHANCE = 0.25  # one quadrant of four


def _quadrant_hits(model, vocab, scenes, which):
    """How often the map of the text naming shape `which` (0: the red circle, 1: the other) peaks in
    that shape's quadrant."""
    from _shape_scenes import peak_quadrant, prompt

    images = torch.stack([image for image, _, _ in scenes])
    texts = vocab([prompt("circle", "red") if which == 0 else prompt(*other) for _, other, _ in scenes])
    maps = explain.relevance(model, images, texts).image
    return sum(peak_quadrant(m) == quadrants[which] for m, (_, _, quadrants) in zip(maps, scenes)) / len(
        scenes
    )


def test_a_trained_model_looks_at_the_shape_its_text_names():
    from _shape_scenes import COMBINATIONS, Vocabulary, scene, to_tensor, train_tiny_clip

    vocab = Vocabulary()
    rng = random.Random(1)
    scenes = []
    for _ in range(SANITY_SCENES):
        other = rng.choice([c for c in COMBINATIONS if c != ("circle", "red")])
        quadrants = rng.sample(range(4), 2)
        picture = scene(rng, [("circle", "red", quadrants[0]), (*other, quadrants[1])])
        scenes.append((to_tensor(picture), other, quadrants))
    untrained = train_tiny_clip(vocab, steps=0)
    model = train_tiny_clip(vocab, steps=SANITY_STEPS)
    red, other = _quadrant_hits(model, vocab, scenes, 0), _quadrant_hits(model, vocab, scenes, 1)
    red_before, other_before = (
        _quadrant_hits(untrained, vocab, scenes, 0),
        _quadrant_hits(untrained, vocab, scenes, 1),
    )
    print(
        f"peak in the named shape's quadrant (chance {CHANCE:.0%}): 'a red circle' {red:.0%}, the other "
        f"shape's text {other:.0%}; untrained: {red_before:.0%} and {other_before:.0%}"
    )
    assert red >= 2 * CHANCE  # "a red circle" peaks on the red circle more often than chance
    assert other >= 2 * CHANCE  # and the other shape's text on the other shape: the map follows the text
    assert other > other_before + CHANCE  # which the untrained model's maps do not
