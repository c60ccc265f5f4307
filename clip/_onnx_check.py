"""The check `clip.export.to_onnx` runs on the graphs it wrote: onnxruntime against the PyTorch model.

Built-in inputs: the CLIP diagram shipped with the package (preprocessed as `clip.load`'s
`preprocess` does) and two seeded noise images; an empty text, short ones, one that fills every
position of the context, and non-ASCII ones. Each is run alone and in batches of several sizes, and
every row is compared with the PyTorch model's features of the same input (fp32):

- fp32 graphs: the largest absolute difference at most FP32_MAX_DIFF times the largest absolute
  feature value, and every row's cosine similarity at least FP32_MIN_COSINE;
- fp16 graphs: every row's cosine at least FP16_MIN_COSINE (fp16 keeps about 3 decimal digits).

Rows of one input alone and inside a batch are compared with the same reference, so a graph whose
batch rows interact, or whose text length was fixed when it was captured, fails.
"""

import math
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ._onnx_graphs import require

__all__ = [
    "FP32_MAX_DIFF",
    "FP32_MIN_COSINE",
    "FP16_MIN_COSINE",
    "CHECK_TEXTS",
    "GraphCheck",
    "check_images",
    "check_tokens",
    "check_graph",
]

FP32_MAX_DIFF = 1e-4  # of the largest absolute feature value
FP32_MIN_COSINE = 0.99999
FP16_MIN_COSINE = 0.999
CHECK_TEXTS = (
    "",
    "a diagram",
    "a photo of a cat sitting on a red sofa " * 12,  # cut to the context length: fills every position
    "一张猫的照片",
    "Café, crème brûlée & naïve 🍰!",
)
NOISE_IMAGES = 2
NOISE_SEED = 0
# Which rows of the built-in inputs run together: each alone, then batches of several sizes
IMAGE_RUNS: Tuple[Tuple[int, ...], ...] = ((0,), (1,), (2,), (2, 0), (0, 1, 2))
TEXT_RUNS: Tuple[Tuple[int, ...], ...] = ((0,), (1,), (2,), (3,), (4,), (4, 2), (0, 1, 2, 3, 4))
GPU_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class GraphCheck:
    """The figures of one graph's check: onnxruntime's outputs against the PyTorch model's.

    Attributes:
        graph: "visual" or "textual".
        dtype: "float32" or "float16", the graph's floating-point type.
        provider: the onnxruntime execution provider that ran the graph.
        batches: the batch sizes run (each input alone, and in batches).
        max_abs_diff: the largest absolute difference of any feature value.
        max_abs_feature: the largest absolute feature value of the PyTorch model (the scale).
        min_cosine: the smallest cosine similarity between a row and its PyTorch counterpart.
        max_diff_limit: the bound on max_abs_diff / max_abs_feature (None: not bounded, fp16).
        min_cosine_limit: the bound on min_cosine.
    """

    graph: str
    dtype: str
    provider: str
    batches: Tuple[int, ...]
    max_abs_diff: float
    max_abs_feature: float
    min_cosine: float
    max_diff_limit: Optional[float]
    min_cosine_limit: float

    @property
    def relative_diff(self) -> float:
        """max_abs_diff as a fraction of max_abs_feature."""
        return self.max_abs_diff / self.max_abs_feature if self.max_abs_feature else math.inf

    @property
    def passed(self) -> bool:
        """Whether both bounds hold (NaN never passes)."""
        diff_ok = self.max_diff_limit is None or self.relative_diff <= self.max_diff_limit
        return bool(diff_ok and self.min_cosine >= self.min_cosine_limit)

    def summary(self) -> str:
        """One line: the figures, the bounds, and the verdict."""
        diff_limit = f" (limit {self.max_diff_limit:g})" if self.max_diff_limit is not None else ""
        return (
            f"{self.graph}.onnx {self.dtype} on {self.provider}, batches "
            f"{','.join(map(str, self.batches))}: max |diff| {self.max_abs_diff:.3g} = "
            f"{self.relative_diff:.3g} of max |feature| {self.max_abs_feature:.3g}{diff_limit}, "
            f"min cosine {self.min_cosine:.7f} (limit {self.min_cosine_limit:g}): "
            f"{'ok' if self.passed else 'FAILED'}"
        )

    def as_dict(self) -> Dict[str, Any]:
        """The figures as JSON-ready values (with relative_diff and passed)."""
        out = asdict(self)
        out["batches"] = list(self.batches)
        out.update(relative_diff=self.relative_diff, passed=self.passed)
        return out


