"""bf16 on the CPU, never slower than fp32: torch's bf16 kernels or fp32 products rounded to bf16.

Whether torch's bf16 matrix kernels beat fp32 depends on the CPU, and the flag torch reports
(`torch.ops.mkldnn._is_mkldnn_bf16_supported()`) does not tell: on CPUs without AVX512-BF16 or AMX
torch falls back to generic kernels several times slower than fp32, and even some CPUs with
AVX512-BF16 run bf16 products at about half the fp32 rate. This module computes each bf16 matrix
product one of five ways:

- "torch": torch's own bf16 kernels;
- "fp32": bf16 operands widened to fp32 (exact), multiplied by torch's fp32 kernels, the result
  rounded to bf16. torch's bf16 kernels accumulate in fp32 and round once too, so both agree up to
  the order of summation; outputs keep the dtype torch would give;
- "onednn" (`F.linear` / `nn.Linear` and `F.conv2d` / `nn.Conv2d`, in inference only): the same
  fp32 product on oneDNN with the widened weight packed once into oneDNN's blocked layout. torch's
  fp32 `F.linear` calls the BLAS it was built with (MKL), which on some CPUs (AMD EPYC here) runs
  ViT-B/32's products 1.2-1.8x slower than oneDNN's packed kernels, and torch's `F.conv2d` re-lays
  out the weight on every call (RN50's 3x3 convolutions at batch 1: up to 1.9x slower). oneDNN
  writes a convolution's output channels-last; it is copied back to torch's layout (contiguous);
- "matmul" (1x1 convolutions: stride 1, no padding, one group): the convolution as the fp32 matrix
  product it is, (out, in) x (in, pixels) per image, on torch's BLAS; the output comes out in
  torch's layout with no copy (RN50's 1x1 convolutions at batch 1: up to 3x faster than F.conv2d);
- "packed" (`F.linear` / `nn.Linear` and `F.conv2d` / `nn.Conv2d`, in inference only): torch's own
  bf16 arithmetic on oneDNN's bf16 kernels, with the weight rounded to bf16 and packed once into
  oneDNN's blocked layout. torch's bf16 `F.linear` lays the weight out again on every call; on an
  AVX512-BF16 EPYC the packed weights ran ViT-B/32's linear layers 10-20% faster at batch 1 and its
  patch embedding 2.6x faster. A convolution's channels-last output is copied back to torch's layout.

fp32 models keep torch's own products, so their numbers stay the original's.

The choice is made by measurement, once per process and shape class (the kind of product, its
non-batch dimensions and its batch size rounded up to a power of two, capped): the first product of
a class is timed each way it can take on a slice of at most 256 rows (the close ways in paired
rounds, about 20-60 ms per class; about one run of a slow way, a one-off cost of a fraction of a
second per class on CPUs with slow bf16 kernels), the fastest is cached (thread-safe) and used from
then on. Nothing is measured at import, nor while torch.jit.trace, torch.compile or torch.export
trace the model: there a cached decision is used ("onednn" as "fp32", "packed" as "torch": the
packed weights are eager-only), or, for a class not measured yet, the oneDNN flag (fp32 products
when it reports no bf16 support).

The CLIP model enters `bf16_compute(...)` around its encoders. It does something only when the input
is on the CPU and the model's weights are bf16 or bf16 autocast is enabled for the CPU; otherwise it
is a no-op context. The environment variable ``CLIP_CPU_BF16_KERNELS`` forces one way: ``torch``
(torch's kernels, the context is a no-op), ``fp32`` (fp32 products for every class), ``onednn``
(oneDNN for the linear layers and convolutions it can take, fp32 products for the rest),
``matmul`` (1x1 convolutions as matrix products, fp32 products for the rest) or ``packed`` (packed
weights for the linear layers and convolutions it can take, torch's kernels for the rest); unset (or
``auto``), the measurement decides.

Where torch's bf16 kernels are oneDNN's own (the oneDNN flag says bf16 is supported), torch's way gets
one untimed run before its timing, like the other ways: oneDNN builds its kernels for a shape on first
use (5-10 ms), which counted as torch's time had lost it every small product.
"""

import contextlib
import os
import statistics
import threading
import time
import warnings
import weakref
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ENV_VAR = "CLIP_CPU_BF16_KERNELS"
TORCH_KERNELS = "torch"
FP32_PRODUCTS = "fp32"
ONEDNN_FP32 = "onednn"
MATMUL_CONV = "matmul"
PACKED_BF16 = "packed"
MEASURE = "auto"
_ENV_CHOICES = (TORCH_KERNELS, FP32_PRODUCTS, ONEDNN_FP32, MATMUL_CONV, PACKED_BF16, MEASURE)

# Matrix products the model calls, directly or through nn.Linear / nn.Conv2d.
_GEMMS = frozenset(
    {
        F.linear,
        torch.matmul,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.mm,
        torch.bmm,
        torch.addmm,
        torch.baddbmm,
    }
)
_CONVS = frozenset({F.conv2d, torch.conv2d})
_ATTENTION = frozenset({F.scaled_dot_product_attention})
_PRODUCTS = _GEMMS | _CONVS | _ATTENTION
_BIAS_FIRST = frozenset({torch.addmm, torch.baddbmm})  # (input, mat1, mat2): the product is args[1:3]

