"""Seeded, reproducible state dicts in the layout of OpenAI's released CLIP checkpoints.

Torch only: this module imports neither our `clip` package nor the original, so the oracle
script (tests/data/make_model_golden.py) and our tests load this same file (by path, through
importlib) and get the same tensors.

The layout (key order, shapes, dtypes) is written out here from the release's module structure,
independently of `clip/model.py`; the golden script checks it against the original for all nine
architectures. Values come from one `torch.Generator` seeded with `seed`, drawn in key order,
then cast like the release: fp16 for the weights that the original's `convert_weights` casts (conv
and linear weights and biases, attention in-projections, `text_projection`, `visual.proj`), fp32
elsewhere. BatchNorm running variances are positive, `logit_scale` holds log(100) like the released
models, and the three scalar entries (`input_resolution`, `context_length`, `vocab_size`) are
appended as 0-dim int64 tensors.

Bit-identical on every CPU: golden files are keyed on SHA256 digests of these tensors, and the
goldens are made on one machine and checked on others (AVX2, AVX-512, ARM; ATen's
`ATEN_CPU_CAPABILITY` kernel paths). So no value here goes through a transcendental function
(`randn`'s Box-Muller transform and `exp` round differently across vector ISAs and libms), a
reduction or a matrix product. Every value is an integer from `torch.randint` (integer arithmetic
only), cast to fp32 exactly, then scaled and shifted by one multiplication and one addition with
constants that are themselves fp32 numbers: IEEE-754 rounds each such operation the same way on
every machine (also if a kernel computes it in double and rounds back: double rounding is harmless
for one binary32 operation), and no two operations are fused.
"""

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

HEAD_WIDTH = 64
RESNET_TOTAL_STRIDE = 32
BOTTLENECK_EXPANSION = 4
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
RELEASED_LOGIT_SCALE = math.log(100.0)
RESIDUAL_BRANCH_GAIN = 0.3
IMAGE_BLOCKS = 4  # side of the grid of the low-frequency part of make_images
PIXEL_NOISE = 0.3
# Exact uniform draws: integers in [0, 2**UNIFORM_BITS) map to k * 2**-(UNIFORM_BITS - 1) - 1, a
# value in [-1, 1) with at most 24 significant bits, hence exact in fp32 (24-bit significand).
UNIFORM_BITS = 24
UNIT_VARIANCE = math.sqrt(3.0)  # uniform on [-1, 1) has variance 1/3
RUNNING_VAR_SPREAD = 0.2  # BatchNorm running variances: 1 +- 0.2, strictly positive
SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")

DIM_NAMES = (
    "embed_dim",
    "image_resolution",
    "vision_layers",
    "vision_width",
    "vision_patch_size",
    "context_length",
    "vocab_size",
    "transformer_width",
    "transformer_heads",
    "transformer_layers",
)


