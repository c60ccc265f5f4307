"""Hostile calls of the Python API beyond clip.load (issue 34): zeroshot, features, loss, quantize,
train's schedule pieces, the model's training hooks and tokenize's flags. No call may hand back a
plausible wrong answer: each case raises a clear error naming the argument (and what to do), warns,
or is handled correctly. Valid calls around each case keep their results.

Every case here needed a library change ("(fix)" in tests/test_hostile_inputs.py's terms).

===================================  ========================================================================
case                                 new behaviour (test)
===================================  ========================================================================
**quantize**
jit=True model                       ValueError: load with jit=False (BAD_CALLS quantize-jit)
a module that is not a CLIP          TypeError naming the type (BAD_CALLS quantize-linear)
scheme None                          ValueError: scheme must be "int8" (BAD_CALLS quantize-none)
backward through int8                parameters frozen; RuntimeError when gradients are needed
                                     (test_quantized_model_refuses_training)
**zeroshot**
all-NaN logits                       ValueError naming logits and the row (BAD_CALLS accuracy-nan)
targets outside [0, n), float        ValueError / TypeError naming targets (BAD_CALLS accuracy-*)
targets as a list; topk=1            accepted (test_accuracy_and_recall_take_lists_and_one_k)
template with two {}                 ValueError naming the template (BAD_CALLS template-*)
predict: classifier transposed,      ValueError naming the expected shape, TypeError for a list of
wrong width, 1-D, on meta; a list    images (BAD_CALLS predict-*)
of images
**features**
NaN / inf / zero features            ValueError naming the input and row (BAD_CALLS recall-*)
ks=5                                 accepted (test_accuracy_and_recall_take_lists_and_one_k)
string labels in extract             TypeError: map labels to indices (BAD_CALLS extract-str-labels)
**loss**
un-normalised features               a warning, once per instance (test_clip_loss_warns_once_*)
model.logit_scale for .exp()         a warning (test_clip_loss_warns_once_about_a_log_scale)
huge logits in contrastive_loss      a warning, once per process (test_contrastive_loss_warns_once_*)
negative scale; per-sample scale;    ValueError / TypeError naming logit_scale (BAD_CALLS loss-scale-*)
None
local_loss='yes'                     TypeError naming the flag (BAD_CALLS loss-flag-*)
integer inputs; empty batch          TypeError / ValueError (BAD_CALLS loss-int-*, loss-empty-*)
**train**
cosine_lr: negative step             ValueError naming step (BAD_CALLS lr-*)
cosine_lr: past the total            0 (test_cosine_lr_is_zero_past_the_total)
negative weight decay                ValueError naming weight_decay (BAD_CALLS wd-*)
**training hooks**
truthy flags ('no', 1)               TypeError naming the flag, nothing changed (BAD_CALLS hook-*,
                                     test_rejected_flags_change_nothing)
hooks on a jit model                 RuntimeError: load with jit=False
                                     (test_hooks_on_a_jit_model_say_load_with_jit_false)
**tokenize**
truncate='no', 1                     TypeError naming truncate (BAD_CALLS tokenize-truncate-*)
context_length=True                  TypeError (BAD_CALLS tokenize-length-bool)
context_length=10**12                ValueError quoting the value and the bound (tokenize-length-huge)
===================================  ========================================================================
"""

import math
import warnings
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _checkpoints import example_inputs, release_archive, save_state_dict
from _zeroshot_inputs import CLASSES, TEMPLATES, pixel_batch

import clip
from clip import features, loss, zeroshot
from clip._quantize import Int8Linear
from clip._tokenize import MAX_CONTEXT_LENGTH
from clip.loss import ClipLoss, contrastive_loss
from clip.train import cosine_lr, parameter_groups

EMBED_DIM = 32  # the tiny models' (tests/support/_checkpoints.py TINY_DIMS)
N_CLASSES = len(CLASSES)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops: see conftest.py


@pytest.fixture(scope="module")
def env() -> Dict[str, Any]:
    """The tiny ViT as clip.load gives it (eager and TorchScript), a classifier and images for it."""
    model, _ = clip.load(str(release_archive("vit")), device="cpu", jit=False)
    jit_model, _ = clip.load(str(release_archive("vit")), device="cpu", jit=True)
    classifier = zeroshot.build_classifier(model, CLASSES, TEMPLATES, progress=False)
    return {
        "model": model,
        "jit": jit_model,
        "classifier": classifier,
        "images": pixel_batch(model.visual.input_resolution, n=2),
    }