# How much of a product the measurement runs: a slice of the batch. Enough rows that the fp32 way's
# fixed cost (widening the weights) weighs in the timing as it does at large batches: at 64 rows of a
# 768 x 3072 product it did not, and the slow generic bf16 kernels were chosen for batch 32.
MEASURE_GEMM_ROWS = 256  # rows of the (M, K) x (K, N) product; larger M share one class
MEASURE_CONV_IMAGES = 1
MEASURE_ATTENTION_BATCH = 2
CLEAR_WIN = 1.5  # a way whose first timing is this many times the fastest's is not run again
# The ways left close run in rounds, each once a round: at least MEASURE_MIN_ROUNDS rounds, then more
# until the rounds have taken MEASURE_BUDGET_S or there are MEASURE_MAX_ROUNDS. Small products, whose
# timings are the noisiest, get the most rounds: about 7 for a text layer at batch 1 (~1.5 ms a run),
# 3 for ViT-B/32's MLP on 256 rows (~12 ms a run).
MEASURE_MIN_ROUNDS = 3
MEASURE_MAX_ROUNDS = 9
MEASURE_BUDGET_S = 0.02

_native_bf16: Optional[bool] = None  # asked once, on first use
_decisions: Dict[Tuple[Any, ...], str] = {}  # shape class -> the faster way
_decisions_lock = threading.Lock()
# The same decisions keyed by an eager call's exact signature (function, operand shapes, other
# arguments): a dictionary lookup instead of working out the shape class on every product. Emptied
# when it grows past this many entries (varying text lengths make new signatures of known classes).
_call_decisions: Dict[Tuple[Any, ...], str] = {}
MAX_CALL_DECISIONS = 4096


def _ask_onednn() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the query: leave its kernels alone
        return True


_assume_constant = getattr(torch.compiler, "assume_constant_result", None)
if _assume_constant is not None:  # torch.compile asks it once, as a constant (no graph break)
    _ask_onednn = _assume_constant(_ask_onednn)


def native_bf16_supported() -> bool:
    """Whether oneDNN reports bf16 support on this CPU (AVX512-BF16 or AMX); says nothing of speed."""
    global _native_bf16
    if _native_bf16 is None:
        _native_bf16 = _ask_onednn()
    return _native_bf16


def decisions() -> Dict[Tuple[Any, ...], str]:
    """The ways measured so far in this process: shape class -> "torch", "fp32", "onednn" or "matmul"."""
    with _decisions_lock:
        return dict(_decisions)


def clear_decisions() -> None:
    """Forget every measured decision (the next product of each class is measured again)."""
    with _decisions_lock:
        _decisions.clear()
        _call_decisions.clear()
        _plain_calls.clear()


_is_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _tracing() -> bool:
    return torch.jit.is_tracing() or _is_compiling()


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _cpu_autocast_bf16() -> bool:
    if not _cpu_autocast_enabled():
        return False
    try:
        dtype = torch.get_autocast_dtype("cpu")
    except (AttributeError, TypeError):  # torch < 2.4
        dtype = torch.get_autocast_cpu_dtype()
    return dtype == torch.bfloat16


def _env_choice() -> str:
    value = os.environ.get(ENV_VAR, "").strip().lower() or MEASURE
    if value not in _ENV_CHOICES:
        warnings.warn(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not one of {', '.join(_ENV_CHOICES)}; measuring which "
            f"way is faster instead. Set it to {TORCH_KERNELS!r}, {FP32_PRODUCTS!r}, {ONEDNN_FP32!r}, "
            f"{MATMUL_CONV!r} or {PACKED_BF16!r} to force one.",
            stacklevel=3,
        )
        return MEASURE
    return value


def _bucket(n: int, cap: int) -> int:
    """n rounded up to a power of two, at most cap: the batch part of a shape class."""
    return min(1 << max(int(n) - 1, 0).bit_length(), cap)


def _gemm_dims(func: Callable[..., Any], args: Sequence[Any]) -> Tuple[int, int, int]:
    """(M, K, N) of a matrix product: M rows of K inputs, N outputs (batch dims folded into M)."""
    a, b = (args[1], args[2]) if func in _BIAS_FIRST else (args[0], args[1])
    k = a.shape[-1]
    if func is F.linear:
        n = b.shape[0] if b.dim() > 1 else 1
    else:
        n = b.shape[-1] if b.dim() > 1 else 1
    rows = 1
    for size in a.shape[:-1]:  # a plain loop: dynamo traces it without a graph break
        rows *= int(size)  # sizes are tensors under jit.trace
    return max(rows, 1), int(k), int(n)


def _sizes(shape: Sequence[Any]) -> Tuple[int, ...]:
    return tuple([int(d) for d in shape])  # sizes are tensors under jit.trace