def check_images(resolution: int) -> torch.Tensor:
    """(3, 3, R, R) fp32: the CLIP diagram preprocessed like `clip.load`'s `preprocess`, two noise images."""
    from PIL import Image

    from ._preprocess import _transform

    with resources.as_file(resources.files("clip") / "CLIP.png") as path, Image.open(path) as image:
        diagram = _transform(resolution)(image)
    generator = torch.Generator().manual_seed(NOISE_SEED)
    noise = torch.randn(NOISE_IMAGES, 3, resolution, resolution, generator=generator)
    return torch.cat([diagram[None], noise])


def check_tokens(context_length: int) -> torch.Tensor:
    """(5, context_length) int32 ids of CHECK_TEXTS, as `clip.tokenize(..., truncate=True)` gives them."""
    from .clip import tokenize

    return tokenize(list(CHECK_TEXTS), context_length=context_length, truncate=True).to(torch.int32)


def _provider(dtype: str) -> str:
    """Where to run a graph: fp16 graphs on a GPU when onnxruntime has one, else the CPU."""
    (ort,) = require("onnxruntime")
    if dtype == "float16" and GPU_PROVIDER in ort.get_available_providers():
        return GPU_PROVIDER
    return CPU_PROVIDER


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_graph(
    graph: str,
    path: str,
    inputs: torch.Tensor,
    reference: torch.Tensor,
    runs: Sequence[Tuple[int, ...]],
    dtype: str,
) -> GraphCheck:
    """Run the graph at `path` on the rows `runs` of `inputs` and compare with `reference` (the PyTorch
    model's fp32 features of all `inputs`)."""
    (ort,) = require("onnxruntime")
    provider = _provider(dtype)
    try:
        session = ort.InferenceSession(path, providers=[provider])
    except Exception as exc:  # onnxruntime's own error types (InvalidGraph, NotImplemented, ...)
        raise RuntimeError(
            f"onnxruntime {ort.__version__} cannot load the exported {graph}.onnx: {exc}. An older "
            "onnxruntime may lack newer opsets: pass a lower opset, or upgrade onnxruntime"
        ) from exc
    binding = session.get_inputs()[0]
    feed_dtype = np.float16 if binding.type == "tensor(float16)" else None
    expected = reference.detach().double().numpy()
    diffs: List[float] = []
    cosines: List[np.ndarray] = []
    for rows in runs:
        feed = inputs[list(rows)].numpy()
        if feed_dtype is not None:
            feed = feed.astype(feed_dtype)
        (out,) = session.run(None, {binding.name: feed})
        out = out.astype(np.float64)
        want = expected[list(rows)]
        diffs.append(float(np.max(np.abs(out - want))))
        cosines.append(_cosines(out, want))
    fp32 = dtype == "float32"
    return GraphCheck(
        graph=graph,
        dtype=dtype,
        provider=provider,
        batches=tuple(sorted({len(rows) for rows in runs})),
        max_abs_diff=float(np.max(diffs)),  # NaN stays NaN (and fails)
        max_abs_feature=float(np.max(np.abs(expected))),
        min_cosine=float(np.min(np.concatenate(cosines))),
        max_diff_limit=FP32_MAX_DIFF if fp32 else None,
        min_cosine_limit=FP32_MIN_COSINE if fp32 else FP16_MIN_COSINE,
    )
