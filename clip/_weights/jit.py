"""Loading the released TorchScript archives as TorchScript (``clip.load(..., jit=True)``).

The released archives were traced on a GPU in fp16, so their graphs hold constants that pin them
there: device constants saying ``cuda`` (e.g. the device of ``torch.arange``) and dtype constants
for Half (ScalarType 5) in ``aten::to`` calls. As the original does, :func:`load_jit` rewrites
those constants for the requested device: every ``cuda`` device constant becomes that device and,
on the CPU, every Half dtype given to ``aten::to`` becomes Float, before the weights are cast with
``.float()``. All methods of every submodule are patched (``forward``, ``forward1``, ...,
``encode_image``, ``encode_text``).
"""

import types
import warnings
from typing import Any, Iterator

import torch

__all__ = ["load_jit", "patch_device", "patch_half_to_float", "EAGER_ONLY_METHODS"]

HALF = 5  # c10::ScalarType::Half, as TorchScript graphs record dtypes
FLOAT = 6  # c10::ScalarType::Float
CUDA_PREFIX = "cuda"
DTYPE_ARGUMENT = "dtype"
# The eager model's training hooks (clip/model.py): a TorchScript model has none, and gets methods of
# these names that say so instead of torch's bare AttributeError.
EAGER_ONLY_METHODS = ("set_grad_checkpointing", "lock_image_tower", "lock_text_tower")


def _graphs(module: torch.jit.ScriptModule) -> Iterator[torch._C.Graph]:
    """The graph of every method of `module` and its submodules."""
    for submodule in module.modules():
        scripted = getattr(submodule, "_c", None)
        if scripted is None:
            continue
        for name in scripted._method_names():
            yield scripted._get_method(name).graph


def _string_constants(graph: torch._C.Graph) -> Iterator[torch._C.Node]:
    for node in graph.findAllNodes("prim::Constant"):
        if "value" in node.attributeNames() and node.kindOf("value") == "s":
            yield node


def patch_device(module: torch.jit.ScriptModule, device: torch.device) -> int:
    """Rewrite every ``cuda...`` device constant of `module` to `device`; return how many changed."""
    target = str(device)
    changed = 0
    for graph in _graphs(module):
        for node in _string_constants(graph):
            value = node.s("value")
            if value.startswith(CUDA_PREFIX) and value != target:
                node.s_("value", target)
                changed += 1
    return changed


def _dtype_index(node: torch._C.Node) -> int:
    """Position of the ``dtype`` argument of an ``aten::to`` call, or -1 for overloads without one."""
    try:
        schema = torch._C.parse_schema(node.schema())
    except RuntimeError:  # "(no schema)"
        return -1
    for index, argument in enumerate(schema.arguments):
        if argument.name == DTYPE_ARGUMENT:
            return index
    return -1


def patch_half_to_float(module: torch.jit.ScriptModule) -> int:
    """Make every ``aten::to`` that casts to Half by a constant cast to Float; return how many.

    Constants are pooled in TorchScript graphs (one ``5`` may also be a size or an index), so each
    such use gets its own new Float constant instead of the shared one being rewritten.
    """
    changed = 0
    for graph in _graphs(module):
        for node in graph.findAllNodes("aten::to"):
            index = _dtype_index(node)
            if index < 0 or index >= node.inputsSize():
                continue
            source = node.inputsAt(index).node()
            if (
                source.kind() == "prim::Constant"
                and "value" in source.attributeNames()
                and source.kindOf("value") == "i"
                and source.i("value") == HALF
            ):
                constant = graph.create("prim::Constant")
                constant.i_("value", FLOAT)
                constant.output().setType(torch._C.IntType.get())
                constant.insertBefore(node)
                node.replaceInput(index, constant.output())
                changed += 1
    return changed


def load_jit(path: str, device: torch.device) -> torch.jit.ScriptModule:
    """``torch.jit.load`` a released archive onto `device` and patch its graphs for that device.

    This compiles and runs TorchScript from the file: only use it on files you trust (the released
    checkpoints are verified by SHA256 before they get here).
    """
    map_location = device if device.type != "cpu" else torch.device("cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
        model = torch.jit.load(path, map_location=map_location).eval()
    patch_device(model, device)
    if device.type == "cpu":
        patch_half_to_float(model)
        model.float()
    for name in EAGER_ONLY_METHODS:
        setattr(model, name, types.MethodType(_eager_only(name), model))
    return model


def _eager_only(name: str) -> Any:
    def refuse(self: torch.jit.ScriptModule, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            f"{name}() is a method of the eager model; this model was loaded with jit=True (TorchScript "
            "graphs, for inference). Load it with jit=False (the default) to train it."
        )

    refuse.__name__ = name
    return refuse