def _arg(args: Sequence[Any], kwargs: Dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _shape_class(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any]) -> Tuple[Any, ...]:
    """The key decisions are cached under; built from shapes and arguments only (no values)."""
    if func in _GEMMS:
        m, k, n = _gemm_dims(func, args)
        return ("gemm", _bucket(m, MEASURE_GEMM_ROWS), k, n)
    if func in _CONVS:
        image = _arg(args, kwargs, 0, "input")
        rest = tuple([a for a in args[2:] if not isinstance(a, torch.Tensor)])
        options = tuple(sorted([(k, v) for k, v in kwargs.items() if not isinstance(v, torch.Tensor)]))
        weight = _arg(args, kwargs, 1, "weight")
        return (
            "conv2d",
            _bucket(image.shape[0], MEASURE_CONV_IMAGES),
            _sizes(image.shape[1:]),
            _sizes(weight.shape),
            rest,
            options,
        )
    q, k, v = [_arg(args, kwargs, i, name) for i, name in enumerate(("query", "key", "value"))]
    mask = _arg(args, kwargs, 3, "attn_mask")
    options = tuple(sorted([(k_, v_) for k_, v_ in kwargs.items() if not isinstance(v_, torch.Tensor)]))
    return (
        "attention",
        _bucket(q.shape[0], MEASURE_ATTENTION_BATCH),
        _sizes(q.shape[1:]),
        _sizes(k.shape[1:]),
        _sizes(v.shape[1:]),
        None if mask is None else _sizes(mask.shape),
        options,
    )


def _sample(
    func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any]
) -> Tuple[Callable[..., Any], list, dict]:
    """A smaller product of the same class to time: (func, args, kwargs)."""
    if func in _GEMMS:
        m, k, n = _gemm_dims(func, args)
        rows = min(m, MEASURE_GEMM_ROWS)
        # bf16 operands of the class's shape; values do not change the speed of dense kernels. A
        # weight the fp32 way keeps widened (`_widened_parameter`) is a parameter here too, so that
        # the timing sees the widening once, as the model's calls do.
        weight = torch.full((n, k), 0.25, dtype=torch.bfloat16)
        if _keeps_widened(args[2] if func in _BIAS_FIRST else args[1]):
            weight = torch.nn.Parameter(weight, requires_grad=False)
        return (F.linear, [torch.full((rows, k), 0.5, dtype=torch.bfloat16), weight], {})
    batch = MEASURE_CONV_IMAGES if func in _CONVS else MEASURE_ATTENTION_BATCH
    first = _arg(args, kwargs, 0, "input" if func in _CONVS else "query")
    size = first.shape[0]

    def cut(value: Any, position: int) -> Any:
        batched = func in _ATTENTION and position < 3 or position == 0  # q, k, v / the input images
        if isinstance(value, torch.Tensor) and batched and value.dim() and value.shape[0] == size:
            return value[:batch]
        if (
            func in _ATTENTION
            and isinstance(value, torch.Tensor)
            and value.dim() == 4
            and value.shape[0] == size
        ):
            return value[:batch]  # a per-item mask
        return value

    names = ("input", "weight") if func in _CONVS else ("query", "key", "value", "attn_mask")
    return (
        func,
        [cut(a, i) for i, a in enumerate(args)],
        {key: cut(value, names.index(key) if key in names else 99) for key, value in kwargs.items()},
    )


def _run_torch(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    return func(*args, **kwargs)


def _fp32_call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`func` on fp32 operands, kept fp32 under the CPU's autocast, rounded to bf16."""
    if _cpu_autocast_enabled():
        with torch.autocast("cpu", enabled=False):
            out = func(*args, **kwargs)
    else:
        out = func(*args, **kwargs)
    return out.to(torch.bfloat16)


def _run_fp32(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any], keep: bool) -> Any:
    # Under autocast, operands are rounded to bf16 first, as autocast itself would do. Widened
    # weights are kept for eager calls only (`keep`): a traced or compiled graph widens them in the
    # graph.
    wide_args = [_widen(a, keep) for a in args]
    wide_kwargs = {key: _widen(value, keep) for key, value in kwargs.items()} if kwargs else kwargs
    return _fp32_call(func, *wide_args, **wide_kwargs)


def _onednn_operands(
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Dict[str, Any],
    keep: bool,
    packing: Optional[Callable[[], bool]] = None,
) -> Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
    """(input, weight, bias) of a product the oneDNN ways can take, else None: an eager `F.linear`
    with a kept 2-D weight, outside autograd (oneDNN's fused linear has no backward), on a torch whose
    packed linear passed its check (`packing`: the fp32 one unless given)."""
    if func is not F.linear or not keep or len(args) + len(kwargs) > 3:
        return None
    x, weight, bias = (
        _arg(args, kwargs, 0, "input"),
        _arg(args, kwargs, 1, "weight"),
        _arg(args, kwargs, 2, "bias"),
    )
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 2 and _keeps_widened(weight)):
        return None
    if _records_grad(x, bias):
        return None
    return (x, weight, bias) if (packing or _onednn_packing)() else None


