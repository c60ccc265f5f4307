"""bf16 on CPUs without bf16 arithmetic: matrix products computed in fp32, results kept in bf16.

On x86 CPUs without AVX512-BF16 or AMX, oneDNN has no bf16 kernels and torch falls back to generic
ones that run bf16 matrix products several times slower than fp32 (measured here: a ViT-B/32
`encode_image` in bf16 took 7x the fp32 time, and so did fp32 under bf16 autocast). Those kernels
already accumulate in fp32 and round the result to bf16 once; this module does the same through the
fast fp32 kernels: bf16 operands are widened to fp32 (exact), multiplied, and the result is rounded
to bf16. Outputs keep the dtype torch would give, and agree with torch's own bf16 results up to the
order of summation.

The CLIP model enters `bf16_compute(...)` around its encoders. It does something only when all of
these hold; otherwise it is a no-op context:

- the input is on the CPU,
- the model's weights are bf16, or bf16 autocast is enabled for the CPU,
- torch reports no native bf16 support (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`),
- the environment variable ``CLIP_CPU_BF16_KERNELS`` is not ``"torch"`` (set it to use torch's own
  kernels, e.g. to compare them).
"""

import contextlib
import os
from typing import Any, Callable, ContextManager, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ENV_VAR = "CLIP_CPU_BF16_KERNELS"

# Matrix products the model calls, directly or through nn.Linear / nn.Conv2d.
_PRODUCTS = frozenset(
    {
        F.linear,
        F.conv2d,
        torch.conv2d,
        F.scaled_dot_product_attention,
        torch.matmul,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.mm,
        torch.bmm,
        torch.addmm,
        torch.baddbmm,
    }
)


_native_bf16: Optional[bool] = None  # asked once, on first use


def native_bf16_supported() -> bool:
    """Whether torch has fast bf16 matrix kernels on this CPU (oneDNN with AVX512-BF16 or AMX)."""
    global _native_bf16
    if _native_bf16 is None:
        try:
            _native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch without the query: leave its kernels alone
            _native_bf16 = True
    return _native_bf16


def _cpu_autocast_bf16() -> bool:
    try:
        enabled = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_cpu_enabled()
        dtype = torch.get_autocast_cpu_dtype()
    return enabled and dtype == torch.bfloat16


class _Float32Products(TorchFunctionMode):
    """Runs bf16 matrix products (and all of them under bf16 autocast) in fp32, returning bf16."""

    def __init__(self, autocast: bool) -> None:
        super().__init__()
        self.autocast = autocast

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
        # Under autocast, operands are rounded to bf16 first, as autocast itself would do.
        wide_args = [_widen(a) for a in args]
        wide_kwargs = {key: _widen(value) for key, value in kwargs.items()}
        with torch.autocast("cpu", enabled=False):
            out = func(*wide_args, **wide_kwargs)
        return out.to(torch.bfloat16)


def _widen(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.bfloat16).float()  # exact for bf16; rounds fp32 as autocast would
    return value


def bf16_compute(device: torch.device, weight_dtype: torch.dtype) -> ContextManager[Any]:
    """The context the model's encoders run in: fp32 products for bf16 work where bf16 is slow."""
    if device.type != "cpu" or native_bf16_supported() or os.environ.get(ENV_VAR) == "torch":
        return contextlib.nullcontext()
    autocast = _cpu_autocast_bf16()
    if weight_dtype != torch.bfloat16 and not autocast:
        return contextlib.nullcontext()
    return _Float32Products(autocast)