def _unit(rows: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randint(-8, 9, (rows, EMBED_DIM), generator=gen).float() + 0.5, dim=-1)


class _Labelled(torch.utils.data.Dataset):
    """Preprocessed images with string labels (a CSV read as it is)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], f"class {index}"


def _logits() -> torch.Tensor:
    return torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])


def _nan_rows(rows: torch.Tensor, where: int, value: float) -> torch.Tensor:
    rows = rows.clone()
    rows[where] = value
    return rows


Call = Callable[[Dict[str, Any]], Any]

# (call, exception, message pattern): each needed a library change to raise what it raises.
BAD_CALLS = [
    # quantize
    pytest.param(lambda e: clip.quantize(e["jit"]), ValueError, r"jit=False", id="quantize-jit"),
    pytest.param(
        lambda e: clip.quantize(torch.nn.Linear(2, 2)), TypeError, r"CLIP model.*Linear", id="quantize-linear"
    ),
    pytest.param(
        lambda e: clip.quantize(e["model"], None),
        ValueError,
        r"scheme must be one of \['int8'\]",
        id="quantize-none",
    ),
    # zeroshot.accuracy
    pytest.param(
        lambda e: zeroshot.accuracy(torch.full((2, 3), math.nan), torch.tensor([1, 2]), topk=(1,)),
        ValueError,
        r"logits hold NaN in 2 of 2 rows \(the first: row 0\)",
        id="accuracy-nan",
    ),
    pytest.param(
        lambda e: zeroshot.accuracy(_nan_rows(_logits(), 1, math.nan), torch.tensor([1, 0]), topk=(1,)),
        ValueError,
        r"logits hold NaN.*row 1",
        id="accuracy-one-nan-row",
    ),
    pytest.param(
        lambda e: zeroshot.accuracy(_logits(), torch.tensor([1, 3]), topk=(1,)),
        ValueError,
        r"targets must be class indices in \[0, 3\).*to 3",
        id="accuracy-target-too-big",
    ),
    pytest.param(
        lambda e: zeroshot.accuracy(_logits(), torch.tensor([-1, 0]), topk=(1,)),
        ValueError,
        r"targets must be class indices in \[0, 3\).*from -1",
        id="accuracy-target-negative",
    ),
    pytest.param(
        lambda e: zeroshot.accuracy(_logits(), torch.tensor([1.0, 0.0]), topk=(1,)),
        TypeError,
        r"targets must hold integer class indices, got dtype torch.float32",
        id="accuracy-float-targets",
    ),
    pytest.param(
        lambda e: zeroshot.accuracy(_logits(), [1.5, 0.0], topk=(1,)),
        TypeError,
        r"targets must hold integer",
        id="accuracy-float-list",
    ),
    pytest.param(
        lambda e: zeroshot.accuracy(_logits(), ["a", "b"], topk=(1,)),
        TypeError,
        r"targets must be a tensor or a sequence of integer",
        id="accuracy-str-targets",
    ),
    pytest.param(
        lambda e: zeroshot.accuracy(_logits().tolist(), [1, 0], topk=(1,)),
        TypeError,
        r"logits must be a torch.Tensor",
        id="accuracy-list-logits",
    ),
    pytest.param(
        lambda e: zeroshot.accuracy(_logits(), [1, 0], topk=None),
        TypeError,
        r"topk must be an int or a sequence",
        id="accuracy-topk-none",
    ),
    # zeroshot.build_classifier
    pytest.param(
        lambda e: zeroshot.build_classifier(e["model"], ["cat"], ["a {} and a {}"], progress=False),
        ValueError,
        r"template 'a \{\} and a \{\}' cannot be filled with one class name",
        id="template-two-fields",
    ),
    pytest.param(
        lambda e: zeroshot.build_classifier(e["model"], ["cat"], ["a {} of {kind}"], progress=False),
        ValueError,
        r"template 'a \{\} of \{kind\}'",
        id="template-named-field",
    ),
    # zeroshot.predict
    pytest.param(
        lambda e: zeroshot.predict(e["model"], e["images"], e["classifier"].T),
        ValueError,
        rf"\({EMBED_DIM}, n_classes\).*got \({N_CLASSES}, {EMBED_DIM}\) \(transposed\? pass classifier.T\)",
        id="predict-transposed",
    ),
    pytest.param(
        lambda e: zeroshot.predict(e["model"], e["images"], torch.zeros(EMBED_DIM + 1, N_CLASSES)),
        ValueError,
        rf"\({EMBED_DIM}, n_classes\) for this model.*got \({EMBED_DIM + 1}, {N_CLASSES}\)",
        id="predict-wrong-width",
    ),
    pytest.param(
        lambda e: zeroshot.predict(e["model"], e["images"], e["classifier"][:, 0]),
        ValueError,
        r"classifier must be 2-D \(embed_dim, n_classes\).*\(32,\)",
        id="predict-1d",
    ),
    pytest.param(
        lambda e: zeroshot.predict(e["model"], e["images"], e["classifier"].to("meta")),
        ValueError,
        r"classifier is on the meta device",
        id="predict-meta",
    ),
    pytest.param(
        lambda e: zeroshot.predict(e["model"], list(e["images"]), e["classifier"]),
        TypeError,
        r"images must be a torch.Tensor, got list: stack",
        id="predict-list-of-images",
    ),
    # features
    pytest.param(
        lambda e: features.recall_at_k(_unit(3), _unit(3, 1), [0.0, 1.7, 2.2]),
        TypeError,
        r"text_to_image must hold integer image indices, got torch.float32",
        id="recall-float-indices",
    ),
    pytest.param(
        lambda e: features.recall_at_k(_unit(3), _unit(3, 1), torch.tensor([True, False, True])),
        TypeError,
        r"text_to_image must hold integer image indices, got torch.bool",
        id="recall-bool-indices",
    ),
    pytest.param(
        lambda e: features.recall_at_k(_nan_rows(_unit(3), 1, math.nan), _unit(3, 1), [0, 1, 2]),
        ValueError,
        r"image_features row 1 holds NaN",
        id="recall-nan-images",
    ),
    pytest.param(
        lambda e: features.recall_at_k(_unit(3), _nan_rows(_unit(3, 1), 2, math.nan), [0, 1, 2]),
        ValueError,
        r"text_features row 2 holds NaN",
        id="recall-nan-texts",
    ),
    pytest.param(
        lambda e: features.recall_at_k(_nan_rows(_unit(3), 0, math.inf), _unit(3, 1), [0, 1, 2]),
        ValueError,
        r"image_features row 0 holds NaN or infinity",
        id="recall-inf",
    ),
    pytest.param(
        lambda e: features.recall_at_k(_unit(3), _nan_rows(_unit(3, 1), 0, 0.0), [0, 1, 2]),
        ValueError,
        r"text_features row 0 .*all zeros",
        id="recall-zero-row",
    ),
    pytest.param(
        lambda e: features.recall_at_k(_unit(3), _unit(3, 1), [0, 1, 2], ks=None),
        TypeError,
        r"ks must be an int or a sequence",
        id="recall-ks-none",
    ),
    pytest.param(
        lambda e: features.extract(e["model"], _Labelled(e["images"]), progress=False),
        TypeError,
        r"labels must be numbers.*str labels such as 'class 0'",
        id="extract-str-labels",
    ),
    # loss
    pytest.param(
        lambda e: ClipLoss()(_unit(4), _unit(4, 1), -10.0),
        ValueError,
        r"logit_scale must be a positive.*-10",
        id="loss-scale-negative",
    ),
    pytest.param(
        lambda e: ClipLoss()(_unit(4), _unit(4, 1), torch.tensor(-10.0)),
        ValueError,
        r"logit_scale must be a positive",
        id="loss-scale-negative-tensor",
    ),
    pytest.param(
        lambda e: ClipLoss()(_unit(4), _unit(4, 1), 0.0),
        ValueError,
        r"logit_scale must be a positive",
        id="loss-scale-zero",
    ),
    pytest.param(
        lambda e: ClipLoss()(_unit(4), _unit(4, 1), torch.full((4,), 100.0)),
        ValueError,
        r"logit_scale must be one number.*\(4,\)",
        id="loss-scale-per-sample",
    ),
    pytest.param(
        lambda e: ClipLoss()(_unit(4), _unit(4, 1), None),
        TypeError,
        r"logit_scale must be the scale multiplier.*NoneType",
        id="loss-scale-none",
    ),
    pytest.param(
        lambda e: ClipLoss(local_loss="yes"),
        TypeError,
        r"local_loss must be a bool.*'yes'",
        id="loss-flag-local",
    ),
    pytest.param(
        lambda e: ClipLoss(gather_with_grad=1),
        TypeError,
        r"gather_with_grad must be a bool",
        id="loss-flag-gather",
    ),
    pytest.param(
        lambda e: ClipLoss()(torch.ones(4, 8, dtype=torch.long), torch.ones(4, 8, dtype=torch.long), 100.0),
        TypeError,
        r"image_features must be floating point.*torch.int64",
        id="loss-int-features",
    ),
    pytest.param(
        lambda e: contrastive_loss(torch.eye(3, dtype=torch.long), torch.eye(3, dtype=torch.long)),
        TypeError,
        r"logits_per_image must be floating point",
        id="loss-int-logits",
    ),
    pytest.param(
        lambda e: ClipLoss()(torch.zeros(0, 8), torch.zeros(0, 8), 100.0),
        ValueError,
        r"empty batch \(N=0\)",
        id="loss-empty-features",
    ),
    pytest.param(
        lambda e: contrastive_loss(torch.zeros(0, 0), torch.zeros(0, 0)),
        ValueError,
        r"empty batch \(N=0\)",
        id="loss-empty-logits",
    ),
    # train
    pytest.param(
        lambda e: cosine_lr(-1, 0.5, 4, 20),
        ValueError,
        r"step must be 0 or more, got -1",
        id="lr-negative-step",
    ),
    pytest.param(
        lambda e: cosine_lr(0, 0.5, -4, 20), ValueError, r"warmup must be 0 or more", id="lr-negative-warmup"
    ),
    pytest.param(
        lambda e: cosine_lr(0, -0.5, 4, 20), ValueError, r"base_lr must be a positive", id="lr-negative-base"
    ),
    pytest.param(lambda e: cosine_lr(1.5, 0.5, 4, 20), TypeError, r"step must be an int", id="lr-float-step"),
    pytest.param(
        lambda e: parameter_groups(e["model"], -0.1),
        ValueError,
        r"weight_decay must be 0 or more.*-0.1",
        id="wd-negative",
    ),
    pytest.param(
        lambda e: parameter_groups(e["model"], math.nan),
        ValueError,
        r"weight_decay must be 0 or more",
        id="wd-nan",
    ),
    pytest.param(
        lambda e: parameter_groups(e["model"], "0.2"),
        TypeError,
        r"weight_decay must be a number",
        id="wd-str",
    ),
    # the model's training hooks
    pytest.param(
        lambda e: e["model"].set_grad_checkpointing("no"),
        TypeError,
        r"set_grad_checkpointing: enable must be a bool.*'no'",
        id="hook-checkpointing-str",
    ),
    pytest.param(
        lambda e: e["model"].set_grad_checkpointing(1),
        TypeError,
        r"enable must be a bool",
        id="hook-checkpointing-int",
    ),
    pytest.param(
        lambda e: e["model"].lock_image_tower("yes"),
        TypeError,
        r"lock_image_tower: freeze_norm_stats must be a bool",
        id="hook-lock-image-str",
    ),
    pytest.param(
        lambda e: e["model"].lock_text_tower(freeze_norm_stats=0),
        TypeError,
        r"lock_text_tower: freeze_norm_stats must be a bool",
        id="hook-lock-text-int",
    ),
    # tokenize
    pytest.param(
        lambda e: clip.tokenize("a cat", truncate="no"),
        TypeError,
        r"truncate must be a bool.*'no'",
        id="tokenize-truncate-str",
    ),
    pytest.param(
        lambda e: clip.tokenize("a cat", truncate=1),
        TypeError,
        r"truncate must be a bool",
        id="tokenize-truncate-int",
    ),
    pytest.param(
        lambda e: clip.tokenize("a cat", context_length=True),
        TypeError,
        r"context_length must be an int, got bool",
        id="tokenize-length-bool",
    ),
    pytest.param(
        lambda e: clip.tokenize("a cat", context_length=10**12),
        ValueError,
        r"context_length=1,000,000,000,000 is more than tokenize allows \(65,536\).*model.context_length",
        id="tokenize-length-huge",
    ),
]


@pytest.mark.parametrize("call, error, match", BAD_CALLS)
def test_bad_calls_raise_clear_errors(env: Dict[str, Any], call: Call, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call(env)


# ----------------------------------------------------------------------------------------------
# quantize


def test_quantized_model_refuses_training(env: Dict[str, Any]) -> None:
    model = env["model"]
    int8 = clip.quantize(model)
    assert all(p.requires_grad for p in model.parameters())  # the original is left as it was
    assert not any(p.requires_grad for p in int8.parameters())
    images = env["images"]
    with torch.no_grad():
        expected = int8.encode_image(images)
    assert torch.equal(int8.encode_image(images), expected)  # inference needs no torch.no_grad()
    with pytest.raises(RuntimeError, match=r"int8 layers compute no gradients.*fine-tune the fp32 model"):
        int8.encode_image(images.clone().requires_grad_())
    int8.requires_grad_(True)  # re-enabling gradients does not make training through int8 silent
    with pytest.raises(RuntimeError, match="int8 layers compute no gradients"):
        int8.encode_text(example_inputs("vit")[1])


def test_load_with_quantize_freezes_too(tmp_path) -> None:
    path = save_state_dict(tmp_path / "tiny.pt", "vit")
    int8, _ = clip.load(str(path), device="cpu", quantize="int8")
    assert any(isinstance(m, Int8Linear) for m in int8.modules())
    assert not any(p.requires_grad for p in int8.parameters())


# ----------------------------------------------------------------------------------------------
# accepted forms: the same results as the canonical ones


def test_accuracy_and_recall_take_lists_and_one_k(env: Dict[str, Any]) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 100, (20, 6), generator=gen).float()
    targets = torch.randint(0, 6, (20,), generator=gen)
    assert zeroshot.accuracy(logits, targets, topk=1) == zeroshot.accuracy(logits, targets, topk=(1,))
    assert zeroshot.accuracy(logits, targets.tolist()) == zeroshot.accuracy(logits, targets)
    assert zeroshot.accuracy(logits, targets.int()) == zeroshot.accuracy(logits, targets)
    assert zeroshot.accuracy(torch.zeros(0, 6), [], topk=1) == [0.0]
    images, texts = _unit(5), _unit(9, 1)
    owner = torch.randint(0, 5, (9,), generator=gen).tolist()
    one = features.recall_at_k(images, texts, owner, ks=2)
    assert one == features.recall_at_k(images, texts, owner, ks=(2,))
    # only NaN is refused: a -inf logit (a masked class) ranks last, like any lowest finite value
    masked, lowest = logits.clone(), logits.clone()
    masked[:, 0], lowest[:, 0] = -math.inf, logits.min() - 1
    assert zeroshot.accuracy(masked, targets, topk=(1, 5)) == zeroshot.accuracy(lowest, targets, topk=(1, 5))


def test_valid_templates_with_literal_braces_still_work(env: Dict[str, Any]) -> None:
    model = env["model"]
    braced = zeroshot.build_classifier(model, ["cat"], ["{{a}} {}"], progress=False)
    plain = model.encode_text(clip.tokenize(["{a} cat"])).float().detach()
    torch.testing.assert_close(braced[:, 0], F.normalize(plain, dim=-1)[0])


def test_predict_accepts_a_classifier_of_another_dtype(env: Dict[str, Any]) -> None:
    model, images, classifier = env["model"], env["images"], env["classifier"]
    expected = zeroshot.predict(model, images, classifier)
    assert torch.equal(zeroshot.predict(model, images, classifier.double()), expected)


# ----------------------------------------------------------------------------------------------
# loss warnings


@pytest.fixture
def first_contrastive_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next contrastive_loss call the process's first (its magnitude check runs once)."""
    monkeypatch.setattr(loss, "_logits_checked", False)