def _records_grad(*operands: Any) -> bool:
    """Whether autograd records through any of these operands (oneDNN's fused ops have no backward)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in operands)


def _run_onednn(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any], keep: bool) -> Any:
    """`F.linear` or `F.conv2d` as an fp32 product on oneDNN, its weight widened and packed once
    (kept like the fp32 way's copies); any other product, or one oneDNN cannot take, the fp32 way."""
    if func in _CONVS:
        conv = _onednn_conv_operands(args, kwargs, keep)
        if conv is None:
            return _run_fp32(func, args, kwargs, keep)
        x, weight, bias, options = conv
        packed = _packed_conv_parameter(weight, options, x.shape)
        # oneDNN writes channels-last; rounded first (half the bytes), then copied to torch's layout
        return _fp32_call(_packed_conv, _widen(x), packed, _widen(bias, keep), options).contiguous()
    operands = _onednn_operands(func, args, kwargs, keep)
    if operands is None:
        return _run_fp32(func, args, kwargs, keep)
    x, weight, bias = operands
    return _fp32_call(
        torch.ops.mkldnn._linear_pointwise,
        _widen(x),
        _packed_parameter(weight),
        _widen(bias, keep),
        "none",
        [],
        "",
    )


# F.conv2d's arguments in order, and the defaults of those after the bias.
_CONV_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
ConvOptions = Tuple[List[int], List[int], List[int], int]  # stride, padding, dilation, groups


def _pair(value: Any) -> Optional[List[int]]:
    """An int or a pair of ints as a pair; anything else (padding="same", tensors) None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(type(v) is int for v in value):
        return [value[0], value[1]]
    return None


def _conv_arguments(
    args: Sequence[Any], kwargs: Dict[str, Any]
) -> Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], ConvOptions]]:
    """(input, weight, bias, options) of a `conv2d` call with a contiguous batch of images and plain
    int options: the calls the oneDNN and matmul ways can take. Anything else None (the fp32 way)."""
    if len(args) > len(_CONV_ARGUMENTS) or any(name not in _CONV_ARGUMENTS for name in kwargs):
        return None
    values = [_arg(args, kwargs, i, name) for i, name in enumerate(_CONV_ARGUMENTS)]
    x, weight, bias = values[:3]
    stride, padding, dilation = [
        _pair(_CONV_DEFAULTS[name] if value is None else value)
        for name, value in zip(_CONV_ARGUMENTS[3:6], values[3:6])
    ]
    groups = 1 if values[6] is None else values[6]
    if stride is None or padding is None or dilation is None or type(groups) is not int:
        return None
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_contiguous()):
        return None  # torch keeps a channels-last input's layout; these ways give the contiguous one
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 4):
        return None
    if bias is not None and not (isinstance(bias, torch.Tensor) and bias.dim() == 1):
        return None
    return x, weight, bias, (stride, padding, dilation, groups)


def _onednn_conv_operands(
    args: Sequence[Any], kwargs: Dict[str, Any], keep: bool, packing: Optional[Callable[[], bool]] = None
) -> Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], ConvOptions]]:
    """A convolution the oneDNN ways can take: eager, a kept weight, outside autograd (oneDNN's
    fused convolution has no backward), and a torch whose packed convolution passed its check
    (`packing`: the fp32 one unless given)."""
    conv = _conv_arguments(args, kwargs) if keep else None
    if conv is None:
        return None
    x, weight, bias, _ = conv
    if not _keeps_widened(weight) or _records_grad(x, bias):
        return None
    return conv if (packing or _onednn_conv_packing)() else None


def _packed_conv(
    x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], options: ConvOptions
) -> torch.Tensor:
    stride, padding, dilation, groups = options
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, bias, padding, stride, dilation, groups, "none", [], ""
    )


def _matmul_conv_operands(
    args: Sequence[Any], kwargs: Dict[str, Any]
) -> Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
    """(input, weight, bias) of a 1x1 convolution with stride 1, no padding and one group, else None."""
    conv = _conv_arguments(args, kwargs)
    if conv is None:
        return None
    x, weight, bias, (stride, padding, _, groups) = conv
    if weight.shape[2:] != (1, 1) or stride != [1, 1] or padding != [0, 0] or groups != 1:
        return None
    return (x, weight, bias) if weight.shape[1] == x.shape[1] else None  # else F.conv2d's error


def _conv_as_matmul(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    n, channels, height, width = x.shape
    out = torch.matmul(weight.reshape(weight.shape[0], channels), x.reshape(n, channels, height * width))
    if bias is not None:
        out = out + bias.unsqueeze(-1)  # (n, out, pixels) + (out, 1)
    return out.view(n, weight.shape[0], height, width)


def _run_matmul(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any], keep: bool) -> Any:
    """A 1x1 convolution as an fp32 matrix product per image (output in torch's layout, no copy);
    any other product the fp32 way."""
    operands = _matmul_conv_operands(args, kwargs) if func in _CONVS else None
    if operands is None:
        return _run_fp32(func, args, kwargs, keep)
    x, weight, bias = operands
    return _fp32_call(_conv_as_matmul, _widen(x), _widen(weight, keep), _widen(bias, keep))


def _narrow(value: Any) -> Any:
    """A floating-point operand in bf16 (under autocast, fp32 operands are rounded as autocast would)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.bfloat16:
        return value.to(torch.bfloat16)
    return value


def _run_packed(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any], keep: bool) -> Any:
    """`F.linear` or `F.conv2d` on oneDNN's bf16 kernels with the weight rounded to bf16 and packed
    once (torch's own bf16 call re-lays out the weight every time); any other product, or one this
    way cannot take, torch's bf16 kernels."""
    if func in _CONVS:
        conv = _onednn_conv_operands(args, kwargs, keep, _bf16_conv_packing)
        if conv is None:
            return _run_torch(func, args, kwargs)
        x, weight, bias, options = conv
        packed = _packed_bf16_conv_parameter(weight, options, x.shape)
        # oneDNN writes channels-last: copied to torch's layout
        return _packed_conv(_narrow(x), packed, _narrow(bias), options).contiguous()
    operands = _onednn_operands(func, args, kwargs, keep, _bf16_linear_packing)
    if operands is None:
        return _run_torch(func, args, kwargs)
    x, weight, bias = operands
    return torch.ops.mkldnn._linear_pointwise(
        _narrow(x), _packed_bf16_parameter(weight), _narrow(bias), "none", [], ""
    )


def _takes(way: str, func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any]) -> bool:
    """Whether an eager product can go `way` (else that way would run it as the fp32 way does)."""
    if way == ONEDNN_FP32:
        if func in _CONVS:
            return _onednn_conv_operands(args, kwargs, keep=True) is not None
        return _onednn_operands(func, args, kwargs, keep=True) is not None
    if way == MATMUL_CONV:
        return func in _CONVS and _matmul_conv_operands(args, kwargs) is not None
    if way == PACKED_BF16:
        if func in _CONVS:
            return _onednn_conv_operands(args, kwargs, True, _bf16_conv_packing) is not None
        return _onednn_operands(func, args, kwargs, True, _bf16_linear_packing) is not None
    return True


