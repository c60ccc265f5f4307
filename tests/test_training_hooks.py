"""Training hooks of CLIP: gradient checkpointing and tower locking (additive, off by default)."""

import pytest
import torch
from _checkpoints import example_inputs, tiny_model

from clip.model import CLIP, VisionTransformer


def _fp32(arch):
    return tiny_model(arch).float().train()


def _loss_and_grads(model: CLIP, arch: str):
    images, tokens = example_inputs(arch, n_images=3, n_texts=3)
    logits, _ = model(images, tokens)
    loss = logits.logsumexp(dim=-1).sum()
    model.zero_grad()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def _count_calls(block: torch.nn.Module, calls: list) -> None:
    """Count `block`'s calls through its forward, not a hook: a hook on the text tower would turn
    encode_text's trimming to the longest text off, and the two runs compared would differ."""
    forward = block.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    block.forward = counted


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_grad_checkpointing_keeps_outputs_and_gradients(arch):
    model = _fp32(arch)
    plain_logits, plain_grads = _loss_and_grads(model, arch)
    calls = []
    block = model.transformer.resblocks[0]
    _count_calls(block, calls)
    model.set_grad_checkpointing(True)
    assert model.transformer.grad_checkpointing
    if isinstance(model.visual, VisionTransformer):
        assert model.visual.transformer.grad_checkpointing
    ckpt_logits, ckpt_grads = _loss_and_grads(model, arch)
    assert len(calls) == 2  # the block ran again in backward: its activations were not kept
    # the same kernels on the same inputs in one process: equal bit for bit
    assert torch.equal(plain_logits, ckpt_logits)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        assert torch.equal(plain_grads[name], ckpt_grads[name]), name
    model.set_grad_checkpointing(False)
    calls.clear()
    _loss_and_grads(model, arch)
    assert len(calls) == 1
    del block.forward


def test_grad_checkpointing_is_off_by_default_and_inert_without_grad():
    model = _fp32("vit")
    assert not model.transformer.grad_checkpointing and not model.visual.transformer.grad_checkpointing
    model.set_grad_checkpointing()
    images, tokens = example_inputs("vit")
    with torch.no_grad():
        logits, _ = model(images, tokens)
    model.set_grad_checkpointing(False)
    with torch.no_grad():
        assert torch.equal(logits, model(images, tokens)[0])


@pytest.mark.parametrize("tower", ["image", "text"])
def test_locking_a_tower_freezes_exactly_its_parameters(tower):
    model = _fp32("vit")
    getattr(model, f"lock_{tower}_tower")()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    image_names = {name for name, _ in model.named_parameters() if name.startswith("visual.")}
    text_names = {name for name, _ in model.named_parameters() if name not in image_names} - {"logit_scale"}
    assert frozen == (image_names if tower == "image" else text_names)
    _, grads = _loss_and_grads(model, "vit")
    assert not frozen & grads.keys()
    assert "logit_scale" in grads


def test_freeze_norm_stats_keeps_batchnorm_statistics_through_train():
    model = _fp32("resnet")
    model.lock_image_tower(freeze_norm_stats=True)
    model.train()
    bn = model.visual.bn1
    assert not bn.training and model.training and model.transformer.training
    before = bn.running_mean.clone()
    _loss_and_grads(model, "resnet")
    assert torch.equal(before, bn.running_mean)
    # without freeze_norm_stats, train() puts BatchNorm back in training mode and it updates
    other = _fp32("resnet")
    other.lock_image_tower()
    other.train()
    assert other.visual.bn1.training
    _loss_and_grads(other, "resnet")
    assert not torch.equal(before, other.visual.bn1.running_mean)


def test_grad_checkpointing_under_bf16_autocast_keeps_gradients():
    """The recomputation runs in the same bf16 context as the forward (clip/_bf16.py's fallback included)."""
    model = _fp32("vit")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_logits, plain_grads = _loss_and_grads(model, "vit")
        model.set_grad_checkpointing(True)
        ckpt_logits, ckpt_grads = _loss_and_grads(model, "vit")
    assert torch.equal(plain_logits, ckpt_logits)
    for name in plain_grads:
        assert torch.equal(plain_grads[name], ckpt_grads[name]), name
