"""Where the model looks: relevance of image patches and text tokens, and pictures of it.

>>> import clip
>>> from clip import explain
>>> model, preprocess = clip.load("ViT-B/32")
>>> texts = clip.tokenize(["a diagram", "a dog"])                       # (2, 77)
>>> images = preprocess(pil_image).unsqueeze(0).expand(len(texts), -1, -1, -1)   # one image, two texts
>>> rel = explain.relevance(model, images, texts)
>>> rel.image.shape, rel.text.shape                                    # (2, 7, 7), (2, 77)
>>> explain.overlay(pil_image, rel.image[0]).save("diagram.png")

`relevance` explains pairs (image n, text n) through the objective ``sum_n logits_per_image[n, n]``:

* transformer towers (the text tower, ViT image towers): the gradient-weighted attention rollout of
  Chefer, Gur and Wolf ("Generic Attention-model Explainability for Interpreting Bi-Modal and
  Encoder-Decoder Transformers", ICCV 2021), as their CLIP notebook computes it. Starting from the
  identity, each block from the start layer on adds ``mean_heads(clamp(grad * probs, min=0)) @ R`` to
  ``R``, where ``probs`` are the block's softmax attention probabilities (the text tower's under its
  causal mask) and ``grad`` their gradient. The image map is the class token's row over the patches,
  ``R[:, 0, 1:]``; the text map is the row of each text's end-of-text token;
* ModifiedResNet image towers: Grad-CAM over ``visual.layer4``'s output,
  ``relu(sum_c mean_hw(dObjective/dA)_c * A_c)``.

The model is used as `clip.load` returns it: its attention is fused (no probabilities are made), so
this module runs the blocks' own weights with the probabilities written out, inside the call only.
No hook is registered, no parameter's ``.grad`` is touched (gradients are taken with
``torch.autograd.grad`` of the probabilities alone) and every module's train/eval flag is put back.
"""

import contextlib
import math
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._bf16 import bf16_compute
from .model import CLIP, ModifiedResNet, ResidualAttentionBlock, VisionTransformer

__all__ = ["Relevance", "relevance", "overlay", "figure", "token_pieces", "COLORMAPS"]

# matplotlib's "jet" (its segment data, as the colour map is defined): (position, value) per channel
_JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
_GRAY_SEGMENTS = {channel: ((0.0, 0.0), (1.0, 1.0)) for channel in ("red", "green", "blue")}
COLORMAPS = ("jet", "gray")  # built in; any other name is looked up in matplotlib when it is installed
LUT_SIZE = 256  # entries of a colour table, as matplotlib samples its maps
FIGURE_PANEL = 224  # side of each picture in `figure`, in pixels
FIGURE_MARGIN = 8
FIGURE_FONT_SIZE = 13
TOKEN_SHADE = (255, 96, 32)  # the colour of the most relevant token in `figure`; others fade to white


class Relevance(NamedTuple):
    """Relevance maps for pairs (image n, text n).

    image: (N, g, g) float32: a ViT's patch grid (g = resolution / patch size), or for a ResNet
        tower the grid of `visual.layer4` (g = resolution / 32).
    text: (N, L) float32, one value per token position of `texts` (L = 77 for `clip.tokenize`):
        the row of the text's end-of-text token; zero after it (the causal mask).
    """

    image: torch.Tensor
    text: torch.Tensor