_RUNS: Dict[str, Callable[..., Any]] = {
    FP32_PRODUCTS: _run_fp32,
    ONEDNN_FP32: _run_onednn,
    MATMUL_CONV: _run_matmul,
    PACKED_BF16: _run_packed,
}

# Whether oneDNN's private packed-weight ops run and are right on this torch: check name -> answer,
# each checked once, on first use, against torch's own op (any failure means no).
_self_checks: Dict[str, bool] = {}


def _passes(name: str, check: Callable[[], bool]) -> bool:
    answer = _self_checks.get(name)
    if answer is None:
        try:
            answer = bool(torch.backends.mkldnn.is_available() and check())
        except (AttributeError, RuntimeError, TypeError):
            answer = False
        _self_checks[name] = answer
    return answer


def _linear_packing_check() -> bool:
    weight = torch.linspace(-1, 1, 24 * 16).reshape(24, 16)
    x, bias = torch.linspace(-2, 2, 3 * 16).reshape(3, 16), torch.linspace(0, 1, 24)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
    out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out.shape == (3, 24) and torch.allclose(out, F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)


def _bf16_linear_packing_check() -> bool:
    """A bf16 weight packed for oneDNN's bf16 linear, against torch's bf16 F.linear (within an ulp)."""
    weight = torch.linspace(-1, 1, 24 * 16).reshape(24, 16).to(torch.bfloat16)
    x = torch.linspace(-2, 2, 3 * 16).reshape(3, 16).to(torch.bfloat16)
    bias = torch.linspace(0, 1, 24).to(torch.bfloat16)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
    out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    want = F.linear(x.float(), weight.float(), bias.float())
    if out.dtype != torch.bfloat16 or out.shape != (3, 24):
        return False
    return torch.allclose(out.float(), want, rtol=2**-7, atol=1e-2)


def _conv_packing_check(dtype: torch.dtype = torch.float32) -> bool:
    """A strided, padded, grouped convolution and a 1x1 one, against F.conv2d (in fp32)."""
    x = torch.linspace(-2, 2, 2 * 4 * 7 * 6).reshape(2, 4, 7, 6).to(dtype)
    for shape, options in (
        ((6, 2, 3, 3), ([2, 1], [1, 1], [1, 1], 2)),
        ((5, 4, 1, 1), ([1, 1], [0, 0], [1, 1], 1)),
    ):
        weight = torch.linspace(-1, 1, torch.Size(shape).numel()).reshape(shape).to(dtype)
        bias = torch.linspace(0, 1, shape[0]).to(dtype)
        stride, padding, dilation, groups = options
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight, padding, stride, dilation, groups, list(x.shape)
        )
        out = _packed_conv(x, packed, bias, options)
        want = F.conv2d(x.float(), weight.float(), bias.float(), stride, padding, dilation, groups)
        tolerance = 1e-4 if dtype == torch.float32 else 2**-7  # bf16: one rounding of the result
        if out.dtype != dtype or out.shape != want.shape:
            return False
        if not torch.allclose(out.float(), want, rtol=tolerance, atol=tolerance):
            return False
    return True


