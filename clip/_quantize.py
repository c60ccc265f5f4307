"""int8 inference on the CPU: every linear product of both towers with int8 weights and activations.

`quantize(model)` returns a copy of a CLIP model whose linear layers (the MLPs, the attention
output projections, the ResNet attention pool's projections) and attention input projections (a
raw `in_proj_weight` parameter, not an `nn.Linear`) compute in int8:

- weights: int8, symmetric (in [-63, 63], see `_pack`), one scale per output channel, quantised once;
- activations: quantised on the fly, per call, from their observed range (dynamic scales), the
  product accumulated in int32 and rescaled to fp32 with the bias added.

Convolutions (the ViT patch embedding, the ResNet trunk), LayerNorms, attention scores and the two
small final projections (`visual.proj`, `text_projection`) stay in fp32.

The int8 model is for inference only: the kernels have no backward. Its parameters are frozen
(`requires_grad=False`), and an int8 layer reached by a tensor that needs gradients raises
`RuntimeError` instead of letting backward() return zeros. Fine-tune the fp32 model, then quantise.

The kernels are torch's own dynamic int8 linear (`quantized::linear_dynamic`: fbgemm/oneDNN on x86,
QNNPACK on ARM), which run eagerly without compilation. Which engine packs the weights (and so runs
the products: a packed weight keeps its engine whatever `torch.backends.quantized.engine` says later)
is measured once per process, on the first model quantised: each engine torch offers times the same
int8 product (`_fastest_engine`), and the fastest packs every layer. On an AVX512-VNNI EPYC oneDNN's
kernels ran ViT-B/32's products 10-25% faster than the default engine's (`x86`). torchao, the successor of
`torch.ao.quantization`, reaches int8 speed on the CPU only through `torch.compile`; run eagerly its
int8 products fall back to `torch._int_mm`, which on CPUs without AMX measured tens of times slower
than fp32. This module uses no `torch.ao.quantization` API, only the kernels.
"""

import contextlib
import copy
import math
import os
import threading
import warnings
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .model import CLIP

INT8 = "int8"
SCHEMES = (INT8,)
WEIGHT_MAX = 63  # symmetric int8 weights in [-63, 63]: see _pack
ENGINE_ENV_VAR = "CLIP_INT8_ENGINE"  # an engine name forces it; unset (or "auto"): measured
# The products each engine is timed on: ViT-B/32's MLP input layer (768 -> 3072) on a batch-1 image's
# 50 rows and on 256 rows (large batches), both counted; a few milliseconds per engine.
MEASURE_ROWS = (50, 256)
MEASURE_IN_OUT = (768, 3072)
_engine_lock = threading.Lock()
_chosen_engine: Optional[str] = None


def check_scheme(quantize: Optional[str]) -> Optional[str]:
    """Validate a `quantize=` argument: None or "int8"; raises ValueError otherwise."""
    if quantize is None or (isinstance(quantize, str) and quantize in SCHEMES):
        return quantize
    raise ValueError(
        f"quantize must be None or one of {list(SCHEMES)}; got {quantize!r}. Pass quantize='int8' for int8 "
        "inference on the CPU, or leave it out for the model in its own dtype."
    )


def check_quantize_request(
    quantize: Optional[str], jit: bool, device: torch.device, dtype: Optional[torch.dtype]
) -> None:
    """The checks `clip.load(..., quantize=...)` makes before reading anything; raises ValueError."""
    if check_scheme(quantize) is None:
        return
    if jit:
        raise ValueError("quantize is only supported with jit=False (the default): pass jit=False")
    if device.type != "cpu":
        raise ValueError(f"int8 inference runs on the CPU; got device {str(device)!r}. Pass device='cpu'.")
    if dtype not in (None, torch.float32):
        raise ValueError(
            f"quantize={quantize!r} computes what it does not quantise in float32; got dtype={dtype}. "
            "Leave dtype out (or pass torch.float32)."
        )


def _engine_available() -> None:
    if not hasattr(torch.ops.quantized, "linear_dynamic") or not torch.backends.quantized.supported_engines:
        raise RuntimeError(
            "this torch build has no dynamic int8 linear kernels (quantized::linear_dynamic); int8 "
            "inference needs a CPU build of torch from pytorch.org or PyPI"
        )


def _engines() -> Tuple[str, ...]:
    """The int8 engines this torch offers, in its order (never "none")."""
    return tuple(e for e in torch.backends.quantized.supported_engines if e and e.lower() != "none")


