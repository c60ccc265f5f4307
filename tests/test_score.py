"""clip.score and `clip score`: CLIPScore and RefCLIPScore against the reference recipe (Hessel et al.,
2021) run with the original implementation (tests/data/explain_golden.pt, made by
tests/data/make_explain_golden.py), the clamp at 0, bad input and the command line."""

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _checkpoints import release_archive, tiny_model
from _model_factory import make_images, make_state_dict
from PIL import Image

import clip
from clip import score
from clip.__main__ import main as cli_main
from clip.model import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOLDEN = Path(__file__).resolve().parent / "data" / "explain_golden.pt"
# fp32 features of the same weights and token ids; kernel paths move cosines by ~1e-7
RTOL = 1e-5
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden_case():
    golden = torch.load(GOLDEN, weights_only=False)
    entry = golden["models"]["vit"]
    model = build_model(make_state_dict(entry["dims"], entry["seed"])).float()
    images = make_images(entry["dims"]["image_resolution"], entry["image_seed"], 3)
    return model, images, golden["captions"], golden["references"], entry["clipscore"]


@pytest.mark.golden
def test_clip_score_and_ref_clip_score_are_the_reference_recipe(golden_case):
    model, images, captions, references, expected = golden_case
    got = score.clip_score(model, images, captions)
    assert got.dtype == torch.float32 and got.shape == (3,)
    torch.testing.assert_close(got, expected["clip_score"], rtol=RTOL, atol=ATOL)
    assert (got > 0).all()  # the golden's cosines are positive: the scale is checked, not just the clamp
    got_ref = score.ref_clip_score(model, images, captions, references, batch_size=2)
    torch.testing.assert_close(got_ref, expected["ref_clip_score"], rtol=RTOL, atol=ATOL)
    # batching does not change the result
    torch.testing.assert_close(
        score.clip_score(model, images, captions, batch_size=1), got, rtol=0, atol=1e-6
    )


def test_negative_cosines_score_zero():
    model = tiny_model("vit").float()
    images = torch.randn(4, 3, 32, 32)
    captions = ["a diagram", "a dog", "a cat", "a photo of a red sofa"]
    refs = [["a drawing"], ["a puppy"], ["a kitten"], ["a couch"]]
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped.text_projection.neg_()  # every image-text cosine changes sign; text-text ones do not
    before, after = score.clip_score(model, images, captions), score.clip_score(flipped, images, captions)
    assert ((before > 0) ^ (after > 0)).all() and (before * after == 0).all()  # one side clamped to 0
    ref_before = score.ref_clip_score(model, images, captions, refs)
    ref_after = score.ref_clip_score(flipped, images, captions, refs)
    assert torch.equal(ref_before > 0, before > 0) and torch.equal(
        ref_after > 0, after > 0
    )  # H-mean(0, x) = 0


def test_prefix_is_put_before_each_caption():
    model = tiny_model("vit").float()
    images, captions = torch.randn(2, 3, 32, 32), ["a diagram", "a dog"]
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(clip.tokenize(captions)), dim=-1)
    cosine = (image * text).sum(dim=-1)
    bare = score.clip_score(model, images, captions, prefix="")
    torch.testing.assert_close(bare, 2.5 * cosine.clamp(min=0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(score.clip_score(model, images, captions), bare)  # the default prefix counts
    with pytest.raises(TypeError, match="prefix must be a string"):
        score.clip_score(model, images, captions, prefix=None)


def test_bad_input_is_refused():
    model = tiny_model("vit").float()
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="2 images and 1 captions"):
        score.clip_score(model, images, ["a dog"])
    with pytest.raises(TypeError, match="list of strings"):
        score.clip_score(model, images, "a dog")
    with pytest.raises(ValueError, match="one list of reference captions per image: 2 images, got 1"):
        score.ref_clip_score(model, images, ["a", "b"], [["x"]])
    with pytest.raises(ValueError, match=r"references\[1\] is empty"):
        score.ref_clip_score(model, images, ["a", "b"], [["x"], []])
    with pytest.raises(ValueError, match="preprocessed images"):
        score.clip_score(model, images[0], ["a"])
    with pytest.raises(ValueError, match="batch_size"):
        score.clip_score(model, images, ["a", "b"], batch_size=0)


def test_works_with_a_torchscript_model():
    jit_model, _ = clip.load(str(release_archive("vit")), device="cpu", jit=True)
    eager, _ = clip.load(str(release_archive("vit")), device="cpu")
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        score.clip_score(jit_model, images, ["a diagram", "a dog"]),
        score.clip_score(eager, images, ["a diagram", "a dog"]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_clip_score_command(tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    archive = str(release_archive("vit"))
    args = ["score", *paths, "--captions", "a diagram", "a dog", "--model", archive]
    assert cli_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CLIP-S", "image"] and lines[-1].endswith("(mean)")
    values = [float(line.split()[0]) for line in lines[1:3]]
    model, preprocess = clip.load(archive, device="cpu")
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
    expected = score.clip_score(model, pixels, ["a diagram", "a dog"]).tolist()
    assert values == pytest.approx(expected, abs=1e-4)
    assert float(lines[-1].split()[0]) == pytest.approx(sum(expected) / 2, abs=1e-4)
    refs = ["--references", "a drawing", "a chart", "--references", "a puppy"]
    assert cli_main([*args, *refs]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["CLIP-S", "RefCLIP-S", "image"]
    assert len(re.findall(r"^\s+\d\.\d{4}\s+\d\.\d{4}\s+", out, re.M)) == 3
    # mismatched counts: exit 2, one line
    assert cli_main(["score", *paths, "--captions", "a diagram", "--model", archive]) == 2
    assert "one caption per image: 2 images, 1 captions" in capsys.readouterr().err
    assert cli_main([*args, "--references", "only one"]) == 2
    assert "--references once per image" in capsys.readouterr().err