def _onednn_packing() -> bool:
    """Whether this torch can pack a linear weight for oneDNN and multiply with it correctly."""
    return _passes("linear", _linear_packing_check)


def _onednn_conv_packing() -> bool:
    """Whether this torch can pack a convolution weight for oneDNN and convolve with it correctly."""
    return _passes("conv2d", _conv_packing_check)


def _bf16_linear_packing() -> bool:
    """Whether this torch can pack a bf16 linear weight for oneDNN's bf16 kernels, correctly."""
    return _passes("linear-bf16", _bf16_linear_packing_check)


def _bf16_conv_packing() -> bool:
    """Whether this torch can pack a bf16 convolution weight for oneDNN's bf16 kernels, correctly."""
    return _passes("conv2d-bf16", lambda: _conv_packing_check(torch.bfloat16))


def _keeps_widened(value: Any) -> bool:
    """Whether the fp32 way keeps an fp32 copy of this operand: a parameter, outside autograd, that
    tracks its version (not an inference tensor: those can change in place without a trace)."""
    # A plain tensor is never a parameter: skip the parameter metaclass's slower isinstance check.
    return (
        type(value) is not torch.Tensor
        and isinstance(value, torch.nn.Parameter)
        and not (value.requires_grad and torch.is_grad_enabled())
        and not value.is_inference()
    )


def _widen(value: Any, keep: bool = False) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        if keep and _keeps_widened(value):
            return _widened_parameter(value)
        if value.dtype == torch.bfloat16:
            return value.float()  # exact
        return value.to(torch.bfloat16).float()  # rounds fp32 as autocast would
    return value


def _widened_now(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().to(torch.bfloat16).float()


# fp32 copies of the weights the fp32 ways have widened: id(parameter) -> (weak reference, what the
# copy was made from, the copy); `_packed` holds the oneDNN way's, widened and packed. Widening every
# weight on every call cost as much as the products themselves at batch 1 (ViT-B/32 encode_image in
# bf16 ran at 0.6x fp32); the copies make the fp32 way cost what fp32 costs, for the memory of an
# fp32 copy of the weights (only where an fp32 way was chosen: CPUs without fast bf16 kernels). A
# copy is used only while its parameter is alive and unchanged (same storage, version counter, dtype
# and shape), and only for inference (no autograd graph through a parameter that requires grad).
_KeptCopies = Dict[int, Tuple[Any, Tuple[Any, ...], torch.Tensor]]
_widened: _KeptCopies = {}
_packed: _KeptCopies = {}
_packed_bf16: _KeptCopies = {}  # the packed way's: rounded to bf16 (a copy only under autocast) and packed
_widened_lock = threading.Lock()


def _kept_copy(
    store: _KeptCopies,
    weight: torch.Tensor,
    make: Callable[[torch.Tensor], torch.Tensor],
    made_for: Tuple[Any, ...] = (),
) -> torch.Tensor:
    """The kept copy of `weight` in `store`, made again if the weight changed or if it was made for
    other uses (`made_for`: a packed convolution weight's stride, padding, dilation and groups)."""
    key = id(weight)
    state = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape), made_for)
    entry = store.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == state:
        return entry[2]
    copy = make(weight)
    with _widened_lock:
        if entry is None or entry[0]() is not weight:  # a new parameter: forget it when it dies
            ref = weakref.ref(weight, lambda _, key=key: _forget_widened(store, key))
        else:
            ref = entry[0]
        store[key] = (ref, state, copy)
    return copy


def _widened_parameter(weight: torch.Tensor) -> torch.Tensor:
    return _kept_copy(_widened, weight, _widened_now)


def _packed_parameter(weight: torch.Tensor) -> torch.Tensor:
    return _kept_copy(
        _packed, weight, lambda w: torch.ops.mkldnn._reorder_linear_weight(_widened_now(w), None)
    )


def _packed_conv_parameter(
    weight: torch.Tensor, options: ConvOptions, input_shape: Sequence[int]
) -> torch.Tensor:
    stride, padding, dilation, groups = options

    def pack(w: torch.Tensor) -> torch.Tensor:
        # oneDNN picks the packed layout for an input size; without one, some shapes (3x3 at 7x7)
        # got a layout 30x slower. Any batch size works with it, so the first call's is kept.
        return torch.ops.mkldnn._reorder_convolution_weight(
            _widened_now(w), padding, stride, dilation, groups, list(input_shape)
        )

    made_for = (tuple(stride), tuple(padding), tuple(dilation), groups)
    return _kept_copy(_packed, weight, pack, made_for)


