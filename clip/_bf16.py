"""bf16 on the CPU, never slower than fp32: torch's bf16 kernels or fp32 products rounded to bf16.

Whether torch's bf16 matrix kernels beat fp32 depends on the CPU, and the flag torch reports
(`torch.ops.mkldnn._is_mkldnn_bf16_supported()`) does not tell: on CPUs without AVX512-BF16 or AMX
torch falls back to generic kernels several times slower than fp32, and even some CPUs with
AVX512-BF16 run bf16 products at about half the fp32 rate. This module computes each bf16 matrix
product one of two ways:

- "torch": torch's own bf16 kernels;
- "fp32": bf16 operands widened to fp32 (exact), multiplied by the fp32 kernels, the result rounded
  to bf16. torch's bf16 kernels accumulate in fp32 and round once too, so both agree up to the
  order of summation; outputs keep the dtype torch would give.

The choice is made by measurement, once per process and shape class (the kind of product, its
non-batch dimensions and its batch size rounded up to a power of two, capped): the first product of
a class is timed both ways on a slice of at most 256 rows (a few milliseconds where both ways are
fast; about one run of the slow way where one is slow, a one-off cost of a fraction of a second per
class on CPUs with slow bf16 kernels), the faster way is cached (thread-safe) and used from then on.
Nothing is measured at import, nor while
torch.jit.trace, torch.compile or torch.export trace the model: there a cached decision is used, or,
for a class not measured yet, the oneDNN flag (fp32 products when it reports no bf16 support).

The CLIP model enters `bf16_compute(...)` around its encoders. It does something only when the input
is on the CPU and the model's weights are bf16 or bf16 autocast is enabled for the CPU; otherwise it
is a no-op context. The environment variable ``CLIP_CPU_BF16_KERNELS`` forces one way: ``torch``
(torch's kernels, the context is a no-op) or ``fp32`` (fp32 products for every class); unset (or
``auto``), the measurement decides.
"""

import contextlib
import os
import threading
import time
import warnings
import weakref
from typing import Any, Callable, ContextManager, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ENV_VAR = "CLIP_CPU_BF16_KERNELS"
TORCH_KERNELS = "torch"
FP32_PRODUCTS = "fp32"
MEASURE = "auto"
_ENV_CHOICES = (TORCH_KERNELS, FP32_PRODUCTS, MEASURE)

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
MEASURE_REPEATS = 2  # timed runs of each way after one warm-up run; the fastest counts
CLEAR_WIN = 1.5  # a warm-up this many times slower than the other way's decides without repeats

_native_bf16: Optional[bool] = None  # asked once, on first use
_decisions: Dict[Tuple[Any, ...], bool] = {}  # shape class -> use fp32 products
_decisions_lock = threading.Lock()


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
    """The ways measured so far in this process: shape class -> "torch" or "fp32"."""
    with _decisions_lock:
        return {key: FP32_PRODUCTS if fp32 else TORCH_KERNELS for key, fp32 in _decisions.items()}


def clear_decisions() -> None:
    """Forget every measured decision (the next product of each class is measured again)."""
    with _decisions_lock:
        _decisions.clear()


def _tracing() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
    return torch.jit.is_tracing() or is_compiling()


def _cpu_autocast_bf16() -> bool:
    try:
        enabled = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_cpu_enabled()
        dtype = torch.get_autocast_cpu_dtype()
    return enabled and dtype == torch.bfloat16