def _dims(embed, res, layers, vwidth, patch, twidth, tlayers, context=CONTEXT_LENGTH, vocab=VOCAB_SIZE):
    values = (embed, res, layers, vwidth, patch, context, vocab, twidth, twidth // HEAD_WIDTH, tlayers)
    return dict(zip(DIM_NAMES, values))


# The nine released architectures (FACTS.md), in `available_models()` order.
RELEASED: Dict[str, Dict[str, Any]] = {
    "RN50": _dims(1024, 224, (3, 4, 6, 3), 64, None, 512, 12),
    "RN101": _dims(512, 224, (3, 4, 23, 3), 64, None, 512, 12),
    "RN50x4": _dims(640, 288, (4, 6, 10, 6), 80, None, 640, 12),
    "RN50x16": _dims(768, 384, (6, 8, 18, 8), 96, None, 768, 12),
    "RN50x64": _dims(1024, 448, (3, 15, 36, 10), 128, None, 1024, 12),
    "ViT-B/32": _dims(512, 224, 12, 768, 32, 512, 12),
    "ViT-B/16": _dims(512, 224, 12, 768, 16, 512, 12),
    "ViT-L/14": _dims(768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": _dims(768, 336, 24, 1024, 14, 768, 12),
}

# Tiny models for fast tests: the real context length and vocabulary (so real token ids work),
# two heads in the ViT towers, one head in the ResNet's text tower.
TINY: Dict[str, Dict[str, Any]] = {
    "tiny-vit": _dims(64, 32, 2, 128, 8, 128, 2),
    "tiny-rn": _dims(64, 64, (1, 2, 1, 1), 16, None, 64, 2),
}

CONFIGS: Dict[str, Dict[str, Any]] = {**RELEASED, **TINY}

Layout = List[Tuple[str, Tuple[int, ...], torch.dtype]]
DimsLike = Union[str, Mapping[str, Any], Any]


# A CLIP small enough to train in a second (clip train --model-config): ViT 32 px, patch 8 (17
# tokens), one block per tower.
TINY_TRAIN_CONFIG: Dict[str, int] = {
    "embed_dim": 32,
    "image_resolution": 32,
    "vision_layers": 1,
    "vision_width": 64,
    "vision_patch_size": 8,
    "context_length": 16,
    "vocab_size": VOCAB_SIZE,
    "transformer_width": 64,
    "transformer_heads": 1,
    "transformer_layers": 1,
}


def dims_of(config: DimsLike) -> Dict[str, Any]:
    """The ten CLIP dimensions of a config name, a mapping, or an object with those attributes."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise KeyError(f"unknown config {config!r}; known: {sorted(CONFIGS)}")
        dims = dict(CONFIGS[config])
    elif isinstance(config, Mapping):
        dims = {name: config[name] for name in DIM_NAMES}
    else:
        dims = {name: getattr(config, name) for name in DIM_NAMES}
    if isinstance(dims["vision_layers"], (list, tuple)):
        dims["vision_layers"] = tuple(dims["vision_layers"])
    return dims


def _linear(prefix: str, fan_in: int, fan_out: int) -> Layout:
    half = torch.float16
    return [(f"{prefix}.weight", (fan_out, fan_in), half), (f"{prefix}.bias", (fan_out,), half)]


def _norm(prefix: str, width: int) -> Layout:
    return [(f"{prefix}.weight", (width,), torch.float32), (f"{prefix}.bias", (width,), torch.float32)]


def _batch_norm(prefix: str, channels: int) -> Layout:
    return _norm(prefix, channels) + [
        (f"{prefix}.running_mean", (channels,), torch.float32),
        (f"{prefix}.running_var", (channels,), torch.float32),
        (f"{prefix}.num_batches_tracked", (), torch.int64),
    ]


def _conv(key: str, c_in: int, c_out: int, kernel: int) -> Layout:
    return [(key, (c_out, c_in, kernel, kernel), torch.float16)]


def _transformer(prefix: str, width: int, layers: int) -> Layout:
    out: Layout = []
    for i in range(layers):
        block = f"{prefix}.resblocks.{i}"
        out += [
            (f"{block}.attn.in_proj_weight", (3 * width, width), torch.float16),
            (f"{block}.attn.in_proj_bias", (3 * width,), torch.float16),
        ]
        out += _linear(f"{block}.attn.out_proj", width, width)
        out += _norm(f"{block}.ln_1", width)
        out += _linear(f"{block}.mlp.c_fc", width, 4 * width)
        out += _linear(f"{block}.mlp.c_proj", 4 * width, width)
        out += _norm(f"{block}.ln_2", width)
    return out


def _vit(d: Dict[str, Any]) -> Layout:
    width, patch = d["vision_width"], d["vision_patch_size"]
    grid = d["image_resolution"] // patch
    out: Layout = [
        ("visual.class_embedding", (width,), torch.float32),
        ("visual.positional_embedding", (grid * grid + 1, width), torch.float32),
        ("visual.proj", (width, d["embed_dim"]), torch.float16),
    ]
    out += _conv("visual.conv1.weight", 3, width, patch)
    out += _norm("visual.ln_pre", width)
    out += _transformer("visual.transformer", width, d["vision_layers"])
    out += _norm("visual.ln_post", width)
    return out


def _bottleneck(prefix: str, inplanes: int, planes: int, stride: int) -> Layout:
    out = _conv(f"{prefix}.conv1.weight", inplanes, planes, 1) + _batch_norm(f"{prefix}.bn1", planes)
    out += _conv(f"{prefix}.conv2.weight", planes, planes, 3) + _batch_norm(f"{prefix}.bn2", planes)
    outplanes = planes * BOTTLENECK_EXPANSION
    out += _conv(f"{prefix}.conv3.weight", planes, outplanes, 1) + _batch_norm(f"{prefix}.bn3", outplanes)
    if stride > 1 or inplanes != outplanes:
        out += _conv(f"{prefix}.downsample.0.weight", inplanes, outplanes, 1)
        out += _batch_norm(f"{prefix}.downsample.1", outplanes)
    return out


def _resnet(d: Dict[str, Any]) -> Layout:
    width = d["vision_width"]
    out = _conv("visual.conv1.weight", 3, width // 2, 3) + _batch_norm("visual.bn1", width // 2)
    out += _conv("visual.conv2.weight", width // 2, width // 2, 3) + _batch_norm("visual.bn2", width // 2)
    out += _conv("visual.conv3.weight", width // 2, width, 3) + _batch_norm("visual.bn3", width)
    inplanes = width
    for stage, blocks in enumerate(d["vision_layers"]):
        planes = width * 2**stage
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            out += _bottleneck(f"visual.layer{stage + 1}.{i}", inplanes, planes, stride)
            inplanes = planes * BOTTLENECK_EXPANSION
    grid = d["image_resolution"] // RESNET_TOTAL_STRIDE
    embed = width * 2**3 * BOTTLENECK_EXPANSION
    out.append(("visual.attnpool.positional_embedding", (grid * grid + 1, embed), torch.float32))
    for proj in ("k_proj", "q_proj", "v_proj"):
        out += _linear(f"visual.attnpool.{proj}", embed, embed)
    out += _linear("visual.attnpool.c_proj", embed, d["embed_dim"])
    return out


def layout(config: DimsLike) -> Layout:
    """(key, shape, dtype) of every weight of the release's state dict, in the release's order.

    The three scalar entries are not included.
    """
    d = dims_of(config)
    width = d["transformer_width"]
    out: Layout = [
        ("positional_embedding", (d["context_length"], width), torch.float32),
        ("text_projection", (width, d["embed_dim"]), torch.float16),
        ("logit_scale", (), torch.float32),
    ]
    out += _resnet(d) if isinstance(d["vision_layers"], tuple) else _vit(d)
    out += _transformer("transformer", width, d["transformer_layers"])
    out += [("token_embedding.weight", (d["vocab_size"], width), torch.float32)]
    out += _norm("ln_final", width)
    return out


def _scale_and_shift(key: str, shape: Tuple[int, ...]) -> Tuple[float, float]:
    """(std, mean) of the values drawn for one key: fan-in scaled, so activations stay O(1)."""
    last = key.rsplit(".", 1)[-1]
    if last == "running_mean":
        return 0.1, 0.0
    if last in ("weight", "bias") and len(shape) == 1:  # LayerNorm / BatchNorm affine, linear biases
        is_norm = ".ln_" in f".{key}" or ".bn" in key or "downsample.1" in key
        if last == "weight":
            if key.startswith("visual.layer") and key.endswith("bn3.weight"):
                return 0.05, RESIDUAL_BRANCH_GAIN  # damp each residual branch: no blow-up with depth
            return 0.1, 1.0
        return (0.1 if is_norm else 0.02), 0.0
    if last == "in_proj_bias":
        return 0.02, 0.0
    if key == "token_embedding.weight":
        return 0.02, 0.0
    if key == "positional_embedding":
        return 0.01, 0.0
    if key in ("visual.class_embedding", "visual.positional_embedding"):
        return shape[-1] ** -0.5, 0.0
    if key == "visual.attnpool.positional_embedding":
        return shape[-1] ** -0.5, 0.0
    if key in ("text_projection", "visual.proj"):
        return shape[0] ** -0.5, 0.0
    # conv and linear weights, attention in-projections: (out, in, ...) -> fan-in scaling
    fan_in = math.prod(shape[1:])
    gain = 2.0 if len(shape) == 4 else 1.0  # He scaling for convs followed by ReLU
    return math.sqrt(gain / fan_in), 0.0


def exact_uniform(
    shape: Tuple[int, ...], generator: torch.Generator, scale: float = 1.0, shift: float = 0.0
) -> torch.Tensor:
    """fp32 values uniform on [shift - scale, shift + scale), the same bits on every CPU.

    See the module docstring: integer draws, an exact map to [-1, 1), then `_affine`.
    """
    ints = torch.randint(0, 2**UNIFORM_BITS, shape, generator=generator, dtype=torch.int64)
    unit = ints.to(torch.float32).mul_(2.0 ** -(UNIFORM_BITS - 1)).sub_(1.0)  # both steps exact
    return _affine(unit, scale, shift) if (scale, shift) != (1.0, 0.0) else unit


def _fp32(value: float) -> float:
    """`value` rounded to the nearest fp32 number (so kernels that compute in double agree)."""
    return torch.tensor(value, dtype=torch.float32).item()


def _affine(values: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """values * scale + shift as two separately rounded fp32 operations (never a fused one)."""
    values = values.mul_(_fp32(scale))
    return values.add_(_fp32(shift)) if shift else values


def make_state_dict(config: DimsLike, seed: int, *, scalars: bool = True) -> Dict[str, torch.Tensor]:
    """A release-layout CLIP state dict with seeded random weights, the same on every run.

    `config` is a name of `CONFIGS` (the nine released architectures, "tiny-vit", "tiny-rn"), a
    mapping of the ten CLIP dimensions, or an object carrying them as attributes. With
    `scalars=True` the three scalar entries of the release are appended.
    """
    d = dims_of(config)
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for key, shape, dtype in layout(d):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=torch.int64)
            continue
        if key == "logit_scale":
            out[key] = torch.tensor(RELEASED_LOGIT_SCALE, dtype=torch.float32)
            continue
        if key.endswith("running_var"):
            values = exact_uniform(shape, gen, RUNNING_VAR_SPREAD, 1.0)
        else:
            std, mean = _scale_and_shift(key, shape)
            values = exact_uniform(shape, gen, std * UNIT_VARIANCE, mean)
        out[key] = values.to(dtype)
    if scalars:
        out.update(scalar_entries(d))
    return out


def scalar_entries(config: DimsLike) -> Dict[str, torch.Tensor]:
    """The three extra 0-dim int64 entries of the released state dicts."""
    d = dims_of(config)
    values = (d["image_resolution"], d["context_length"], d["vocab_size"])
    return {key: torch.tensor(value, dtype=torch.int64) for key, value in zip(SCALAR_KEYS, values)}


def make_meta_state_dict(config: DimsLike, *, scalars: bool = False) -> Dict[str, torch.Tensor]:
    """The release layout as meta tensors (no memory, no random numbers): for shape-only tests."""
    out = {key: torch.empty(shape, dtype=dtype, device="meta") for key, shape, dtype in layout(config)}
    if scalars:
        out.update(scalar_entries(config))
    return out


def make_images(resolution: int, seed: int, batch: int = 2) -> torch.Tensor:
    """(batch, 3, resolution, resolution) fp32 "preprocessed" images that differ in global content.

    Each image is a per-channel offset plus blocky low-frequency noise plus pixel noise, so that
    images differ in their statistics (pure white noise gives nearly equal pooled features).
    """
    gen = torch.Generator().manual_seed(seed)
    offset = exact_uniform((batch, 3, 1, 1), gen, UNIT_VARIANCE)
    coarse = exact_uniform((batch, 3, IMAGE_BLOCKS, IMAGE_BLOCKS), gen, UNIT_VARIANCE)
    repeat = -(-resolution // IMAGE_BLOCKS)  # ceil
    blocky = coarse.repeat_interleave(repeat, dim=2).repeat_interleave(repeat, dim=3)
    blocky = blocky[:, :, :resolution, :resolution]
    fine = exact_uniform((batch, 3, resolution, resolution), gen, PIXEL_NOISE * UNIT_VARIANCE)
    return ((offset + blocky) + fine).contiguous()  # elementwise adds: exact rounding, fixed order


def param_count(config: DimsLike) -> int:
    """Number of parameter elements (BatchNorm running statistics excluded)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(shape) for key, shape, _ in layout(config) if not key.endswith(buffers))


def describe(config: Optional[DimsLike] = None) -> str:
    """One line per config: name, key count, parameter count (a debugging aid)."""
    names = [config] if config is not None else list(CONFIGS)
    return "\n".join(f"{n}: {len(layout(n))} keys, {param_count(n):,} params" for n in names)