@contextlib.contextmanager
def _packing_engine(engine: str) -> Iterator[None]:
    """torch's int8 engine set to `engine` while weights are packed (a process-wide setting), then
    restored."""
    with _engine_lock:
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            yield
        finally:
            torch.backends.quantized.engine = before


def _engine_runs() -> Dict[str, Callable[[], None]]:
    """For each engine that can pack here: a run of the measured products, with its packed weight."""
    generator = torch.Generator().manual_seed(0)
    k, n = MEASURE_IN_OUT
    weight, bias = torch.rand(n, k, generator=generator) - 0.5, torch.zeros(n)
    inputs = [torch.rand(rows, k, generator=generator) - 0.5 for rows in MEASURE_ROWS]
    runs = {}
    for engine in _engines():
        try:
            with _packing_engine(engine):
                packed = _pack(weight, bias)
        except RuntimeError:  # an engine that cannot pack on this CPU
            continue

        def run(packed: torch.ScriptObject = packed) -> None:
            for x in inputs:
                torch.ops.quantized.linear_dynamic(x, packed, False)

        runs[engine] = run
    return runs


def _fastest_engine() -> str:
    """The engine whose int8 products ran fastest here, measured once per process (or forced with
    CLIP_INT8_ENGINE); torch's current engine where only one can pack."""
    global _chosen_engine
    forced = os.environ.get(ENGINE_ENV_VAR, "").strip().lower()
    if forced and forced != "auto":
        if forced not in _engines():
            raise ValueError(
                f"{ENGINE_ENV_VAR}={forced!r} is not an int8 engine of this torch; choose one of "
                f"{list(_engines())}, or unset it to measure which is fastest"
            )
        return forced
    if _chosen_engine is None:
        runs = _engine_runs()
        if len(runs) < 2:
            _chosen_engine = next(iter(runs), torch.backends.quantized.engine)
        else:
            from ._bf16 import _measure  # the same paired-round timing as bf16's ways

            with torch.no_grad():
                times = _measure(runs)
            _chosen_engine = min(times, key=times.__getitem__)
    return _chosen_engine