def _warnings_of(call: Callable[[], Any]) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught]


def test_clip_loss_warns_once_about_features_that_are_not_unit_norm() -> None:
    images, texts = _unit(4) * 30, _unit(4, 1) * 30  # 900 x the loss's logits
    fn = ClipLoss()
    first = _warnings_of(lambda: fn(images, texts, 100.0))
    assert len(first) == 1 and "norms from 30 to 30" in first[0] and "F.normalize" in first[0]
    assert _warnings_of(lambda: fn(images, texts, 100.0)) == []  # once per instance: no sync per step
    assert len(_warnings_of(lambda: ClipLoss()(images, texts, 100.0))) == 1


def test_clip_loss_warns_once_about_a_log_scale() -> None:
    log_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))
    images, texts = _unit(4), _unit(4, 1)
    for scale in (log_scale, log_scale.detach().clone(), math.log(1 / 0.07), log_scale.half()):
        caught = _warnings_of(lambda scale=scale: ClipLoss()(images, texts, scale))
        assert len(caught) == 1 and "pass model.logit_scale.exp()" in caught[0], scale


def test_valid_loss_calls_do_not_warn(first_contrastive_call: None) -> None:
    images, texts = _unit(6), _unit(6, 1)
    for scale in (torch.tensor(100.0), torch.tensor(1 / 0.07), 50.0, torch.tensor([14.0]), np.float32(20.0)):
        assert _warnings_of(lambda scale=scale: ClipLoss()(images, texts, scale)) == [], scale
    for dtype in (torch.float16, torch.bfloat16):  # rounded unit features are still unit
        low = (images.to(dtype), texts.to(dtype))
        assert _warnings_of(lambda low=low: ClipLoss()(*low, torch.tensor(100.0))) == [], dtype
    logits = 100.0 * images @ texts.T
    assert _warnings_of(lambda: contrastive_loss(logits, logits.T)) == []


