"""The two encoders of a CLIP model as ONNX graphs: what `clip.export.to_onnx` writes, and checks
on the written files that need no runtime.

Each graph is exported from a thin module that calls the model's own encode method, so that the
graph computes what `encode_image` / `encode_text` return and its input and output carry the
names users bind to. The exporter is torch's (``torch.onnx.export(..., dynamo=True)``: the model
captured by `torch.export` with the batch as a symbolic dimension, translated by onnxscript).
The text graph always computes all `context_length` positions under the causal mask: the model
skips padding only where nothing captures the call.

onnx, onnxscript and onnxruntime are optional (the ``onnx`` extra); `require` imports them, or
says how to install them.
"""

import importlib
import warnings
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "EXTRA_INSTALL",
    "MIN_OPSET",
    "MAX_OPSET",
    "IMAGE_INPUT",
    "IMAGE_OUTPUT",
    "TEXT_INPUT",
    "TEXT_OUTPUT",
    "BATCH_DIM",
    "require",
    "ImageEncoder",
    "TextEncoder",
    "export_graph",
    "graph_problems",
]

EXTRA_INSTALL = 'pip install "clip-faithful[onnx]"'
# The exporter writes opset 18 or newer: its Split, Reduce* and friends take opset 18's forms, which
# onnx's version converter cannot bring down to 17.
MIN_OPSET = 18
# The newest opset the export is checked with (torch 2.14, onnx 1.23, onnxruntime 1.32); above it the
# exporter's version conversion fails for some operators (e.g. Attention, opset 23, to 26).
MAX_OPSET = 25
IMAGE_INPUT, IMAGE_OUTPUT = "image", "image_features"
TEXT_INPUT, TEXT_OUTPUT = "text", "text_features"
BATCH_DIM = "batch"  # the symbolic name of the first dimension of every input and output
STANDARD_DOMAINS = ("", "ai.onnx")  # the standard operator set (ATen fallbacks live in other domains)
EXAMPLE_BATCH = 2  # the exporter specialises a dimension of size 1: trace with 2
# Graphs up to this size keep their weights inside the .onnx file; protobuf caps one file at 2 GiB.
INLINE_WEIGHTS_MAX_BYTES = 1800 * 1024**2
# onnx's TensorProto element types of the inputs and outputs this module writes
ONNX_ELEMENT_TYPES = {1: "float32", 6: "int32", 7: "int64", 10: "float16"}


def require(*modules: str) -> Tuple[object, ...]:
    """Import `modules` (of onnx, onnxscript, onnxruntime) and return them; an ImportError naming the
    extra to install when one is missing."""
    loaded, missing = [], []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed. Install the optional dependencies with: {EXTRA_INSTALL}"
        )
    return tuple(loaded)


class ImageEncoder(nn.Module):
    """`model.encode_image` as a module: image (N, 3, R, R) -> image_features (N, embed_dim)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image)

    def weight_bytes(self) -> int:
        """Bytes of the weights the graph holds (the image tower's)."""
        return _tensor_bytes(self.model.visual)


class TextEncoder(nn.Module):
    """`model.encode_text` as a module: text (N, context_length) -> text_features (N, embed_dim)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(text)

    def weight_bytes(self) -> int:
        """Bytes of the weights the graph holds (all but the image tower's)."""
        return _tensor_bytes(self.model) - _tensor_bytes(self.model.visual)


def _tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def export_graph(
    encoder: "ImageEncoder | TextEncoder",
    example: torch.Tensor,
    names: Tuple[str, str],
    path: str,
    opset: int,
) -> None:
    """Write `encoder` (ImageEncoder or TextEncoder) as the ONNX graph `path`, the first dimension of
    its input and output dynamic. Weights over INLINE_WEIGHTS_MAX_BYTES go to ``path + ".data"``."""
    input_name, output_name = names
    batch = torch.export.Dim(BATCH_DIM, min=1)
    with warnings.catch_warnings(), torch.no_grad():
        # the exporter's own notes (deprecations of its internals, fallbacks it tried) are not the
        # user's to act on; a failure still raises
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            (example,),
            path,
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={input_name: {0: batch}},
            external_data=encoder.weight_bytes() > INLINE_WEIGHTS_MAX_BYTES,
            verbose=False,
        )


def _shape(value_info: object) -> List[object]:
    dims = value_info.type.tensor_type.shape.dim  # type: ignore[attr-defined]
    return [d.dim_param if d.dim_param else d.dim_value for d in dims]


def describe_io(path: str) -> Dict[str, Dict[str, object]]:
    """{"input": {...}, "output": {...}}: name, dtype and shape (a str for a symbolic dimension) of the
    one input and the one output of the graph at `path` (read without its weights)."""
    (onnx,) = require("onnx")
    graph = onnx.load(path, load_external_data=False).graph
    out: Dict[str, Dict[str, object]] = {}
    for role, values in (("input", graph.input), ("output", graph.output)):
        value = values[0]
        elem = value.type.tensor_type.elem_type
        out[role] = {
            "name": value.name,
            "dtype": ONNX_ELEMENT_TYPES.get(elem, str(elem)),
            "shape": _shape(value),
        }
    return out


def graph_problems(path: str, names: Tuple[str, str], shapes: Sequence[Sequence[object]]) -> List[str]:
    """What is wrong with the graph at `path` ([] when nothing): operators outside the standard ONNX
    domains (ATen fallbacks, custom ops, local functions), inputs or outputs other than the one
    `names`, shapes other than `shapes` (input, output; BATCH_DIM where the batch is dynamic)."""
    (onnx,) = require("onnx")
    model = onnx.load(path, load_external_data=False)
    problems = []
    foreign = sorted(
        {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS}
    )
    if foreign:
        problems.append(f"non-standard operators {', '.join(foreign)}")
    if model.functions:
        problems.append(f"{len(model.functions)} local functions (only standard operators are expected)")
    inputs = [v.name for v in model.graph.input]
    outputs = [v.name for v in model.graph.output]
    if inputs != [names[0]] or outputs != [names[1]]:
        problems.append(f"inputs {inputs} and outputs {outputs}; expected [{names[0]!r}] and [{names[1]!r}]")
        return problems
    for role, value, expected in (
        ("input", model.graph.input[0], shapes[0]),
        ("output", model.graph.output[0], shapes[1]),
    ):
        found = _shape(value)
        if found[1:] != list(expected[1:]) or not isinstance(found[0], str) or not found[0]:
            problems.append(
                f"{role} {value.name!r} has shape {found}; expected {list(expected)} (dynamic batch)"
            )
    return problems