def _narrowed_now(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().to(torch.bfloat16)


def _packed_bf16_parameter(weight: torch.Tensor) -> torch.Tensor:
    return _kept_copy(
        _packed_bf16, weight, lambda w: torch.ops.mkldnn._reorder_linear_weight(_narrowed_now(w), None)
    )


def _packed_bf16_conv_parameter(
    weight: torch.Tensor, options: ConvOptions, input_shape: Sequence[int]
) -> torch.Tensor:
    stride, padding, dilation, groups = options

    def pack(w: torch.Tensor) -> torch.Tensor:  # for an input size, as _packed_conv_parameter
        return torch.ops.mkldnn._reorder_convolution_weight(
            _narrowed_now(w), padding, stride, dilation, groups, list(input_shape)
        )

    made_for = (tuple(stride), tuple(padding), tuple(dilation), groups)
    return _kept_copy(_packed_bf16, weight, pack, made_for)


def _forget_widened(store: _KeptCopies, key: int) -> None:
    with _widened_lock:
        store.pop(key, None)


def clear_widened_weights() -> None:
    """Drop the fp32 copies of bf16 weights kept for the fp32 ways (they are made again when needed)."""
    with _widened_lock:
        _widened.clear()
        _packed.clear()
        _packed_bf16.clear()


def _seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _measure(runs: Dict[str, Callable[[], Any]]) -> Dict[str, float]:
    """Seconds each way takes (way -> its typical time; the lowest is the fastest way).

    Each way runs once timed (an fp32 way after an untimed warm-up that makes its kept weights; torch's
    first run counts, as an upper bound). A way CLEAR_WIN times slower than the fastest is out, so a
    slow way costs about one run. The ways left close then run in paired rounds, each way once a
    round in a rotating order, and a way's figure is the median over rounds of its time relative to
    the round's fastest (times that fastest's median time). Paired rounds cancel the machine's drift
    (another process starting on a busy core), which the fastest of three runs each did not: on a
    2-core VM it chose the slower way for some of a text layer's products in up to 43% of processes
    (at most 8% with the paired rounds).
    """
    times: Dict[str, float] = {}
    for way, run in runs.items():
        if way != TORCH_KERNELS:
            _seconds(run)  # warm-up: kept weights, oneDNN's primitives, the allocator
        times[way] = _seconds(run)
    best = min(times.values())
    close = [way for way, seconds in times.items() if seconds <= CLEAR_WIN * best]
    if len(close) < 2:
        return times
    rounds: List[Dict[str, float]] = []
    spent = 0.0
    while len(rounds) < MEASURE_MAX_ROUNDS and (len(rounds) < MEASURE_MIN_ROUNDS or spent < MEASURE_BUDGET_S):
        shift = len(rounds) % len(close)
        timed = {way: _seconds(runs[way]) for way in close[shift:] + close[:shift]}
        spent += sum(timed.values())
        rounds.append(timed)
    fastest = [max(min(timed.values()), 1e-9) for timed in rounds]  # 1 ns: a coarse clock's zero
    typical = statistics.median(fastest)
    for way in close:
        times[way] = typical * statistics.median([timed[way] / low for timed, low in zip(rounds, fastest)])
    return times


_fake_tensor_type: Optional[type] = None  # torch's FakeTensor class, imported on first use


def _fake_operands(args: Sequence[Any]) -> bool:
    """Whether the operands are fake tensors: torch.compile / torch.export propagating shapes. torch
    before 2.6 runs this mode's code then without `torch.compiler.is_compiling()` being True."""
    global _fake_tensor_type
    if _fake_tensor_type is None:
        from torch._subclasses.fake_tensor import FakeTensor

        _fake_tensor_type = FakeTensor
    return any(isinstance(arg, _fake_tensor_type) for arg in args)


def _eager(args: Sequence[Any]) -> bool:
    """Whether this product runs eagerly (not traced, compiled or exported): only then is anything
    measured, cached by call signature or kept widened."""
    return not (_tracing() or _fake_operands(args))


def _call_key(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any]) -> Tuple[Any, ...]:
    """An eager call's exact signature: finer than its shape class, so it maps to one decision."""
    key: List[Any] = [func]
    for value in args:
        key.append(value.shape if isinstance(value, torch.Tensor) else value)
    for name, value in kwargs.items():
        key.append(name)
        key.append(value.shape if isinstance(value, torch.Tensor) else value)
    return tuple(key)


def _way(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any], eager: bool) -> str:
    """The fastest way for this product's class (measured once, then cached)."""
    call_key: Optional[Tuple[Any, ...]] = None
    if eager:
        call_key = _call_key(func, args, kwargs)
        try:
            decided = _call_decisions.get(call_key)
        except TypeError:  # an unhashable argument (a list of strides): use the shape class only
            call_key = None
        else:
            if decided is not None:
                return decided
    key = _shape_class(func, args, kwargs)
    decided = _decisions.get(key)
    if decided is None:
        if not eager:  # no timing in a traced or compiled graph: not cached
            return TORCH_KERNELS if native_bf16_supported() else FP32_PRODUCTS
        with _decisions_lock:  # one thread measures a class; the others wait for its answer
            decided = _decisions.get(key)
            if decided is None:
                decided = _decisions[key] = _measured_way(func, args, kwargs)
    if call_key is not None:
        with _decisions_lock:
            if _decisions.get(key) == decided:  # not cleared meanwhile
                if len(_call_decisions) >= MAX_CALL_DECISIONS:
                    _call_decisions.clear()
                _call_decisions[call_key] = decided
    return decided