def test_contrastive_loss_warns_once_about_huge_logits(first_contrastive_call: None) -> None:
    raw = torch.randint(-8, 9, (4, EMBED_DIM), generator=torch.Generator().manual_seed(2)).float()
    logits = 100.0 * raw @ raw.T  # un-normalised features: logits in the ten thousands
    first = _warnings_of(lambda: contrastive_loss(logits, logits.T))
    assert len(first) == 1 and "normalise the features" in first[0]
    assert _warnings_of(lambda: contrastive_loss(logits, logits.T)) == []  # once per process


def test_loss_values_are_unchanged_for_valid_inputs() -> None:
    images, texts = _unit(5), _unit(5, 1)
    scale = torch.tensor(100.0)
    logits = scale * images @ texts.T
    expected = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    assert torch.equal(ClipLoss()(images, texts, scale), expected)
    assert torch.equal(contrastive_loss(logits, logits.T), expected)


# ----------------------------------------------------------------------------------------------
# train's schedule


@pytest.mark.parametrize("warmup, total", [(4, 20), (30, 20), (20, 20), (0, 20)])
def test_cosine_lr_is_zero_past_the_total(warmup: int, total: int) -> None:
    base = 0.5
    lrs = [cosine_lr(step, base, warmup, total) for step in range(total + 40)]
    assert all(0 <= lr <= base for lr in lrs)
    assert lrs[total:] == [0.0] * 40  # past the schedule: no more learning, never rising again
    ramp = range(min(warmup, total))
    assert lrs[: len(ramp)] == [base * (step + 1) / warmup for step in ramp]  # the warmup as before
    if warmup < total:
        assert lrs[warmup] == base and all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    assert cosine_lr(np.int64(3), np.float64(base), warmup, total) == lrs[3]  # numpy numbers still work


