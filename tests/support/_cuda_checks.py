"""Device-independent checks behind the CUDA tests (tests/test_cuda.py) and benchmarks/gpu_check.py.

Torch only: this module imports neither our `clip` package nor the original, so the benchmark's
processes can load it by path. Every function here runs on the CPU as well, and
tests/test_cuda_checks.py exercises them there, so that a GPU window is spent on the GPU tests
themselves, not on debugging the checks.

* :func:`device_constants` / :func:`cpu_device_constants`: the device strings written into the
  graphs of a TorchScript module (what ``clip.load(..., jit=True)`` patches);
* :func:`feature_errors` / :func:`assert_features_close`: how far reduced-precision features are
  from fp32 reference features, against the tolerance :data:`FP16_FEATURE_REL_ERR`;
* :class:`OpRecorder` / :func:`sdpa_ops` / :func:`host_reads`: the aten operators a call runs, to
  see which attention kernel it took and whether it read a tensor's value back to the host.
"""

from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "FP16_FEATURE_REL_ERR",
    "FUSED_SDPA_OPS",
    "MATH_SDPA_OPS",
    "HOST_READ_OPS",
    "device_constants",
    "cpu_device_constants",
    "to_dtype_constants",
    "feature_errors",
    "assert_features_close",
    "OpRecorder",
    "sdpa_ops",
    "host_reads",
]

# fp16 features against fp32 features of the same (fp16-valued) weights, per row:
# ||half - full|| / ||full||. Only the activations differ: the fp32 reference model holds the very
# fp16 weights cast up, so the error is the rounding of activations to fp16 (unit roundoff
# u = 2**-11 ~ 4.9e-4) after every product, attention and residual sum (LayerNorm and the products'
# accumulation stay fp32). Those roundings are independent, so they add up like a random walk:
# about 5 per block times 12 blocks gives a scale of u * sqrt(60) ~ 4e-3. Measured with fp16
# activations on the CPU against fp32 (the encoders of `build_model(make_state_dict(name, 0))`
# before and after `.float()`, 4 images and 4 texts): ViT-B/32 1.2e-3 (image), 1.3e-3 (text);
# RN50 1.1e-3 (image), 1.2e-3 (text); tiny-vit / tiny-rn at most 1.1e-3
# (tests/test_cuda_checks.py checks the tiny ones). 1e-2 leaves a factor of ~8 for other kernels'
# rounding orders (cuBLAS, fused attention) and stays well below what a real defect (a missing
# mask, a wrong cast, a skipped layer) does: tens of percent. It implies a cosine similarity of at
# least 1 - 1e-2**2 / 2 = 0.99995 per row.
FP16_FEATURE_REL_ERR = 1e-2

# The aten operators behind `F.scaled_dot_product_attention`, by backend.
FUSED_SDPA_OPS = frozenset(
    {
        "aten._scaled_dot_product_flash_attention.default",
        "aten._scaled_dot_product_efficient_attention.default",
        "aten._scaled_dot_product_cudnn_attention.default",
        "aten._scaled_dot_product_flash_attention_for_cpu.default",
    }
)
MATH_SDPA_OPS = frozenset({"aten._scaled_dot_product_attention_math.default"})
_SDPA_PREFIX = "aten._scaled_dot_product"

# Operators that read a tensor's value back to the host: on a GPU each one waits for the device.
HOST_READ_OPS = frozenset(
    {
        "aten._local_scalar_dense.default",  # .item(), int(t), float(t), bool(t)
        "aten.is_nonzero.default",
        "aten.equal.default",
        "aten.nonzero.default",  # its output size depends on the values
        "aten.masked_select.default",
        "aten.unique_consecutive.default",
        "aten._unique2.default",
    }
)


# ---- graph constants ---------------------------------------------------------------------------


def _graphs(module: torch.jit.ScriptModule) -> Iterator[torch._C.Graph]:
    """The graph of every method of `module` and of each of its submodules.

    Written here again on purpose, not imported from clip/_weights/jit.py: a method the patcher's own walk
    missed would then be missed by the check too.
    """
    for submodule in module.modules():
        scripted = getattr(submodule, "_c", None)
        if scripted is None:
            continue
        for name in scripted._method_names():
            yield scripted._get_method(name).graph