def _measured_way(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any]) -> str:
    """Times each way this product can take on a sample of its class; the fastest (torch on a tie)."""
    s_func, s_args, s_kwargs = _sample(func, args, kwargs)
    runs = {}
    for way in (FP32_PRODUCTS, ONEDNN_FP32, MATMUL_CONV, PACKED_BF16):
        if _takes(way, func, args, kwargs):
            runs[way] = lambda run=_RUNS[way]: run(s_func, s_args, s_kwargs, keep=True)
    runs[TORCH_KERNELS] = lambda: _run_torch(s_func, s_args, s_kwargs)
    with torch.no_grad():
        if native_bf16_supported():
            # oneDNN builds its bf16 kernels for a shape on first use (5-10 ms, measured on an AVX512-BF16
            # EPYC): a first run counted as torch's time lost it the text layers at batch 1, 2-3x faster
            # than fp32. Without bf16 units torch runs generic kernels, built in: nothing to warm up, and
            # a slow run saved.
            runs[TORCH_KERNELS]()
        times = _measure(runs)
    return min(times, key=lambda way: (times[way], way != TORCH_KERNELS))


# Calls in which every product went torch's way, so that the mode only cost its dispatch (1-3 us per
# torch call, 3-6% of ViT-B/32's encode_image at batch 1): their next run leaves the mode out. Keyed by
# the caller's module and input (`_plain_key`), each entry holding a weak reference to that module.
_plain_calls: Dict[Tuple[Any, ...], Any] = {}
MAX_PLAIN_CALLS = 4096


def _plain_key(
    owner: Any, inputs: Any, weight_dtype: torch.dtype, autocast: bool
) -> Optional[Tuple[Any, ...]]:
    if owner is None or not isinstance(inputs, torch.Tensor) or _tracing():
        return None
    return (id(owner), tuple(inputs.shape), inputs.dtype, weight_dtype, autocast)


class _Float32Products(TorchFunctionMode):
    """Routes bf16 matrix products (all of them under bf16 autocast) to the faster way."""

    def __init__(
        self, autocast: bool, force: Optional[str] = None, plain: Optional[Tuple[Any, Any]] = None
    ) -> None:
        super().__init__()
        self.autocast = autocast
        self.force = force  # a way for every product (CLIP_CPU_BF16_KERNELS), or None to measure
        self.plain = plain  # (key, owner): remembered in _plain_calls if every product goes torch's way
        self.rerouted = False

    def __exit__(self, *exc: Any) -> Any:
        result = super().__exit__(*exc)
        if self.plain is not None and not self.rerouted and exc[0] is None:
            key, owner = self.plain
            with _decisions_lock:
                if len(_plain_calls) >= MAX_PLAIN_CALLS:
                    _plain_calls.clear()
                _plain_calls[key] = weakref.ref(owner)
        return result

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Optional[Dict[str, Any]] = None,
    ) -> Any:
        if kwargs is None:
            kwargs = {}
        if func not in _PRODUCTS or not self._routes(args, kwargs):
            return func(*args, **kwargs)
        eager = _eager(args)
        way = self.force or _way(func, args, kwargs, eager)
        if way == TORCH_KERNELS:
            return func(*args, **kwargs)
        self.rerouted = True
        return _RUNS[way](func, args, kwargs, eager)

    def _routes(self, args: Sequence[Any], kwargs: Dict[str, Any]) -> bool:
        """Whether a product is this mode's: CPU operands, all bf16 (any floats under autocast).
        Without autocast, mixed dtypes are the caller's error: torch raises it as usual."""
        floats, all_bf16 = False, True
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                if not value.is_cpu:
                    return False
                floats = True
                all_bf16 = all_bf16 and value.dtype == torch.bfloat16
        return (floats and all_bf16) or self.autocast


def bf16_compute(
    device: torch.device, weight_dtype: torch.dtype, owner: Any = None, inputs: Any = None
) -> ContextManager[Any]:
    """The context the model's encoders run in: each bf16 product the faster way on this CPU.

    With `owner` (the module the call runs) and `inputs` (its input tensor), a call whose products all
    went torch's way is remembered, and the next call of that module on inputs of that shape and dtype
    runs without the mode (no dispatch cost: nothing to route). fp32 weights outside autocast never
    enter it.
    """
    if device.type != "cpu":
        return contextlib.nullcontext()
    autocast = _cpu_autocast_bf16()
    if weight_dtype != torch.bfloat16 and not autocast:
        return contextlib.nullcontext()
    choice = _env_choice()
    if choice == TORCH_KERNELS:
        return contextlib.nullcontext()
    if choice != MEASURE:
        return _Float32Products(autocast, force=choice)
    key = _plain_key(owner, inputs, weight_dtype, autocast)
    if key is None:
        return _Float32Products(autocast)
    known = _plain_calls.get(key)
    if known is not None and known() is owner:
        return contextlib.nullcontext()
    return _Float32Products(autocast, plain=(key, owner))