# ----------------------------------------------------------------------------------------------
# training hooks


def test_rejected_flags_change_nothing() -> None:
    model, _ = clip.load(str(release_archive("vit")), device="cpu")
    for call in (
        lambda: model.set_grad_checkpointing("no"),
        lambda: model.lock_image_tower("yes"),
        lambda: model.lock_text_tower(freeze_norm_stats=1),
    ):
        with pytest.raises(TypeError):
            call()
    assert not model.transformer.grad_checkpointing and not model.visual.transformer.grad_checkpointing
    assert all(p.requires_grad for p in model.parameters())
    model.set_grad_checkpointing(True)  # bools as before
    model.lock_text_tower(freeze_norm_stats=False)
    assert model.transformer.grad_checkpointing and not model.token_embedding.weight.requires_grad


@pytest.mark.parametrize("hook", ["set_grad_checkpointing", "lock_image_tower", "lock_text_tower"])
def test_hooks_on_a_jit_model_say_load_with_jit_false(env: Dict[str, Any], hook: str) -> None:
    with pytest.raises(
        RuntimeError, match=rf"{hook}\(\) is a method of the eager model.*Load it with jit=False"
    ):
        getattr(env["jit"], hook)(True)


# ----------------------------------------------------------------------------------------------
# tokenize


def test_context_length_bound_and_valid_values() -> None:
    assert clip.tokenize("a cat", context_length=MAX_CONTEXT_LENGTH).shape == (1, MAX_CONTEXT_LENGTH)
    assert torch.equal(clip.tokenize("a cat", context_length=np.int64(77)), clip.tokenize("a cat"))
    assert torch.equal(clip.tokenize("a cat", truncate=False), clip.tokenize("a cat", truncate=True))
    with pytest.raises(ValueError, match=rf"context_length={MAX_CONTEXT_LENGTH + 1:,} is more"):
        clip.tokenize("a cat", context_length=MAX_CONTEXT_LENGTH + 1)
