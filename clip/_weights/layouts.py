"""Key layouts of the CLIP weights other projects save, converted to and from the release's layout.

* open_clip stores the OpenAI architectures under the release's own key names; its training
  checkpoints wrap them as ``{"epoch": ..., "state_dict": {"module.visual...": ...}}`` (unwrapped by
  :mod:`clip._weights.formats`).
* transformers' ``CLIPModel`` (ViT models only) renames every key, keeps the query, key and value
  projections of attention apart, and stores the two output projections transposed (as
  ``nn.Linear`` weights). :func:`release_from_hf` and :func:`hf_from_release` convert exactly (pure
  re-arrangement: concatenation, transposition and renaming; no arithmetic on values).
"""

import re
from typing import Any, Dict, Mapping, Tuple

import torch

from ..model import HEAD_WIDTH, CLIPDimensions

__all__ = ["HF_PREFIXES", "is_hf_layout", "release_from_hf", "hf_from_release", "hf_config"]

HF_PREFIXES = ("text_model.", "vision_model.")
HF_DROPPED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
HF_ACTIVATION = "quick_gelu"  # the only activation the release's model has
HF_LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, which the release uses
HF_LEGACY_EOS_TOKEN_ID = 2  # transformers then pools at argmax(input_ids), as the release does
HF_BOS_TOKEN_ID = 0  # the values transformers' own CLIP configurations carry
HF_PAD_TOKEN_ID = 1
HF_LOGIT_SCALE_INIT = 2.6592  # ln(1 / 0.07): the release's initial temperature
MLP_RATIO = 4  # hidden width of the release's MLP blocks over the model width

# (transformers name, release name) for the parts of one encoder layer
_LAYER_PARTS: Tuple[Tuple[str, str], ...] = (
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)
# (transformers name, release name) of everything outside the layers (projections handled apart)
_TOP_LEVEL: Tuple[Tuple[str, str], ...] = (
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.weight", "ln_final.weight"),
    ("text_model.final_layer_norm.bias", "ln_final.bias"),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),  # transformers' spelling
    ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
    ("vision_model.post_layernorm.weight", "visual.ln_post.weight"),
    ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
    ("logit_scale", "logit_scale"),
)
_TRANSPOSED: Tuple[Tuple[str, str], ...] = (
    ("text_projection.weight", "text_projection"),
    ("visual_projection.weight", "visual.proj"),
)
_TOWERS: Tuple[Tuple[str, str], ...] = (
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
)
_QKV = ("q_proj", "k_proj", "v_proj")
_LAYER_KEY_RE = re.compile(r"^(\d+)\.(.+)$")


def is_hf_layout(state: Mapping[str, Any]) -> bool:
    """True if the keys are those of a transformers ``CLIPModel``."""
    return any(key.startswith(HF_PREFIXES) for key in state)


def release_from_hf(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A transformers ``CLIPModel`` state dict in the release's layout. Keys it cannot place are
    kept under their own names, so that building the model reports them as unexpected."""
    out: Dict[str, torch.Tensor] = {}
    used = set(HF_DROPPED)
    for hf, ours in _TOP_LEVEL:
        if hf in state:
            out[ours] = state[hf]
            used.add(hf)
    for hf, ours in _TRANSPOSED:
        if hf in state:
            out[ours] = state[hf].t().contiguous()  # nn.Linear: (out, in); the release: x @ proj
            used.add(hf)
    for hf_prefix, prefix in _TOWERS:
        qkv: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            match = _LAYER_KEY_RE.match(key[len(hf_prefix) :]) if key.startswith(hf_prefix) else None
            if match is None:
                continue
            index, rest = match.groups()
            for hf_part, part in _LAYER_PARTS:
                if rest.startswith(hf_part):
                    out[f"{prefix}{index}.{part}{rest[len(hf_part) :]}"] = value
                    used.add(key)
            projection, _, kind = rest.removeprefix("self_attn.").partition(".")
            if rest.startswith("self_attn.") and projection in _QKV and kind in ("weight", "bias"):
                qkv.setdefault((index, kind), {})[projection] = value
                used.add(key)
        for (index, kind), parts in qkv.items():
            if set(parts) != set(_QKV):  # incomplete: leave the pieces for the error message
                for projection, value in parts.items():
                    out[f"{hf_prefix}{index}.self_attn.{projection}.{kind}"] = value
                continue
            # the release's in_proj packs query, key and value along the output dimension
            out[f"{prefix}{index}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    for key, value in state.items():
        if key not in used:
            out[key] = value
    return out


def hf_from_release(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A release-layout ViT state dict as transformers ``CLIPModel`` weights (contiguous tensors)."""
    if "visual.proj" not in state:
        raise ValueError(
            "transformers' CLIPModel has no ResNet image tower: only the ViT models can be written in "
            "its layout. Write a release-layout .safetensors file instead."
        )
    out: Dict[str, torch.Tensor] = {}
    for hf, ours in _TOP_LEVEL:
        out[hf] = state[ours]
    for hf, ours in _TRANSPOSED:
        out[hf] = state[ours].t()
    for hf_prefix, prefix in _TOWERS:
        for key, value in state.items():
            match = _LAYER_KEY_RE.match(key[len(prefix) :]) if key.startswith(prefix) else None
            if match is None:
                continue
            index, rest = match.groups()
            for hf_part, part in _LAYER_PARTS:
                if rest.startswith(part):
                    out[f"{hf_prefix}{index}.{hf_part}{rest[len(part) :]}"] = value
            for kind in ("weight", "bias"):
                if rest == f"attn.in_proj_{kind}":
                    for projection, chunk in zip(_QKV, value.chunk(len(_QKV), dim=0)):
                        out[f"{hf_prefix}{index}.self_attn.{projection}.{kind}"] = chunk
    return {key: value.contiguous() for key, value in out.items()}


def hf_config(dims: CLIPDimensions) -> Dict[str, Any]:
    """The ``config.json`` of a transformers ``CLIPModel`` with the dimensions of a release ViT."""
    if not isinstance(dims.vision_layers, int) or dims.vision_patch_size is None:
        raise ValueError("transformers' CLIPModel has no ResNet image tower: only ViT models convert")
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": dims.embed_dim,
        "logit_scale_init_value": HF_LOGIT_SCALE_INIT,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": dims.vocab_size,
            "hidden_size": dims.transformer_width,
            "intermediate_size": MLP_RATIO * dims.transformer_width,
            "num_hidden_layers": dims.transformer_layers,
            "num_attention_heads": dims.transformer_heads,
            "max_position_embeddings": dims.context_length,
            "projection_dim": dims.embed_dim,
            "hidden_act": HF_ACTIVATION,
            "layer_norm_eps": HF_LAYER_NORM_EPS,
            "bos_token_id": HF_BOS_TOKEN_ID,
            "eos_token_id": HF_LEGACY_EOS_TOKEN_ID,
            "pad_token_id": HF_PAD_TOKEN_ID,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": dims.vision_width,
            "intermediate_size": MLP_RATIO * dims.vision_width,
            "num_hidden_layers": dims.vision_layers,
            "num_attention_heads": dims.vision_width // HEAD_WIDTH,
            "image_size": dims.image_resolution,
            "patch_size": dims.vision_patch_size,
            "num_channels": 3,
            "projection_dim": dims.embed_dim,
            "hidden_act": HF_ACTIVATION,
            "layer_norm_eps": HF_LAYER_NORM_EPS,
        },
    }