def _is_device_string(value: str) -> bool:
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        return False
    return True


def device_constants(module: torch.jit.ScriptModule) -> List[str]:
    """Every string constant of `module`'s graphs that names a device ("cuda", "cuda:0", "cpu", ...)."""
    found = []
    for graph in _graphs(module):
        for node in graph.findAllNodes("prim::Constant"):
            if "value" in node.attributeNames() and node.kindOf("value") == "s":
                value = node.s("value")
                if _is_device_string(value):
                    found.append(value)
    return found


def cpu_device_constants(module: torch.jit.ScriptModule) -> List[str]:
    """The device constants of `module`'s graphs that pin work to the CPU."""
    return [value for value in device_constants(module) if torch.device(value).type == "cpu"]


def to_dtype_constants(module: torch.jit.ScriptModule) -> List[int]:
    """The constant dtypes (ScalarType numbers: 5 Half, 6 Float) that `module`'s graphs give ``aten::to``."""
    found = []
    for graph in _graphs(module):
        for node in graph.findAllNodes("aten::to"):
            try:
                schema = torch._C.parse_schema(node.schema())
            except RuntimeError:  # "(no schema)"
                continue
            names = [argument.name for argument in schema.arguments]
            if "dtype" not in names or names.index("dtype") >= node.inputsSize():
                continue
            source = node.inputsAt(names.index("dtype")).node()
            if source.kind() == "prim::Constant" and "value" in source.attributeNames():
                if source.kindOf("value") == "i":
                    found.append(source.i("value"))
    return found


# ---- feature tolerances ------------------------------------------------------------------------


def feature_errors(actual: torch.Tensor, expected: torch.Tensor) -> Dict[str, float]:
    """Per-row errors of `actual` (any dtype or device) against `expected` features, in fp64 on the CPU.

    Returns the worst row's relative L2 error ``||a - e|| / ||e||`` ("rel_err"), the smallest
    cosine similarity ("cosine") and the largest absolute difference ("max_abs").
    """
    if actual.shape != expected.shape or actual.dim() != 2:
        raise ValueError(
            f"expected two (N, D) feature tensors; got {tuple(actual.shape)} and {tuple(expected.shape)}"
        )
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if not a.shape[0]:
        return {"rel_err": 0.0, "cosine": 1.0, "max_abs": 0.0}
    rel = (a - e).norm(dim=1) / e.norm(dim=1)
    cosine = torch.nn.functional.cosine_similarity(a, e, dim=1)
    return {
        "rel_err": float(rel.max()),
        "cosine": float(cosine.min()),
        "max_abs": float((a - e).abs().max()),
    }


def assert_features_close(
    actual: torch.Tensor, expected: torch.Tensor, what: str, max_rel_err: float = FP16_FEATURE_REL_ERR
) -> Dict[str, float]:
    """Fail unless every row of `actual` lies within `max_rel_err` (relative L2) of `expected`'s."""
    errors = feature_errors(actual, expected)
    if not errors["rel_err"] <= max_rel_err:  # NaN fails too
        raise AssertionError(
            f"{what}: relative error {errors['rel_err']:.3g} > {max_rel_err:g} "
            f"(cosine {errors['cosine']:.6f}, max abs diff {errors['max_abs']:.3g})"
        )
    return errors


# ---- operator recording -------------------------------------------------------------------------


class OpRecorder(TorchDispatchMode):
    """Records the name of every aten operator run inside it (``with OpRecorder() as ops: ...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None
    ) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _recorded(fn: Callable[[], Any]) -> List[str]:
    with OpRecorder() as recorder:
        fn()
    return recorder.ops


def sdpa_ops(fn: Callable[[], Any]) -> Set[str]:
    """The scaled-dot-product-attention operators `fn()` ran (see FUSED_SDPA_OPS, MATH_SDPA_OPS)."""
    return {name for name in _recorded(fn) if name.startswith(_SDPA_PREFIX)}


def host_reads(fn: Callable[[], Any]) -> List[str]:
    """The operators `fn()` ran that read tensor values back to the host (HOST_READ_OPS), in order."""
    return [name for name in _recorded(fn) if name in HOST_READ_OPS]
