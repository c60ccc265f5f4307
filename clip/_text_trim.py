"""When `CLIP.encode_text` may compute only the positions up to the batch's last end-of-text token.

The text tower is causal: position i attends to positions 0..i only, and the features are read at
each text's end-of-text token. So the positions after the batch's last end-of-text token change no
output, and leaving them out gives the same features to float rounding. It is left out only where
nobody can tell the difference:

* the ids are on the CPU (reading the longest text's length elsewhere would wait for the device);
* nothing traces, scripts, compiles or exports the call (the graph must be the release's);
* no forward or backward hook, on any module of the text tower or global, would see the shorter
  sequence (a hook is promised the release's shapes: [77, N, width]);
* every block of the tower is a `ResidualAttentionBlock` whose `attn_mask` is 2-D and blocks every
  later position (the release's causal mask, or a stricter one).

The caller decides everything else (its `trim_text_padding` switch, the tensor's shape). This module
imports nothing of `clip`: `clip.model` passes the modules and masks in.
"""

import weakref
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn.modules.module as _module
from torch import nn

# id(mask) -> (a weak reference to it, its _version when checked, whether it hides every later
# position); the entry goes when the mask does. A plain dict: this is read on every encode_text call.
_CAUSAL_CHECKED: Dict[int, Tuple["weakref.ref[torch.Tensor]", int, bool]] = {}


def _compiler_flag(name: str) -> bool:
    flag = getattr(getattr(torch, "compiler", None), name, None)
    return bool(flag()) if callable(flag) else False


def graph_capture() -> bool:
    """Whether torch.jit.trace / script, ONNX export, torch.compile or torch.export is capturing."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or _compiler_flag("is_compiling")
        or _compiler_flag("is_exporting")
    )


def _global_hooks() -> bool:
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(getattr(_module, name, None) for name in names)


def hooked(roots: Iterable[Optional[nn.Module]]) -> bool:
    """Whether a forward or backward hook is registered on any of `roots` or below, or globally."""
    if _global_hooks():
        return True
    modules = list(roots)
    for module in modules:  # grows as it goes; a plain walk: `.modules()` costs several times as much
        if module is None:
            continue
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or module._backward_pre_hooks
        ):
            return True
        modules.extend(module._modules.values())
    return False


def blocks_later_positions(mask: Optional[torch.Tensor]) -> bool:
    """Whether `mask` (an `attn_mask`) is 2-D and hides every later position from every position.

    Additive masks must hold -inf strictly above the diagonal, boolean masks True (torch's
    convention: may not attend). The answer is cached per mask tensor until it is written to.
    """
    if not isinstance(mask, torch.Tensor):
        return False
    key = id(mask)
    known = _CAUSAL_CHECKED.get(key)
    if known is not None and known[0]() is mask and known[1] == mask._version:
        return known[2]
    ok = mask.dim() == 2 and mask.device.type == "cpu"
    if ok:
        hidden = mask if mask.dtype == torch.bool else torch.isneginf(mask)
        above = torch.ones(mask.shape, dtype=torch.bool).triu_(1)
        ok = bool(hidden[above].all())
    _CAUSAL_CHECKED[key] = (
        weakref.ref(mask, lambda _, key=key: _CAUSAL_CHECKED.pop(key, None)),
        mask._version,
        ok,
    )
    return ok