def _pack(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.ScriptObject:
    """Per-output-channel symmetric int8 weights, packed for the engine in use.

    Weights use [-63, 63] so that x86 kernels without VNNI, which add pairs of u8 x s8 products in
    int16 (255 * 63 * 2 < 32767), never saturate: activations then keep all 8 bits. (With
    [-127, 127] those kernels need 7-bit activations, torch's `reduce_range`; measured on the tiny
    test models, 6-bit weights with 8-bit activations lose less.)
    """
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / WEIGHT_MAX
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # the quantized-tensor deprecation notice: only the kernels are used
        warnings.simplefilter("ignore")
        qweight = torch.quantize_per_channel(weight, scales.double(), zero_points, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


def _refuse_gradients(x: torch.Tensor) -> None:
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError(
            "int8 layers compute no gradients: backward() through a quantised model would give zeros. "
            "The int8 model is for inference: run it under torch.no_grad() (and leave its parameters "
            "frozen, and inputs without requires_grad); to train, fine-tune the fp32 model and quantise "
            "it afterwards"
        )


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and dynamically quantised int8 activations (CPU only).

    Input and output keep the caller's dtype (bf16 inputs are computed in fp32 and cast back).
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self._packed = _pack(weight, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """The int8 twin of an `nn.Linear` (its weights are read, not changed)."""
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(f"int8 layers run on the CPU; got an input on {x.device}")
        _refuse_gradients(x)
        dtype = x.dtype
        flat = x.reshape(-1, self.in_features).float().contiguous()  # (..., in) -> (M, in)
        out = torch.ops.quantized.linear_dynamic(flat, self._packed, False)  # 8-bit activations
        return out.reshape(*x.shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8SelfAttention(nn.Module):
    """Self-attention with int8 input and output projections; scores and softmax in fp32.

    Built from the model's attention module (`in_proj_weight`, `in_proj_bias`, `out_proj`,
    `num_heads`, as `nn.MultiheadAttention` names them) and called as the blocks call it:
    `attn(x, x, x, need_weights=False, attn_mask=mask)` -> (output, weights or None), (L, N, D).
    """

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.embed_dim = attention.in_proj_weight.shape[1]
        self.num_heads = attention.num_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.in_proj = Int8Linear(attention.in_proj_weight, attention.in_proj_bias)
        self.out_proj = Int8Linear.from_linear(attention.out_proj)

    def forward(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
        value: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """`nn.MultiheadAttention`'s call (sequence-first, self-attention, no key padding mask)."""
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("Int8SelfAttention only does self-attention: pass the same tensor as q, k, v")
        if key_padding_mask is not None:
            raise ValueError(
                "Int8SelfAttention takes no key_padding_mask (CLIP's blocks pass attn_mask only)"
            )
        seq, batch, width = query.shape
        qkv = self.in_proj(query)  # (L, N, 3D)
        # (L, N, 3D) -> 3 x (N, H, L, D/H)
        q, k, v = qkv.reshape(seq, batch, 3, self.num_heads, self.head_dim).permute(2, 1, 3, 0, 4).unbind(0)
        if attn_mask is not None:
            attn_mask = attn_mask[:seq, :seq].to(dtype=q.dtype, device=q.device)
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (N, H, L, L)
            if attn_mask is not None:
                scores = scores + attn_mask
            probs = scores.softmax(dim=-1)
            out = probs @ v
            weights = probs.mean(dim=1) if average_attn_weights else probs  # as nn.MultiheadAttention
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (N, H, L, D/H)
        out = out.permute(2, 0, 1, 3).reshape(seq, batch, width)  # (N, H, L, D/H) -> (L, N, D)
        return self.out_proj(out), weights


def _is_attention(module: nn.Module) -> bool:
    return (
        isinstance(getattr(module, "in_proj_weight", None), torch.Tensor)
        and isinstance(getattr(module, "out_proj", None), nn.Linear)
        and isinstance(getattr(module, "num_heads", None), int)
    )


def quantize_(model: nn.Module) -> nn.Module:
    """Replace, in place, every linear product of `model` by its int8 twin; returns `model`, in eval
    mode with every remaining parameter frozen (int8 layers have no backward).

    Attention modules (anything with `in_proj_weight`, `out_proj` and `num_heads`) become
    `Int8SelfAttention`; every other `nn.Linear` becomes `Int8Linear`.
    """
    _engine_available()
    for param in model.parameters():
        if param.device.type != "cpu":
            raise ValueError(
                f"int8 inference runs on the CPU, but the model's weights are on {param.device}; load it "
                "with device='cpu' (or call model.cpu()) before quantising"
            )
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name and (_is_attention(module) or isinstance(module, nn.Linear))
    ]
    replaced = set()
    with _packing_engine(_fastest_engine()):
        for name, module in targets:
            if any(name.startswith(done + ".") for done in replaced):
                continue  # the out_proj of an attention module already converted
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            twin = Int8SelfAttention(module) if _is_attention(module) else Int8Linear.from_linear(module)
            setattr(parent, child, twin)
            replaced.add(name)
    model.requires_grad_(False)  # convolutions, norms, embeddings: no gradient reaches them through int8
    return model.eval()


def quantize(model: nn.Module, scheme: str = INT8) -> nn.Module:
    """An int8 copy of a CLIP model (from `clip.load(..., device="cpu")`) for faster CPU inference.

    Every linear product of both towers, the attention input and output projections included,
    runs with int8 weights (per output channel) and int8 activations quantised on the fly. The
    given model is not changed. The copy's features keep a cosine similarity of at least 0.995 to
    fp32's. The copy runs on the CPU only and is for inference: its parameters are frozen and
    a forward pass that would need gradients raises RuntimeError (fine-tune the fp32 model, then
    quantise). Its `state_dict()` lacks the quantised layers' keys: keep the original checkpoint
    and quantise after loading.

    Raises:
        ValueError: `scheme` is not "int8" (None included: to keep fp32, do not call quantize), the
            model is TorchScript (`jit=True`), or it is not on the CPU.
        TypeError: `model` is not a `clip.model.CLIP`.
        RuntimeError: this torch build has no int8 kernels.
    """
    if scheme is None:
        raise ValueError(
            f"quantize(model, None) would not quantise: scheme must be one of {list(SCHEMES)}. To keep "
            "the model in its own dtype, do not call quantize"
        )
    check_scheme(scheme)
    _check_model(model)
    return quantize_(copy.deepcopy(model))


def _check_model(model: object) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(
            "quantize needs the eager model, not TorchScript (clip.load(..., jit=True)): its layers "
            "cannot be replaced. Load it with jit=False (the default), or pass quantize='int8' to clip.load"
        )
    if not isinstance(model, CLIP):
        raise TypeError(
            f"quantize expects a CLIP model (clip.model.CLIP, from clip.load(..., device='cpu')); got "
            f"{type(model).__name__}"
        )