def relevance(
    model: CLIP,
    images: torch.Tensor,
    texts: torch.Tensor,
    *,
    start_layer: Optional[int] = None,
    start_layer_text: Optional[int] = None,
) -> Relevance:
    """Relevance of each image's patches and each text's tokens for the pairs (image n, text n).

    Args:
        model: a `clip.model.CLIP` as `clip.load` returns it (jit=False, not quantised), any dtype
            and device.
        images: (N, 3, R, R) preprocessed images (`preprocess`, stacked). To explain one image
            against several texts, repeat it: ``image.expand(len(texts), -1, -1, -1)``.
        texts: (N, L) token ids from `clip.tokenize`, one text per image. The text tower always
            runs the model's full context (shorter rows are padded with zeros, as tokenize pads).
        start_layer: the first block (0-based; negative counts from the end) of a ViT image tower
            that contributes to the rollout. Default: the last block only (the Chefer et al.
            notebook's setting for 12-block towers). Must be None for ResNet image towers.
        start_layer_text: the same for the text tower.

    Returns:
        `Relevance(image, text)`, float32, on the model's device. Inputs are moved there.

    The model's modules compute as in eval mode during the call (dropout off, BatchNorm on its
    running statistics) and get their own train/eval flags back afterwards; no hook, gradient or
    other state is left behind. Raises TypeError for a model that is not a CLIP, ValueError for a
    TorchScript or int8 model, mismatched batch sizes, a start layer out of range, or inputs of the
    wrong shape or type; RuntimeError inside `torch.inference_mode()` (gradients are needed).
    """
    _check_model(model)
    images, texts = _check_inputs(model, images, texts)
    visual = model.visual
    vit = isinstance(visual, VisionTransformer)
    if vit:
        image_start = _start_index(start_layer, len(visual.transformer.resblocks), "start_layer", "image")
    elif start_layer is not None:
        raise ValueError(
            f"start_layer={start_layer!r} applies to ViT image towers only: this model's image tower is "
            "a ModifiedResNet, explained by Grad-CAM on visual.layer4. Leave start_layer as None "
            "(start_layer_text still applies to the text tower)"
        )
    text_start = _start_index(start_layer_text, len(model.transformer.resblocks), "start_layer_text", "text")
    with _eval_mode(model), torch.enable_grad(), bf16_compute(images.device, model.dtype):
        if vit:
            image_features, image_probs = _vit_forward(visual, images.type(model.dtype), image_start)
            image_targets = image_probs
        else:
            image_features, activation = _resnet_forward(visual, images)
            image_targets = [activation]
        text_features, text_probs = _text_forward(model, texts, text_start)
        objective = _objective(model, image_features, text_features)
        grads = torch.autograd.grad(objective, image_targets + text_probs)
    image_grads, text_grads = grads[: len(image_targets)], grads[len(image_targets) :]
    if vit:
        rollout = _rollout(image_probs, image_grads)  # (N, T, T)
        grid = visual.input_resolution // visual.conv1.kernel_size[0]
        image_map = rollout[:, 0, 1:].reshape(-1, grid, grid)
    else:
        image_map = _grad_cam(activation, image_grads[0])
    text_rollout = _rollout(text_probs, text_grads)  # (N, context, context)
    rows = torch.arange(texts.shape[0], device=texts.device)
    text_map = text_rollout[rows, texts.argmax(dim=-1), : texts.shape[1]]
    return Relevance(image_map.detach(), text_map.detach())


# ------------------------------------------------------------------------------------------ checks


def _check_model(model: Any) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(
            "relevance needs the eager model, not TorchScript (clip.load(..., jit=True)): the traced graph "
            "computes attention in fused kernels whose probabilities cannot be reached. Load the same "
            "checkpoint with jit=False (the default)"
        )
    if not isinstance(model, CLIP):
        raise TypeError(
            f"relevance expects a CLIP model (clip.model.CLIP, from clip.load); got {type(model).__name__}"
        )
    from ._quantize import Int8Linear, Int8SelfAttention

    if any(isinstance(m, (Int8Linear, Int8SelfAttention)) for m in model.modules()):
        raise ValueError(
            "relevance needs gradients, and an int8 quantised model (clip.quantize, or clip.load(..., "
            "quantize='int8')) has none. Explain the model before quantising: clip.load(...) without quantize"
        )
    towers = [model.transformer] + (
        [model.visual.transformer] if isinstance(model.visual, VisionTransformer) else []
    )
    for tower in towers:
        for block in tower.resblocks:
            if not isinstance(block, ResidualAttentionBlock) or not isinstance(
                block.attn, nn.MultiheadAttention
            ):
                raise ValueError(
                    "relevance reads the attention weights of clip.model.ResidualAttentionBlock / "
                    f"nn.MultiheadAttention; this model has a {type(block).__name__} holding a "
                    f"{type(getattr(block, 'attn', None)).__name__}. Explain the model as clip.load "
                    "returns it"
                )


