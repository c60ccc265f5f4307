"""Differential tests against the projects whose files clip.load reads: random models built by
transformers' and open_clip's own constructors, saved in their own formats, loaded with clip.load,
and compared with their own forward passes.

Tolerances: the other model's weights are first rounded to fp16 values (the release stores its
weights in fp16 and `clip.load` builds the release's mixed precision, so the two models then hold
identical values). What is left is fp32 arithmetic of 2-layer towers in another summation order
(other attention and matmul kernels): relative differences of a few float32 eps per layer, checked
with rtol 1e-5 / atol 1e-5 on features of magnitude ~1 and atol 1e-4 on logits of magnitude ~1e1.
"""

import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import torch
from _checkpoints import TINY_DIMS, example_inputs
from _peers import import_transformers

import clip

FEATURE_TOL = dict(rtol=1e-5, atol=1e-5)
LOGIT_TOL = dict(rtol=1e-5, atol=1e-4)


def _round_to_fp16_values(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point():
                parameter.copy_(parameter.half().float())


def _ours(path: Path, arch: str) -> Tuple[torch.Tensor, ...]:
    model, _ = clip.load(str(path), device="cpu")
    images, tokens = example_inputs(arch)
    with torch.no_grad():
        return (model.encode_image(images), model.encode_text(tokens), model(images, tokens)[0])


# ----------------------------------------------------------------------------------------------
# transformers


def _hf_config(transformers: Any) -> Any:
    dims = TINY_DIMS["vit"]
    text = dict(
        vocab_size=dims["vocab_size"],
        hidden_size=dims["transformer_width"],
        intermediate_size=4 * dims["transformer_width"],
        num_hidden_layers=dims["transformer_layers"],
        num_attention_heads=dims["transformer_width"] // 64,
        max_position_embeddings=dims["context_length"],
        hidden_act="quick_gelu",
    )
    vision = dict(
        hidden_size=dims["vision_width"],
        intermediate_size=4 * dims["vision_width"],
        num_hidden_layers=dims["vision_layers"],
        num_attention_heads=dims["vision_width"] // 64,
        image_size=dims["image_resolution"],
        patch_size=dims["vision_patch_size"],
        hidden_act="quick_gelu",
    )
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=dims["embed_dim"])


@pytest.mark.parametrize("layout", ["directory", "model.safetensors", "pytorch_model.bin"])
def test_transformers_clip_model(tmp_path: Path, layout: str) -> None:
    transformers = import_transformers()
    torch.manual_seed(0)
    hf = transformers.CLIPModel(_hf_config(transformers)).eval()
    _round_to_fp16_values(hf)
    folder = tmp_path / "hf"
    hf.save_pretrained(str(folder), safe_serialization=layout != "pytorch_model.bin")
    path = folder if layout in ("directory", "pytorch_model.bin") else folder / "model.safetensors"
    image_features, text_features, logits = _ours(path, "vit")

    images, tokens = example_inputs("vit")
    with torch.no_grad():
        out = hf(input_ids=tokens, pixel_values=images)
    # transformers returns normalised embeddings; ours are the raw projections
    torch.testing.assert_close(
        image_features / image_features.norm(dim=-1, keepdim=True), out.image_embeds, **FEATURE_TOL
    )
    torch.testing.assert_close(
        text_features / text_features.norm(dim=-1, keepdim=True), out.text_embeds, **FEATURE_TOL
    )
    torch.testing.assert_close(logits, out.logits_per_image, **LOGIT_TOL)


# ----------------------------------------------------------------------------------------------
# open_clip


def _open_clip_model(open_clip: Any, arch: str) -> torch.nn.Module:
    dims = TINY_DIMS[arch]
    vision: Dict[str, Any] = dict(image_size=dims["image_resolution"], width=dims["vision_width"])
    if arch == "vit":
        name = "ViT-B-32-quickgelu"
        vision.update(layers=dims["vision_layers"], patch_size=dims["vision_patch_size"])
    else:
        name = "RN50-quickgelu"
        vision.update(layers=list(dims["vision_layers"]), patch_size=None)
    text = dict(
        context_length=dims["context_length"],
        vocab_size=dims["vocab_size"],
        width=dims["transformer_width"],
        heads=dims["transformer_heads"],
        layers=dims["transformer_layers"],
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(
            name, pretrained=None, embed_dim=dims["embed_dim"], vision_cfg=vision, text_cfg=text
        )
    model.eval()
    with torch.no_grad():  # random BatchNorm statistics, so that they are exercised too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn_like(module.running_mean) * 0.1)
                module.running_var.copy_(torch.rand_like(module.running_var) + 0.5)
                module.running_mean.copy_(module.running_mean.half().float())
                module.running_var.copy_(module.running_var.half().float())
    _round_to_fp16_values(model)
    return model


def _save_open_clip(model: torch.nn.Module, folder: Path, fmt: str) -> Path:
    state = model.state_dict()
    if fmt == "open_clip_model.safetensors":  # what open_clip's save_for_hf writes for the hub
        from safetensors.torch import save_file

        save_file(state, str(folder / fmt))
        return folder / fmt
    if fmt == "open_clip_pytorch_model.bin":
        torch.save(state, folder / fmt)
        return folder / fmt
    # a training checkpoint as open_clip's training loop writes it (DistributedDataParallel keys)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    checkpoint = {
        "epoch": 3,
        "name": "tiny-run",
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer": optimizer.state_dict(),
    }
    torch.save(checkpoint, folder / "epoch_3.pt")
    return folder / "epoch_3.pt"


@pytest.mark.parametrize("arch", ["vit", "resnet"])
@pytest.mark.parametrize(
    "fmt", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin", "training checkpoint"]
)
def test_open_clip_model(tmp_path: Path, arch: str, fmt: str) -> None:
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is a test extra (the oracle here)")
    model = _open_clip_model(open_clip, arch)
    image_features, text_features, logits = _ours(_save_open_clip(model, tmp_path, fmt), arch)

    images, tokens = example_inputs(arch)
    with torch.no_grad():
        theirs_image = model.encode_image(images)
        theirs_text = model.encode_text(tokens)
        scale = model.logit_scale.exp()
        theirs_logits = scale * (
            torch.nn.functional.normalize(theirs_image, dim=-1)
            @ torch.nn.functional.normalize(theirs_text, dim=-1).t()
        )
    torch.testing.assert_close(image_features, theirs_image, **FEATURE_TOL)
    torch.testing.assert_close(text_features, theirs_text, **FEATURE_TOL)
    torch.testing.assert_close(logits, theirs_logits, **LOGIT_TOL)
