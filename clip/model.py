"""The CLIP network: modules, read top to bottom, then `build_model`.

QuickGELU -> LayerNorm -> ResNet blocks -> attention pooling -> ModifiedResNet
-> self-attention -> transformer blocks -> VisionTransformer -> CLIP
-> CLIPDimensions / build_model / convert_weights.

Attribute names are public API: they are the keys of the released checkpoints.
Shape comments: N batch, L sequence length, D width, H heads, C channels.
This module does no I/O.
"""

import contextlib
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import _incidental_names, _text_trim
from ._bf16 import bf16_compute

HEAD_WIDTH = 64  # every attention layer of the release uses 64-dim heads
RESNET_TOTAL_STRIDE = 32  # ModifiedResNet reduces the input resolution 32x before attention pooling
RESNET_EMBED_PER_WIDTH = 32  # final ResNet channels = width * 8 (4 stages) * 4 (bottleneck expansion)
QUICK_GELU_ALPHA = 1.702
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)
SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")  # extra entries of the release


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU the release was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(QUICK_GELU_ALPHA * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input and weight dtypes; returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        ret = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return ret.to(orig_type)


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased stride: an avgpool precedes every strided step."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        self.stride = stride
        if stride > 1 or inplanes != planes * self.expansion:
            # keys downsample.0 (conv) and downsample.1 (bn); the parameter-free pool is "-1"
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu3(out)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    # (L, N, D) -> (N, H, L, D/H)
    seq, batch, width = x.shape
    return x.reshape(seq, batch, num_heads, width // num_heads).permute(1, 2, 0, 3)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    # (N, H, L, D/H) -> (L, N, D)
    batch, heads, seq, head_dim = x.shape
    return x.permute(2, 0, 1, 3).reshape(seq, batch, heads * head_dim)


class AttentionPool2d(nn.Module):
    """Attention pooling: the spatial mean, prepended as a token, queries the feature map."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: Optional[int] = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(start_dim=2).permute(2, 0, 1)  # (N, C, H, W) -> (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW+1, N, C)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        q = _split_heads(self.q_proj(x[:1]), self.num_heads)  # (N, H, 1, C/H)
        k = _split_heads(self.k_proj(x), self.num_heads)  # (N, H, HW+1, C/H)
        v = _split_heads(self.v_proj(x), self.num_heads)
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v))  # (1, N, C)
        return self.c_proj(out).squeeze(0)  # (N, output_dim)


class ModifiedResNet(nn.Module):
    """ResNet with a 3-conv stem, anti-aliased strides and attention pooling instead of avgpool."""

    def __init__(
        self,
        layers: Tuple[int, int, int, int],
        output_dim: int,
        heads: int,
        input_resolution: int = 224,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = input_resolution

        # stem: three 3x3 convs, then an avgpool instead of a maxpool
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width  # mutated by _make_layer while the stages are built
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)

        embed_dim = width * RESNET_EMBED_PER_WIDTH
        self.attnpool = AttentionPool2d(input_resolution // RESNET_TOTAL_STRIDE, embed_dim, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            layers.append(Bottleneck(self._inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)  # (N, width, R/4, R/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, width*32, R/32, R/32)
        return self.attnpool(x)  # (N, output_dim)


class MultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` with a fast path for the self-attention call the blocks make.

    A subclass, not a look-alike: every attribute, parameter, default and `forward` argument is
    torch's own (`isinstance(m, nn.MultiheadAttention)` holds, so adapter libraries find it), and the
    state-dict keys are the release's (`in_proj_weight`, `in_proj_bias`, `out_proj.weight`,
    `out_proj.bias`). The call the blocks make, `attn(x, x, x, need_weights=False, attn_mask=mask)`
    with one tensor as query, key and value, no mask or a 2-D float (additive) mask, and no dropout,
    runs as one packed projection and `scaled_dot_product_attention`: the computation torch does for
    this call, without its argument handling. Every other call (cross-attention, `key_padding_mask`,
    boolean or 3-D masks, `need_weights=True`, `is_causal`, unbatched input, dropout in training,
    `batch_first`) is `nn.MultiheadAttention.forward` itself. Inputs are sequence-first, (L, N, D).
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self._takes_fast_path(query, key, value, key_padding_mask, need_weights, attn_mask, is_causal):
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        seq, batch, width = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)  # (L, N, 3D)
        q, k, v = (_split_heads(t, self.num_heads) for t in qkv.chunk(3, dim=-1))  # 3 x (N, H, L, D/H)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (N, H, L, D/H)
        out = _merge_heads(out).reshape(seq * batch, width)  # (L*N, D), as torch feeds out_proj
        # out_proj's weights are read, not its module called: torch's own forward does the same
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        return out.view(seq, batch, width), None

    def _takes_fast_path(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor],
        need_weights: bool,
        attn_mask: Optional[torch.Tensor],
        is_causal: bool,
    ) -> bool:
        """Whether the call is plain batched self-attention with at most a 2-D additive mask."""
        if key is not query or value is not query or need_weights or key_padding_mask is not None:
            return False
        if is_causal or query.dim() != 3 or self.batch_first or not self._qkv_same_embed_dim:
            return False
        if self.in_proj_bias is None or self.bias_k is not None or self.add_zero_attn:
            return False
        if self.training and self.dropout > 0.0:
            return False
        if attn_mask is None:
            return True
        if attn_mask.dim() != 2 or attn_mask.dtype != query.dtype:
            return False
        if torch.jit.is_tracing():  # sizes are traced values: comparing them would bake in a constant
            return True
        seq = query.shape[0]
        return tuple(attn_mask.shape) == (seq, seq)


MultiheadSelfAttention = MultiheadAttention  # the name of earlier versions of this package


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, d_model: int, n_head: int, attn_mask: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.attn = MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_2 = LayerNorm(d_model)
        self.register_buffer("attn_mask", attn_mask, persistent=False)  # not a checkpoint key

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention of `x` (L, N, D) under `attn_mask`, cut to the sequence length."""
        mask = self.attn_mask
        if mask is not None:
            seq = x.shape[0]
            mask = mask[..., :seq, :seq]  # the causal mask is built for the full context
            if mask.is_floating_point():  # additive: in the input's dtype, as the original casts it
                mask = mask.to(dtype=x.dtype, device=x.device)
            else:  # boolean, torch's convention (True = may not attend): passed on as is
                mask = mask.to(device=x.device)
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


def _recompute_in_bf16_compute(x: torch.Tensor):
    """Checkpoint contexts: the recomputation runs in the `bf16_compute` the forward ran in."""
    recompute = bf16_compute(x.device, x.dtype)  # decided now, under the forward's autocast state
    return lambda: (contextlib.nullcontext(), recompute)


class Transformer(nn.Module):
    """A stack of residual attention blocks over sequence-first input (L, N, D).

    With `grad_checkpointing` set (see `CLIP.set_grad_checkpointing`), each block's activations
    are recomputed in the backward pass instead of kept: same outputs and gradients, less memory.
    """

    grad_checkpointing: bool = False  # off by default; an instance attribute once set

    def __init__(self, width: int, layers: int, heads: int, attn_mask: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_tracing():
            for block in self.resblocks:
                x = torch.utils.checkpoint.checkpoint(
                    block, x, use_reentrant=False, context_fn=_recompute_in_bf16_compute(x)
                )
            return x
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """ViT image tower: patch embedding, class token, pre/post LayerNorm, projection."""

    def __init__(
        self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        grid = input_resolution // patch_size
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (N, D, grid, grid)
        x = x.flatten(start_dim=2).permute(0, 2, 1)  # (N, grid**2, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, grid**2 + 1, D)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # through (L, N, D) and back
        x = self.ln_post(x[:, 0, :])  # (N, D): the class token
        if self.proj is not None:
            x = x @ self.proj  # (N, output_dim)
        return x


def _flag(method: str, name: str, value: object) -> bool:
    """A training hook's flag: a bool only, as torch's `requires_grad_` takes ('no' and 0 are not flags)."""
    if not isinstance(value, bool):
        raise TypeError(f"{method}: {name} must be a bool (True or False), got {value!r}")
    return value


def _tracing() -> bool:
    """Whether torch.jit.trace, torch.compile or torch.export is tracing: value checks must not run."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
    return torch.jit.is_tracing() or is_compiling()


class CLIP(nn.Module):
    """The two towers and the learned temperature.

    `trim_text_padding` (default True; set it on a model, or on `CLIP` for every model) lets
    `encode_text` skip the positions after the batch's last end-of-text token, which cannot change
    any output; see `encode_text` for when it applies. False computes all `context_length` positions.
    """

    trim_text_padding: bool = True

    def __init__(
        self,
        embed_dim: int,
        # vision
        image_resolution: int,
        vision_layers: Union[Tuple[int, int, int, int], int],
        vision_width: int,
        vision_patch_size: Optional[int],
        # text
        context_length: int,
        vocab_size: int,
        transformer_width: int,
        transformer_heads: int,
        transformer_layers: int,
    ) -> None:
        super().__init__()
        self.context_length = context_length

        if isinstance(vision_layers, (tuple, list)):
            vision_heads = vision_width * RESNET_EMBED_PER_WIDTH // HEAD_WIDTH
            self.visual: nn.Module = ModifiedResNet(
                layers=tuple(vision_layers),
                output_dim=embed_dim,
                heads=vision_heads,
                input_resolution=image_resolution,
                width=vision_width,
            )
        else:
            if vision_patch_size is None:
                raise ValueError("a ViT image tower needs vision_patch_size")
            vision_heads = vision_width // HEAD_WIDTH
            self.visual = VisionTransformer(
                input_resolution=image_resolution,
                patch_size=vision_patch_size,
                width=vision_width,
                layers=vision_layers,
                heads=vision_heads,
                output_dim=embed_dim,
            )

        self.transformer = Transformer(
            width=transformer_width,
            layers=transformer_layers,
            heads=transformer_heads,
            attn_mask=self.build_attention_mask(),
        )
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * INITIAL_LOGIT_SCALE)

        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """The release's initialisation (used for training from scratch, skipped when loading)."""
        if self.token_embedding.weight.is_meta:  # built by build_model: no values to initialise
            return
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(proj.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, param in stage.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)  # each residual branch starts as the identity

        width, layers = self.transformer.width, self.transformer.layers
        proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
        attn_std = width**-0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

        nn.init.normal_(self.text_projection, std=width**-0.5)

    def build_attention_mask(self) -> torch.Tensor:
        """Additive causal mask (context_length, context_length): -inf above the diagonal."""
        mask = torch.empty(self.context_length, self.context_length)
        mask.fill_(float("-inf"))
        mask.triu_(1)
        return mask

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    # Training hooks: additive, off by default (see clip.train)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the transformer blocks' activations in backward (ViT and text towers).

        Outputs and gradients are unchanged; memory falls at the cost of a second forward pass
        through the blocks. ResNet image towers are left as they are: recomputing a block would
        update BatchNorm's running statistics twice. `enable` must be a bool (TypeError otherwise).
        """
        enable = _flag("set_grad_checkpointing", "enable", enable)
        towers = [self.transformer] + (
            [self.visual.transformer] if isinstance(self.visual, VisionTransformer) else []
        )
        for tower in towers:
            tower.grad_checkpointing = enable

    def _tower_modules(self, tower: str) -> Tuple[nn.Module, ...]:
        if tower == "image":
            return (self.visual,)
        return (self.token_embedding, self.transformer, self.ln_final)

    def _tower_parameters(self, tower: str) -> Tuple[nn.Parameter, ...]:
        params = tuple(p for module in self._tower_modules(tower) for p in module.parameters())
        return params + ((self.positional_embedding, self.text_projection) if tower == "text" else ())

    def _lock(self, tower: str, freeze_norm_stats: bool) -> None:
        freeze_norm_stats = _flag(f"lock_{tower}_tower", "freeze_norm_stats", freeze_norm_stats)
        for param in self._tower_parameters(tower):
            param.requires_grad_(False)
        if freeze_norm_stats:
            norms = [
                m
                for module in self._tower_modules(tower)
                for m in module.modules()
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm))
            ]
            self._frozen_norms = getattr(self, "_frozen_norms", []) + norms
            for norm in norms:
                norm.eval()

    def lock_image_tower(self, freeze_norm_stats: bool = False) -> None:
        """Freeze every parameter of the image tower (`visual`); training leaves it as it is.

        With `freeze_norm_stats`, its normalisation layers also stay in eval mode through
        `model.train()`: BatchNorm (ResNet towers) keeps using and no longer updates its running
        statistics.
        """
        self._lock("image", freeze_norm_stats)

    def lock_text_tower(self, freeze_norm_stats: bool = False) -> None:
        """Freeze the text tower: token and positional embeddings, transformer, ln_final, projection.

        `freeze_norm_stats` keeps its LayerNorms in eval mode through `model.train()`.
        """
        self._lock("text", freeze_norm_stats)

    def train(self, mode: bool = True) -> "CLIP":
        super().train(mode)
        for norm in getattr(self, "_frozen_norms", ()):
            norm.eval()
        return self

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) preprocessed images -> (N, embed_dim) unnormalised image features."""
        res = self.visual.input_resolution
        if not isinstance(image, torch.Tensor):
            raise TypeError(
                f"encode_image expects a torch.Tensor of preprocessed images; got {type(image).__name__}. "
                "Use the `preprocess` returned by clip.load and torch.stack the results."
            )
        if (
            not torch.jit.is_tracing()
            and (  # traced shapes are tensors: checked once, before tracing
                image.dim() != 4 or image.shape[1] != 3 or tuple(image.shape[2:]) != (res, res)
            )
        ):
            raise ValueError(
                f"encode_image expects a batch of preprocessed images of shape (N, 3, {res}, {res}); "
                f"got {tuple(image.shape)}. Use the `preprocess` returned by clip.load and stack the results."
            )
        if not image.is_floating_point():
            warnings.warn(
                f"encode_image got a {image.dtype} tensor: it looks unpreprocessed. Pass images through "
                "the `preprocess` returned by clip.load (float, normalised) first.",
                stacklevel=2,
            )
        with bf16_compute(image.device, self.dtype, self.visual, image):  # bf16: the faster kernels
            return self.visual(image.type(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids from clip.tokenize -> (N, embed_dim) unnormalised text features.

        Ids outside [0, vocab_size) raise a ValueError on the CPU. On a CUDA device the range is
        checked without waiting for the GPU (`torch._assert_async`): a bad id fails as a device-side
        assertion, reported by CUDA at a later call, as an out-of-range index fails in torch's own
        embedding kernels; on other devices the ids are not checked here.

        Only the positions up to the batch's last end-of-text token are computed (the features are
        the same to float rounding: the tower is causal and reads each text at its end-of-text
        token) when all of these hold: `trim_text_padding` is True, the ids are on the CPU, nothing
        traces, scripts, compiles or exports the call, no forward or backward hook is registered on
        the text tower (`token_embedding`, `transformer` and below, `ln_final`) or globally, and
        every block's `attn_mask` is the causal mask (or hides at least as much). Otherwise every
        position is computed, as in the release.
        """
        if not isinstance(text, torch.Tensor):
            raise TypeError(
                "encode_text expects a torch.Tensor of token ids from clip.tokenize; "
                f"got {type(text).__name__}."
            )
        if (
            text.dim() != 2
            or not (torch.jit.is_tracing() or 0 < text.shape[1] <= self.context_length)
            or text.is_floating_point()
            or text.is_complex()
            or text.dtype == torch.bool
        ):
            raise ValueError(
                "encode_text expects integer token ids of shape (N, L) with "
                f"1 <= L <= {self.context_length}, "
                f"as clip.tokenize returns; got {text.dtype} of shape {tuple(text.shape)}."
            )
        if not _tracing() and text.numel():
            self._check_token_range(text)
        eot = text.argmax(dim=-1)  # (N,) the end-of-text token, the largest id in each sequence
        if self._may_trim_text(text):
            text = text[:, : int(eot.max()) + 1]  # later positions change no output: not computed
        with bf16_compute(text.device, self.dtype, self.transformer, text):  # bf16: the faster kernels
            seq = text.shape[1]
            x = self.token_embedding(text).type(self.dtype)  # (N, L, D)
            x = x + self.positional_embedding[:seq].type(self.dtype)
            x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # through (L, N, D) and back
            x = self.ln_final(x).type(self.dtype)
            # features at the end-of-text token; the row index is made on x's device, so that indexing
            # a GPU tensor copies nothing from the host
            rows = torch.arange(x.shape[0], device=x.device)
            x = x[rows, eot] @ self.text_projection  # (N, embed_dim)
        return x

    def _may_trim_text(self, text: torch.Tensor) -> bool:
        """Whether encode_text may leave out the positions after the last end-of-text token."""
        if _text_trim.graph_capture():  # first: under tracing, sizes are traced values
            return False
        if not self.trim_text_padding or text.device.type != "cpu" or text.numel() == 0:
            return False
        transformer = self.transformer
        if not isinstance(transformer, Transformer):
            return False
        seq = text.shape[1]
        for block in transformer.resblocks:
            if not isinstance(block, ResidualAttentionBlock):
                return False
            buffers = block._buffers  # read directly: nn.Module.__getattr__ costs a microsecond a block
            mask = buffers["attn_mask"] if "attn_mask" in buffers else getattr(block, "attn_mask", None)
            if not _text_trim.blocks_later_positions(mask) or min(mask.shape) < seq:
                return False  # a mask shorter than the text: the release's path fails, and so must this
        return not _text_trim.hooked((self.token_embedding, transformer, self.ln_final))

    def _check_token_range(self, text: torch.Tensor) -> None:
        """Ids in [0, vocab_size): a clear error on the CPU, a non-blocking assertion on CUDA."""
        if text.device.type == "cpu":
            low, high = int(text.min()), int(text.max())
            if low < 0 or high >= self.vocab_size:
                raise ValueError(
                    f"token ids must lie in [0, {self.vocab_size}); got values from {low} to {high}. "
                    "Use clip.tokenize to make them."
                )
        elif text.device.type == "cuda":  # int(...) would wait for the GPU: assert on the device instead
            in_range = ((text >= 0) & (text < self.vocab_size)).all()
            torch._assert_async(in_range, f"token ids must lie in [0, {self.vocab_size}); use clip.tokenize")

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return (logits_per_image (N_img, N_txt), logits_per_text (N_txt, N_img))."""
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logit_scale = self.logit_scale.exp()
        logits_per_image = logit_scale * image_features @ text_features.t()
        logits_per_text = logits_per_image.t()
        return logits_per_image, logits_per_text


# the attention tensors the release's convert_weights casts (those that are not None)
_MHA_FP16_TENSORS = (
    "in_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
)


def convert_weights(model: nn.Module) -> None:
    """Cast the weights the release stores in fp16 to fp16, in place; norms and embeddings stay fp32."""

    def _to_fp16(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.half()
            if module.bias is not None:
                module.bias.data = module.bias.data.half()
        if isinstance(module, nn.MultiheadAttention):
            for name in _MHA_FP16_TENSORS:
                tensor = getattr(module, name, None)
                if tensor is not None:
                    tensor.data = tensor.data.half()
        for name in ("text_projection", "proj"):
            attr = getattr(module, name, None)
            if isinstance(attr, torch.Tensor):
                attr.data = attr.data.half()

    model.apply(_to_fp16)


@dataclass(frozen=True)
class CLIPDimensions:
    """Every hyperparameter of a CLIP, as inferred from a state dict."""

    embed_dim: int
    image_resolution: int
    vision_layers: Union[Tuple[int, int, int, int], int]
    vision_width: int
    vision_patch_size: Optional[int]
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> "CLIPDimensions":
        """Infer the dimensions from the keys and shapes of a release-layout state dict."""
        vit = "visual.proj" in state_dict
        required = ["text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight"]
        if vit:
            required += ["visual.conv1.weight", "visual.positional_embedding"]
        else:
            required += ["visual.layer1.0.conv1.weight", "visual.attnpool.positional_embedding"]
        missing = [key for key in required if key not in state_dict]
        if missing:
            raise ValueError(
                f"not a CLIP state dict: missing keys {missing}. Expected the layout of OpenAI's released "
                "checkpoints (keys such as 'visual.conv1.weight', 'token_embedding.weight')."
            )

        def blocks(prefix: str) -> int:
            return len({k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)})

        if vit:
            conv = state_dict["visual.conv1.weight"]  # (width, 3, patch, patch)
            vision_width, vision_patch_size = conv.shape[0], conv.shape[-1]
            vision_layers: Union[Tuple[int, int, int, int], int] = blocks("visual.transformer.resblocks.")
            grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            image_resolution = vision_patch_size * grid
        else:
            vision_layers = tuple(blocks(f"visual.layer{stage}.") for stage in (1, 2, 3, 4))  # type: ignore
            vision_width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
            vision_patch_size = None
            grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            image_resolution = grid * RESNET_TOTAL_STRIDE

        transformer_width = state_dict["ln_final.weight"].shape[0]
        return cls(
            embed_dim=state_dict["text_projection"].shape[1],
            image_resolution=image_resolution,
            vision_layers=vision_layers,
            vision_width=vision_width,
            vision_patch_size=vision_patch_size,
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
            transformer_width=transformer_width,
            transformer_heads=transformer_width // HEAD_WIDTH,
            transformer_layers=blocks("transformer.resblocks."),
        )


def _listing(label: str, items: list, limit: int = 10) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{label} {items[:limit]}{more}"


def _check_keys_and_shapes(expected: Dict[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{key}: expected {tuple(expected[key].shape)}, got {tuple(given[key].shape)}"
        for key in expected
        if key in given and tuple(expected[key].shape) != tuple(given[key].shape)
    ]
    problems = [
        _listing(label, items)
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong),
        )
        if items
    ]
    if problems:
        raise ValueError(
            "state dict does not fit a CLIP of the release's layout: " + "; ".join(problems) + ". "
            "Check that the file is an OpenAI CLIP checkpoint (not another architecture or a fine-tune "
            "with renamed keys)."
        )


def build_model(
    state_dict: Mapping[str, torch.Tensor], *, share_memory: bool = False, release_precision: bool = True
) -> CLIP:
    """Build an eval-mode CLIP from a release-layout state dict, converted like the release.

    Every dimension is inferred from the state dict; the three scalar entries are ignored; the
    caller's dict is never modified. Weights that `convert_weights` casts are fp16, the rest fp32.
    No random initialisation is done: the model is built on the meta device and the weights are
    assigned. `share_memory=True` (keyword-only) lets the model keep tensors of the given dict
    whose dtype already fits instead of copying them; only pass it for a dict you own.
    `release_precision=False` (keyword-only) skips the release's fp16 conversion: every weight is
    kept in fp32, so an fp32 checkpoint (a fine-tune) keeps its exact values.

    Raises ValueError naming the offending keys when keys are missing or unexpected, or shapes fit
    no CLIP.
    """
    weights = {k: v for k, v in state_dict.items() if k not in SCALAR_KEYS}
    not_tensors = sorted(k for k, v in weights.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"state dict entries must be tensors; these are not: {not_tensors[:10]}")
    dims = CLIPDimensions.from_state_dict(weights)
    with torch.device("meta"):
        model = CLIP(**vars(dims))
        if release_precision:
            convert_weights(model)
    expected = model.state_dict()
    _check_keys_and_shapes(expected, weights)

    assigned = {}
    for key, target in expected.items():
        tensor = weights[key]
        converted = tensor.to(dtype=target.dtype)
        if converted is tensor and not share_memory:
            converted = tensor.clone()
        assigned[key] = converted
    model.load_state_dict(assigned, strict=True, assign=True)

    # the causal mask is not a checkpoint key: build it for real on the weights' device
    device = model.token_embedding.weight.device
    mask = torch.full((dims.context_length, dims.context_length), float("-inf"), device=device).triu_(1)
    for block in model.transformer.resblocks:
        block.attn_mask = mask
    return model.eval()


__all__ = [
    "QuickGELU",
    "LayerNorm",
    "Bottleneck",
    "AttentionPool2d",
    "ModifiedResNet",
    "MultiheadAttention",
    "MultiheadSelfAttention",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "CLIP",
    "CLIPDimensions",
    "build_model",
    "convert_weights",
]


__getattr__ = _incidental_names.module_getattr(__name__, _incidental_names.CLIP_MODEL)  # the original's `np`