def _check_inputs(model: CLIP, images: Any, texts: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    res = model.visual.input_resolution
    if not isinstance(images, torch.Tensor) or not isinstance(texts, torch.Tensor):
        raise TypeError(
            "relevance expects tensors: images (N, 3, R, R) from preprocess and texts (N, L) from "
            f"clip.tokenize; got {type(images).__name__} and {type(texts).__name__}"
        )
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (res, res):
        raise ValueError(
            f"images must be a batch of preprocessed images of shape (N, 3, {res}, {res}); got "
            f"{tuple(images.shape)}. Use the `preprocess` returned by clip.load and stack the results"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point (preprocessed); got {images.dtype}")
    if (
        texts.dim() != 2
        or not 0 < texts.shape[1] <= model.context_length
        or texts.is_floating_point()
        or texts.is_complex()
        or texts.dtype == torch.bool
    ):
        raise ValueError(
            f"texts must be integer token ids of shape (N, L) with 1 <= L <= {model.context_length}, as "
            f"clip.tokenize returns; got {texts.dtype} of shape {tuple(texts.shape)}"
        )
    if images.shape[0] != texts.shape[0]:
        raise ValueError(
            f"relevance explains pairs (image n, text n): got {images.shape[0]} images and {texts.shape[0]} "
            "texts. To explain one image against several texts, repeat it: "
            "image.expand(len(texts), -1, -1, -1)"
        )
    if images.shape[0] == 0:
        raise ValueError("images and texts are empty: there is nothing to explain")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("relevance needs gradients: call it outside torch.inference_mode()")
    device = model.positional_embedding.device
    texts = texts.to(device=device, dtype=torch.long)
    model._check_token_range(texts)
    return images.to(device), texts


def _start_index(value: Optional[int], layers: int, name: str, tower: str) -> int:
    if value is None:
        return layers - 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (a block index) or None; got {value!r}")
    if not -layers <= value < layers:
        raise ValueError(
            f"{name}={value} is out of range: the {tower} tower has {layers} blocks, so give 0 to "
            f"{layers - 1} (or -{layers} to -1, counted from the end), or None for the last block only"
        )
    return value % layers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside the block, each one's own flag restored after it."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        for module, _ in flags:
            module.training = False
        yield
    finally:
        for module, flag in flags:
            module.training = flag


# ---------------------------------------------------------------------------------------- forward


def _attention_with_probs(
    block: ResidualAttentionBlock, x: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """`block.attention(x)` for x (L, N, D), with its softmax probabilities (N, H, L, L) written out.

    The computation torch's `nn.MultiheadAttention` does with need_weights=True: packed input
    projection, queries scaled by 1/sqrt(head width), additive (or boolean) mask, softmax, values,
    output projection.
    """
    attn = block.attn
    seq, batch, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # (L, N, 3D)
    # (L, N, D) -> (N, H, L, D/H) each
    q, k, v = (t.reshape(seq, batch, heads, width // heads).permute(1, 2, 0, 3) for t in qkv.chunk(3, dim=-1))
    scores = (q * math.sqrt(1.0 / (width // heads))) @ k.transpose(-2, -1)  # (N, H, L, L)
    mask = block.attn_mask
    if mask is not None:
        mask = mask[..., :seq, :seq].to(device=x.device)
        if mask.is_floating_point():
            scores = scores + mask.to(scores.dtype)
        else:  # boolean: True may not attend
            scores = scores.masked_fill(mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    out = (probs @ v).permute(2, 0, 1, 3).reshape(seq * batch, width)  # (N, H, L, D/H) -> (L*N, D)
    out = F.linear(out, attn.out_proj.weight, attn.out_proj.bias).view(seq, batch, width)
    return out, probs


def _blocks(
    blocks: Sequence[nn.Module], x: torch.Tensor, start: int
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Run the blocks over x (L, N, D); from block `start` on, with the probabilities kept for the graph."""
    with torch.no_grad():  # blocks before the start do not contribute: no graph through them
        for block in blocks[:start]:
            x = block(x)
    x = x.detach().requires_grad_(True)  # the graph starts here, whatever the parameters' flags
    probs = []
    for block in blocks[start:]:
        out, block_probs = _attention_with_probs(block, block.ln_1(x))
        x = x + out
        x = x + block.mlp(block.ln_2(x))
        probs.append(block_probs)
    return x, probs


def _vit_forward(
    visual: VisionTransformer, x: torch.Tensor, start: int
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """`VisionTransformer.forward` with the blocks run by `_blocks`: (features, probabilities)."""
    with torch.no_grad():
        x = visual.conv1(x)  # (N, D, grid, grid)
        x = x.flatten(start_dim=2).permute(0, 2, 1)  # (N, grid**2, D)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, grid**2 + 1, D)
        x = x + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
    x, probs = _blocks(list(visual.transformer.resblocks), x.permute(1, 0, 2), start)  # (L, N, D)
    x = visual.ln_post(x.permute(1, 0, 2)[:, 0, :])  # the class token
    if visual.proj is not None:
        x = x @ visual.proj
    return x, probs


def _resnet_forward(visual: ModifiedResNet, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """`ModifiedResNet.forward`: (features, layer4's output A, the leaf Grad-CAM differentiates)."""
    with torch.no_grad():
        x = x.type(visual.conv1.weight.dtype)
        x = visual.relu1(visual.bn1(visual.conv1(x)))
        x = visual.relu2(visual.bn2(visual.conv2(x)))
        x = visual.relu3(visual.bn3(visual.conv3(x)))
        x = visual.avgpool(x)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # (N, C, R/32, R/32)
    activation = x.detach().requires_grad_(True)
    return visual.attnpool(activation), activation


def _text_forward(model: CLIP, texts: torch.Tensor, start: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """`CLIP.encode_text` over the full context (the causal mask applies to all of it)."""
    padding = model.context_length - texts.shape[1]
    tokens = F.pad(texts, (0, padding)) if padding else texts  # zeros, as clip.tokenize pads
    with torch.no_grad():
        x = model.token_embedding(tokens).type(model.dtype)  # (N, context, D)
        x = x + model.positional_embedding.type(model.dtype)
    x, probs = _blocks(list(model.transformer.resblocks), x.permute(1, 0, 2), start)
    x = model.ln_final(x.permute(1, 0, 2)).type(model.dtype)
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, tokens.argmax(dim=-1)] @ model.text_projection, probs


def _objective(model: CLIP, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """sum_n logits_per_image[n, n], the logits computed as `CLIP.forward` computes them."""
    image_features = image_features / image_features.norm(dim=1, keepdim=True)
    text_features = text_features / text_features.norm(dim=1, keepdim=True)
    logits_per_image = model.logit_scale.detach().exp() * image_features @ text_features.t()
    return logits_per_image.diagonal().sum()


def _rollout(probs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """R = I, then R += mean_heads(clamp(grad * probs, min=0)) @ R per block, in float32."""
    batch, _, tokens, _ = probs[0].shape
    eye = torch.eye(tokens, dtype=torch.float32, device=probs[0].device)
    rollout = eye.expand(batch, tokens, tokens)
    for block_probs, grad in zip(probs, grads):
        cam = (grad.float() * block_probs.detach().float()).clamp(min=0).mean(dim=1)  # (N, T, T)
        rollout = rollout + torch.bmm(cam, rollout)
    return rollout


def _grad_cam(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """relu(sum_c mean_hw(grad)_c * A_c): (N, C, h, w) -> (N, h, w), float32."""
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activation.detach().float()).sum(dim=1))


# ---------------------------------------------------------------------------------------- pictures


def _segment_lut(segments: Dict[str, Tuple[Tuple[float, float], ...]]) -> np.ndarray:
    positions = np.linspace(0.0, 1.0, LUT_SIZE)
    channels = [np.interp(positions, *zip(*segments[c])) for c in ("red", "green", "blue")]
    return np.stack(channels, axis=-1)  # (LUT_SIZE, 3) in [0, 1]


def _colormap_lut(colormap: str) -> np.ndarray:
    """(256, 3) uint8 colour table of a built-in map, or of matplotlib's map of that name."""
    if not isinstance(colormap, str):
        raise TypeError(f"colormap must be a name such as 'jet'; got {type(colormap).__name__}")
    if colormap in COLORMAPS:
        lut = _segment_lut(_JET_SEGMENTS if colormap == "jet" else _GRAY_SEGMENTS)
    else:
        try:
            import matplotlib
        except ImportError:
            raise ValueError(
                f"colormap {colormap!r} is not built in (built in: {', '.join(COLORMAPS)}); other names are "
                "matplotlib's colour maps: pip install matplotlib"
            ) from None
        try:
            cmap = matplotlib.colormaps[colormap]
        except KeyError:
            raise ValueError(
                f"unknown colormap {colormap!r}: give one of {', '.join(COLORMAPS)} or a matplotlib colour "
                "map name (such as 'viridis', 'inferno')"
            ) from None
        lut = cmap(np.linspace(0.0, 1.0, LUT_SIZE))[:, :3]
    return np.clip(np.rint(lut * 255.0), 0, 255).astype(np.uint8)


def _centre_square(image: Any) -> Any:
    """The centre square of a PIL image: the part preprocess keeps (Resize shorter side, CenterCrop)."""
    width, height = image.size
    side = min(width, height)
    left = int(round((width - side) / 2.0))  # torchvision's CenterCrop rounding
    top = int(round((height - side) / 2.0))
    return image.crop((left, top, left + side, top + side))


def _as_map(heatmap: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    values = torch.as_tensor(np.asarray(heatmap) if not isinstance(heatmap, torch.Tensor) else heatmap)
    values = values.detach().cpu().float()
    if values.dim() == 3 and values.shape[0] == 1:
        values = values[0]
    if values.dim() != 2 or values.numel() == 0:
        raise ValueError(
            "heatmap must be one 2-D map (g, g), such as relevance(...).image[n]; got shape "
            f"{tuple(values.shape)}"
        )
    if not torch.isfinite(values).all():
        raise ValueError("heatmap holds NaN or infinite values")
    return values


def overlay(
    pil_image: Any,
    heatmap: Union[torch.Tensor, np.ndarray],
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    size: Optional[int] = None,
) -> Any:
    """`heatmap` drawn over the part of `pil_image` that `preprocess` takes; returns a PIL RGB image.

    The centre square of the image (what preprocess's resize and centre crop keep) is taken at its
    own resolution (or resized to `size` x `size` pixels); the heatmap (g, g) is up-sampled to it
    bilinearly, min-max normalised to [0, 1] (a constant map is all 0), coloured with `colormap`
    ("jet" or "gray" built in; any matplotlib colour map name when matplotlib is installed) and
    blended: ``(1 - alpha) * image + alpha * colours``.
    """
    from PIL import Image

    if not isinstance(pil_image, Image.Image):
        raise TypeError(f"overlay expects a PIL image; got {type(pil_image).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number from 0 to 1; got {alpha!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive number of pixels or None; got {size!r}")
    lut = _colormap_lut(colormap)
    values = _as_map(heatmap)
    crop = _centre_square(pil_image.convert("RGB"))
    if size is not None and crop.size != (size, size):
        crop = crop.resize((size, size), Image.BICUBIC)
    side = crop.size[0]
    up = F.interpolate(values[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    low, high = up.min(), up.max()
    constant = bool(values.min() == values.max())  # decided on the map: interpolation adds rounding noise
    unit = torch.zeros_like(up) if constant else ((up - low) / (high - low)).clamp(0.0, 1.0)
    index = (unit * (LUT_SIZE - 1)).round().long().numpy()
    colours = Image.fromarray(lut[index], mode="RGB")
    return Image.blend(crop, colours, float(alpha))


def token_pieces(tokens: torch.Tensor) -> List[str]:
    """The text of each token between start- and end-of-text of one `clip.tokenize` row."""
    from ._tokenize import get_tokenizer

    row = torch.as_tensor(tokens).reshape(-1).tolist()
    end = max(range(len(row)), key=row.__getitem__)  # the end-of-text token, the largest id
    tokenizer = get_tokenizer()
    return [tokenizer.decode([token]).strip() for token in row[1:end]]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """`text`, cut with an ellipsis so that it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _token_rows(
    draw: Any, pieces: List[str], weights: List[float], font: Any, width: int
) -> List[List[Tuple]]:
    """Tokens laid out in lines of at most `width` pixels: [[(piece, weight, x, w), ...], ...]."""
    rows: List[List[Tuple]] = [[]]
    x = 0
    space = int(draw.textlength(" ", font=font))
    for piece, weight in zip(pieces, weights):
        w = int(draw.textlength(piece, font=font)) + 4
        if rows[-1] and x + w > width:
            rows.append([])
            x = 0
        rows[-1].append((piece, weight, x, w))
        x += w + space
    return rows


def _shade(weight: float) -> Tuple[int, int, int]:
    return tuple(int(round(255 + (c - 255) * weight)) for c in TOKEN_SHADE)  # type: ignore[return-value]


def figure(
    pil_image: Any,
    labels: Sequence[str],
    relevances: Relevance,
    probabilities: Optional[Sequence[float]] = None,
    *,
    texts: Optional[torch.Tensor] = None,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Any:
    """One picture: the image, then one overlay per label (with its probability), each label's tokens
    shaded by their text relevance. Needs Pillow only; returns a PIL RGB image.

    `relevances` holds one row per label (`relevance(model, image.expand(K, ...), tokenize(labels))`);
    `texts` are those token ids (default: ``clip.tokenize(labels)``). Token shades are each label's
    relevance divided by its largest value over the label's own tokens (start and end of text left out).
    """
    from PIL import Image, ImageDraw

    from ._tokenize import tokenize

    labels = list(labels)
    if len(labels) != relevances.image.shape[0] or len(labels) != relevances.text.shape[0]:
        raise ValueError(
            f"figure needs one relevance row per label: {len(labels)} labels, "
            f"{relevances.image.shape[0]} image maps, {relevances.text.shape[0]} text maps"
        )
    if probabilities is not None and len(probabilities) != len(labels):
        raise ValueError(f"{len(probabilities)} probabilities for {len(labels)} labels")
    tokens = tokenize(labels, truncate=True) if texts is None else texts.cpu()
    font, small = _font(FIGURE_FONT_SIZE), _font(FIGURE_FONT_SIZE - 1)
    panel, margin = FIGURE_PANEL, FIGURE_MARGIN
    line = FIGURE_FONT_SIZE + 6
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    layouts = []
    for k in range(len(labels)):
        pieces = token_pieces(tokens[k])
        values = relevances.text[k, 1 : 1 + len(pieces)].detach().float().cpu().clamp(min=0)
        top = float(values.max()) if values.numel() else 0.0
        weights = [float(v) / top if top > 0 else 0.0 for v in values]
        layouts.append(_token_rows(scratch, pieces, weights, small, panel))
    token_lines = max(2, max(len(rows) for rows in layouts))  # the legend takes two lines
    width = margin + (panel + margin) * (len(labels) + 1)
    height = margin + 2 * line + panel + margin + token_lines * line + margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    crop = _centre_square(pil_image.convert("RGB")).resize((panel, panel), Image.BICUBIC)
    picture_top = margin + 2 * line
    canvas.paste(crop, (margin, picture_top))
    draw.text((margin, margin), "image", fill="black", font=font)
    draw.text((margin, margin + line), "(the crop the model sees)", fill=(90, 90, 90), font=small)
    legend_top = picture_top + panel + margin
    draw.text((margin, legend_top), "tokens, shaded by relevance:", fill=(90, 90, 90), font=small)
    for step in range(5):
        x = margin + step * (line + 2)
        draw.rectangle((x, legend_top + line, x + line, legend_top + 2 * line - 3), fill=_shade(step / 4))
    draw.text(
        (margin + 5 * (line + 2) + 4, legend_top + line + 1), "low to high", fill=(90, 90, 90), font=small
    )
    for k, label in enumerate(labels):
        left = margin + (panel + margin) * (k + 1)
        draw.text((left, margin), _fit(draw, label, font, panel), fill="black", font=font)
        if probabilities is not None:
            shown = f"probability {100.0 * float(probabilities[k]):.1f}%"
            draw.text((left, margin + line), shown, fill=(90, 90, 90), font=small)
        picture = overlay(pil_image, relevances.image[k], alpha=alpha, colormap=colormap, size=panel)
        canvas.paste(picture, (left, picture_top))
        for row_number, row in enumerate(layouts[k]):
            y = picture_top + panel + margin + row_number * line
            for piece, weight, x, w in row:
                draw.rectangle((left + x, y, left + x + w, y + line - 3), fill=_shade(weight))
                draw.text((left + x + 2, y + 1), piece, fill="black", font=small)
    return canvas