def _env_choice() -> str:
    value = os.environ.get(ENV_VAR, "").strip().lower() or MEASURE
    if value not in _ENV_CHOICES:
        warnings.warn(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not one of {', '.join(_ENV_CHOICES)}; measuring which "
            f"bf16 kernels are faster instead. Set it to {TORCH_KERNELS!r} or {FP32_PRODUCTS!r} to force "
            "one.",
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


def _run_fp32(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    # Under autocast, operands are rounded to bf16 first, as autocast itself would do. Widened
    # weights are kept for eager calls only: a traced or compiled graph widens them in the graph.
    keep = not (_tracing() or _fake_operands(args))
    wide_args = [_widen(a, keep) for a in args]
    wide_kwargs = {key: _widen(value, keep) for key, value in kwargs.items()}
    with torch.autocast("cpu", enabled=False):
        out = func(*wide_args, **wide_kwargs)
    return out.to(torch.bfloat16)


def _keeps_widened(value: Any) -> bool:
    """Whether the fp32 way keeps an fp32 copy of this operand: a parameter, outside autograd, that
    tracks its version (not an inference tensor: those can change in place without a trace)."""
    return (
        isinstance(value, torch.nn.Parameter)
        and not (value.requires_grad and torch.is_grad_enabled())
        and not value.is_inference()
    )


def _widen(value: Any, keep: bool = False) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        if keep and _keeps_widened(value):
            return _widened_parameter(value)
        return value.to(torch.bfloat16).float()  # exact for bf16; rounds fp32 as autocast would
    return value


# fp32 copies of the weights the fp32 way has widened: id(parameter) -> (weak reference, what the
# copy was made from, the copy). Widening every weight on every call cost as much as the products
# themselves at batch 1 (ViT-B/32 encode_image in bf16 ran at 0.6x fp32); the copies make the fp32
# way cost what fp32 costs, for the memory of an fp32 copy of the weights (only where this way was
# chosen: CPUs without fast bf16 kernels). A copy is used only while its parameter is alive and
# unchanged (same storage, version counter, dtype and shape), and only for inference (no autograd
# graph through a parameter that requires grad).
_widened: Dict[int, Tuple[Any, Tuple[Any, ...], torch.Tensor]] = {}
_widened_lock = threading.Lock()


def _widened_parameter(weight: torch.Tensor) -> torch.Tensor:
    key = id(weight)
    state = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
    entry = _widened.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == state:
        return entry[2]
    wide = weight.detach().to(torch.bfloat16).float()
    with _widened_lock:
        if entry is None or entry[0]() is not weight:  # a new parameter: forget it when it dies
            ref = weakref.ref(weight, lambda _, key=key: _forget_widened(key))
        else:
            ref = entry[0]
        _widened[key] = (ref, state, wide)
    return wide


def _forget_widened(key: int) -> None:
    with _widened_lock:
        _widened.pop(key, None)


def clear_widened_weights() -> None:
    """Drop the fp32 copies of bf16 weights kept for the fp32 way (they are made again when needed)."""
    with _widened_lock:
        _widened.clear()


def _seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _measure(torch_run: Callable[[], Any], fp32_run: Callable[[], Any]) -> Tuple[float, float]:
    """(seconds with torch's kernels, seconds with fp32 products), the fastest of a few runs each.

    Stops early when one way is clearly slower (CLEAR_WIN), so a slow way costs about one run.
    """
    _seconds(fp32_run)  # warm-up: primes oneDNN and the allocator
    fp32_time = _seconds(fp32_run)
    torch_time = _seconds(torch_run)  # its warm-up: an upper bound of its time
    if torch_time > CLEAR_WIN * fp32_time:
        return torch_time, fp32_time
    torch_time = min(torch_time, _seconds(torch_run))
    if max(torch_time, fp32_time) > CLEAR_WIN * min(torch_time, fp32_time):
        return torch_time, fp32_time  # a clear winner: no more time spent
    for _ in range(MEASURE_REPEATS):
        torch_time = min(torch_time, _seconds(torch_run))
        fp32_time = min(fp32_time, _seconds(fp32_run))
    return torch_time, fp32_time


def _fake_operands(args: Sequence[Any]) -> bool:
    """Whether the operands are fake tensors: torch.compile / torch.export propagating shapes. torch
    before 2.6 runs this mode's code then without `torch.compiler.is_compiling()` being True."""
    from torch._subclasses.fake_tensor import FakeTensor

    return any(isinstance(arg, FakeTensor) for arg in args)


def _use_fp32(func: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any]) -> bool:
    """Whether this product's class runs faster as fp32 products (measured once, then cached)."""
    key = _shape_class(func, args, kwargs)
    decided = _decisions.get(key)
    if decided is not None:
        return decided
    if _tracing() or _fake_operands(args):  # no timing in a traced or compiled graph: not cached
        return not native_bf16_supported()
    with _decisions_lock:  # one thread measures a class; the others wait for its answer
        decided = _decisions.get(key)
        if decided is None:
            s_func, s_args, s_kwargs = _sample(func, args, kwargs)
            with torch.no_grad():
                torch_time, fp32_time = _measure(
                    lambda: _run_torch(s_func, s_args, s_kwargs), lambda: _run_fp32(s_func, s_args, s_kwargs)
                )
            decided = _decisions[key] = fp32_time < torch_time
    return decided


class _Float32Products(TorchFunctionMode):
    """Routes bf16 matrix products (all of them under bf16 autocast) to the faster way."""

    def __init__(self, autocast: bool, force_fp32: bool = False) -> None:
        super().__init__()
        self.autocast = autocast
        self.force_fp32 = force_fp32

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Optional[Dict[str, Any]] = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func not in _PRODUCTS:
            return func(*args, **kwargs)
        floats = [
            a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()
        ]
        all_bf16 = bool(floats) and all(a.dtype == torch.bfloat16 for a in floats)
        # Without autocast, mixed dtypes are the caller's error: let torch raise it as usual.
        if not (all_bf16 or self.autocast) or any(a.device.type != "cpu" for a in floats):
            return func(*args, **kwargs)
        if self.force_fp32 or _use_fp32(func, args, kwargs):
            return _run_fp32(func, args, kwargs)
        return _run_torch(func, args, kwargs)


def bf16_compute(device: torch.device, weight_dtype: torch.dtype) -> ContextManager[Any]:
    """The context the model's encoders run in: each bf16 product the faster way on this CPU."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    autocast = _cpu_autocast_bf16()
    if weight_dtype != torch.bfloat16 and not autocast:
        return contextlib.nullcontext()
    choice = _env_choice()
    if choice == TORCH_KERNELS:
        return contextlib.nullcontext()
    return _Float32Products(autocast, force_fp32=choice == FP32_PRODUCTS)
