"""CLIP's image and text encoders as two ONNX graphs, checked against the PyTorch model, and a small
onnxruntime runner for them.

>>> import clip, clip.export
>>> model, _ = clip.load("ViT-B/32", device="cpu")
>>> report = clip.export.to_onnx(model, "vit-b-32-onnx", model_name="ViT-B/32")
>>> onnx_model = clip.export.OnnxModel("vit-b-32-onnx")

`to_onnx` writes ``visual.onnx`` (input ``image`` [batch, 3, R, R] -> ``image_features``
[batch, D]), ``textual.onnx`` (input ``text`` int32 [batch, 77] -> ``text_features`` [batch, D])
and ``clip_export.json`` (dimensions, preprocessing, ``logit_scale``, opset, dtype, versions,
SHA256 of each graph, the check's figures). The batch is dynamic, and only standard ONNX operators
are used. `OnnxModel` runs the folder with onnxruntime and numpy (and Pillow for `preprocess`).

onnx, onnxscript and onnxruntime are optional: ``pip install "clip-faithful[onnx]"``. See
docs/export.md.
"""

import copy
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._onnx_check import (
    FP16_MIN_COSINE,
    FP32_MAX_DIFF,
    FP32_MIN_COSINE,
    IMAGE_RUNS,
    TEXT_RUNS,
    GraphCheck,
    check_graph,
    check_images,
    check_tokens,
)
from ._onnx_folder import EXPORT_FILES, GRAPH_FILES, METADATA_FILE, check_destination, writing_folder
from ._onnx_graphs import (
    BATCH_DIM,
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    MAX_OPSET,
    MIN_OPSET,
    TEXT_INPUT,
    TEXT_OUTPUT,
    ImageEncoder,
    TextEncoder,
    describe_io,
    export_graph,
    graph_problems,
    require,
)
from ._preprocess import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "to_onnx",
    "OnnxModel",
    "ExportReport",
    "ExportCheckError",
    "GraphCheck",
    "EXPORT_FILES",
    "METADATA_FILE",
    "FP32_MAX_DIFF",
    "FP32_MIN_COSINE",
    "FP16_MIN_COSINE",
]

FORMAT = "clip-onnx-export"
FORMAT_VERSION = 1
DTYPES = {torch.float32: "float32", torch.float16: "float16"}
HASH_CHUNK_BYTES = 1 << 20
EXPORTER = "torch.onnx.export(dynamo=True)"
PathLike = Union[str, "os.PathLike[str]"]


class ExportCheckError(RuntimeError):
    """The written graphs disagree with the PyTorch model beyond the bounds; nothing was kept.

    `checks` holds the figures of both graphs (`GraphCheck`).
    """

    def __init__(self, checks: Sequence[GraphCheck]) -> None:
        self.checks = tuple(checks)
        failed = ", ".join(f"{c.graph}.onnx" for c in self.checks if not c.passed)
        lines = "\n".join(f"  {c.summary()}" for c in self.checks)
        super().__init__(
            f"the exported {failed} disagreed with the PyTorch model; nothing was written:\n{lines}"
        )


@dataclass(frozen=True)
class ExportReport:
    """What `to_onnx` wrote: the folder, the content of its clip_export.json, the check's figures."""

    out_dir: str
    metadata: Dict[str, Any]
    checks: Tuple[GraphCheck, ...]  # empty when check=False

    @property
    def files(self) -> Tuple[str, ...]:
        """Paths of the files written (the graphs, their weight files if any, the metadata)."""
        names = [g["file"] for g in self.metadata["graphs"].values()]
        names += [g["data_file"] for g in self.metadata["graphs"].values() if g.get("data_file")]
        return tuple(os.path.join(self.out_dir, name) for name in [*names, METADATA_FILE])


# ------------------------------------------------------------------------------------------------
# to_onnx


def to_onnx(
    model: torch.nn.Module,
    out_dir: PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    opset: Optional[int] = None,
    check: bool = True,
    force: bool = False,
    model_name: Optional[str] = None,
    progress: bool = False,
) -> ExportReport:
    """Write `model`'s image and text encoders to `out_dir` as ONNX graphs, checked by default.

    Args:
        model: a CLIP model from ``clip.load(..., jit=False)`` (any device; fp32, or the release's
            fp16 weights, which convert exactly). Not a ``jit=True`` TorchScript module, an int8
            (`clip.quantize`) or a bf16 model: those raise, saying what to pass instead.
        out_dir: a folder to create (or an empty one). It is written beside its final place and
            renamed into it at the end: on any error nothing is left there.
        dtype: torch.float32 (the default) or torch.float16, the graphs' floating-point type
            (fp16 graphs take and return float16, for GPUs).
        opset: the ONNX opset (None: the exporter's default, 20 with torch 2.14), from 18 to 25.
        check: run both graphs in onnxruntime on built-in inputs (several batch sizes; an empty, a
            short, a 77-token and non-ASCII texts, each alone and in a batch) and compare with the
            model: fp32 within FP32_MAX_DIFF of the largest feature value and cosine >=
            FP32_MIN_COSINE, fp16 cosine >= FP16_MIN_COSINE. ExportCheckError if not.
        force: replace an earlier export in `out_dir` (never a folder of other files).
        model_name: the name recorded in clip_export.json (e.g. "ViT-B/32").
        progress: show a progress bar (tqdm) over the export and check steps.

    Returns:
        An `ExportReport`: the folder, clip_export.json's content and the check's figures.

    Raises:
        ImportError: onnx, onnxscript or onnxruntime is missing (``pip install "clip-faithful[onnx]"``).
        TypeError / ValueError: a model, dtype or opset that cannot be exported.
        OSError: `out_dir` cannot be written or holds other files (FileExistsError, ...).
        ExportCheckError: the graphs disagree with the model.
    """
    require("onnx", "onnxscript", *(("onnxruntime",) if check else ()))
    dtype_name = _dtype_name(dtype)
    opset = _opset(opset)
    source = _fp32_cpu_model(model)
    check_destination(out_dir, force)
    exported = source if dtype == torch.float32 else copy.deepcopy(source).to(dtype)
    resolution, context = source.visual.input_resolution, source.context_length
    images, tokens = check_images(resolution), check_tokens(context)
    embed = source.text_projection.shape[1]
    plan = (
        (
            "visual",
            ImageEncoder(exported),
            images[:2].to(dtype),
            (IMAGE_INPUT, IMAGE_OUTPUT),
            (3, resolution, resolution),
        ),
        ("textual", TextEncoder(exported), tokens[:2], (TEXT_INPUT, TEXT_OUTPUT), (context,)),
    )
    from tqdm import tqdm

    steps = len(plan) * (2 if check else 1)
    with (
        writing_folder(out_dir, force) as scratch,
        tqdm(total=steps, desc="clip export", disable=not progress) as bar,
    ):
        for graph, encoder, example, names, shape in plan:
            bar.set_postfix_str(f"exporting {graph}.onnx")
            path = os.path.join(scratch, f"{graph}.onnx")
            export_graph(encoder, example, names, path, opset)
            problems = graph_problems(path, names, [(BATCH_DIM, *shape), (BATCH_DIM, embed)])
            if problems:
                raise RuntimeError(
                    f"the exported {graph}.onnx is not what was asked for: {'; '.join(problems)}"
                )
            bar.update()
        checks: Tuple[GraphCheck, ...] = ()
        if check:
            with torch.no_grad():
                references = {"visual": source.encode_image(images), "textual": source.encode_text(tokens)}
            runs = {"visual": (images, IMAGE_RUNS), "textual": (tokens, TEXT_RUNS)}
            results = []
            for graph in ("visual", "textual"):
                bar.set_postfix_str(f"checking {graph}.onnx")
                inputs, rows = runs[graph]
                path = os.path.join(scratch, f"{graph}.onnx")
                results.append(check_graph(graph, path, inputs, references[graph], rows, dtype_name))
                bar.update()
            checks = tuple(results)
            if not all(c.passed for c in checks):
                raise ExportCheckError(checks)
        metadata = _metadata(source, scratch, dtype_name, model_name, checks if check else None)
        with open(os.path.join(scratch, METADATA_FILE), "w", encoding="utf-8") as handle:
            json.dump(metadata, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    return ExportReport(out_dir=os.fspath(out_dir), metadata=metadata, checks=checks)


def _dtype_name(dtype: object) -> str:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(
        f"dtype must be torch.float32 or torch.float16; got {dtype!r}. fp32 graphs give the model's "
        "numbers on any runtime; fp16 graphs are for GPUs."
    )


def _opset(opset: Optional[int]) -> Optional[int]:
    if opset is None:
        return None
    (onnx,) = require("onnx")
    newest = min(MAX_OPSET, onnx.defs.onnx_opset_version())
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"opset must be an integer from {MIN_OPSET} to {newest}; got {opset!r}. Leave it out for the "
            "exporter's default."
        )
    return opset


def _fp32_cpu_model(model: object) -> Any:
    """`model` as an fp32 CPU model in eval mode (a copy when it is not one already); TypeError or
    ValueError, saying what to pass instead, for models that cannot be exported."""
    from ._quantize import Int8Linear, Int8SelfAttention
    from .model import CLIP

    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise TypeError(
            "to_onnx exports the Python model, not a TorchScript module (clip.load(..., jit=True)): "
            "load the same weights with jit=False (the default), e.g. clip.load('ViT-B/32', jit=False), "
            "and pass that model"
        )
    if not isinstance(model, CLIP):
        raise TypeError(
            f"to_onnx expects a clip.model.CLIP (from clip.load(..., jit=False)); got {type(model).__name__}"
        )
    int8 = [
        name for name, module in model.named_modules() if isinstance(module, (Int8Linear, Int8SelfAttention))
    ]
    if int8:
        raise ValueError(
            f"to_onnx got an int8 model (clip.quantize / quantize='int8'; {len(int8)} int8 layers, e.g. "
            f"{int8[0]!r}): torch's int8 kernels have no standard ONNX form. Pass the fp32 model "
            "(clip.load without quantize); for int8 graphs, quantize the exported ones with "
            "onnxruntime.quantization.quantize_dynamic (see docs/export.md)"
        )
    tensors = [*model.parameters(), *model.buffers()]
    floating = {t.dtype for t in tensors if t.is_floating_point()}
    if floating - {torch.float32, torch.float16}:
        found = ", ".join(
            sorted(str(d).replace("torch.", "") for d in floating - {torch.float32, torch.float16})
        )
        raise ValueError(
            f"to_onnx got a model with {found} weights: their values are rounded from the release's, so "
            "the graphs would not compute its numbers. Pass the fp32 model (clip.load(name) on the CPU, "
            "or dtype=torch.float32); for half-precision graphs pass dtype=torch.float16 to to_onnx"
        )
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if floating == {torch.float32} and on_cpu and not model.training:
        return model
    # the release's fp16 weights (a model loaded on CUDA) convert to fp32 exactly
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _graph_entry(folder: str, graph: str) -> Dict[str, Any]:
    name = f"{graph}.onnx"
    path = os.path.join(folder, name)
    entry: Dict[str, Any] = {"file": name, "sha256": _sha256(path), "bytes": os.path.getsize(path)}
    entry.update(describe_io(path))
    data = f"{name}.data"
    if os.path.exists(os.path.join(folder, data)):
        entry.update(data_file=data, data_sha256=_sha256(os.path.join(folder, data)))
    return entry


def _metadata(
    model: Any, folder: str, dtype: str, model_name: Optional[str], checks: Optional[Tuple[GraphCheck, ...]]
) -> Dict[str, Any]:
    """The content of clip_export.json."""
    import onnx
    import onnxscript

    from . import __version__
    from .model import CLIPDimensions, ModifiedResNet

    dims = asdict(CLIPDimensions.from_state_dict(model.state_dict()))
    resolution = model.visual.input_resolution
    opsets = {
        o.domain: o.version
        for o in onnx.load(os.path.join(folder, GRAPH_FILES[0]), load_external_data=False).opset_import
    }
    logit_scale = float(model.logit_scale.detach())
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "architecture": "ResNet" if isinstance(model.visual, ModifiedResNet) else "ViT",
        "embed_dim": dims["embed_dim"],
        "input_resolution": resolution,
        "context_length": model.context_length,
        "vocab_size": model.vocab_size,
        "dimensions": dims,
        "preprocess": {
            "resize": resolution,  # the shorter side, bicubic
            "resize_side": "shorter",
            "interpolation": "bicubic",
            "crop": resolution,  # the centre crop_size x crop_size
            "mode": "RGB",
            "scale": 1 / 255,  # 8-bit levels to [0, 1], then (x - mean) / std per channel
            "mean": list(OPENAI_DATASET_MEAN),
            "std": list(OPENAI_DATASET_STD),
        },
        "logit_scale": logit_scale,  # as the model's parameter: logits use exp(logit_scale)
        "logit_scale_exp": math.exp(logit_scale),
        "opset": opsets.get("", opsets.get("ai.onnx")),
        "dtype": dtype,
        "graphs": {graph: _graph_entry(folder, graph) for graph in ("visual", "textual")},
        "check": None if checks is None else {c.graph: c.as_dict() for c in checks},
        "clip_version": __version__,
        "torch_version": str(torch.__version__),
        "onnx_version": onnx.__version__,
        "onnxscript_version": onnxscript.__version__,
        "exporter": EXPORTER,
    }


# ------------------------------------------------------------------------------------------------
# OnnxModel


class OnnxModel:
    """The two graphs of a `to_onnx` folder in onnxruntime, with the preprocessing of its json.

    >>> model = OnnxModel("vit-b-32-onnx")
    >>> image = model.preprocess(Image.open("CLIP.png"))[None]          # (1, 3, 224, 224) float32
    >>> text = clip.tokenize(["a diagram", "a dog", "a cat"]).numpy()   # (3, 77) int32
    >>> logits_per_image, logits_per_text = model(image, text)

    Args:
        out_dir: the folder `to_onnx` (or ``clip export``) wrote.
        providers: onnxruntime execution providers (default: onnxruntime's, the CPU unless a GPU
            build is installed).
        session_options: an ``onnxruntime.SessionOptions`` for both sessions (threads, ...).
        verify: check each file's SHA256 against clip_export.json first (about a second per GB).

    Attributes:
        metadata: the content of clip_export.json.
        input_resolution, context_length, embed_dim, vocab_size: the model's dimensions.
        logit_scale: the model's `logit_scale` parameter (logits are scaled by its exp).
        dtype: the graphs' floating-point numpy dtype (float32 or float16).
    """

    def __init__(
        self,
        out_dir: PathLike,
        *,
        providers: Optional[Sequence[Any]] = None,
        session_options: Any = None,
        verify: bool = True,
    ) -> None:
        (ort,) = require("onnxruntime")
        self.out_dir = os.fspath(out_dir)
        self.metadata = _read_metadata(self.out_dir)
        if verify:
            _verify_files(self.out_dir, self.metadata)
        self.input_resolution = int(self.metadata["input_resolution"])
        self.context_length = int(self.metadata["context_length"])
        self.embed_dim = int(self.metadata["embed_dim"])
        self.vocab_size = int(self.metadata["vocab_size"])
        self.logit_scale = float(self.metadata["logit_scale"])
        self.dtype = np.dtype(self.metadata["dtype"])
        graphs = self.metadata["graphs"]
        self._visual = ort.InferenceSession(
            os.path.join(self.out_dir, graphs["visual"]["file"]), session_options, providers=providers
        )
        self._textual = ort.InferenceSession(
            os.path.join(self.out_dir, graphs["textual"]["file"]), session_options, providers=providers
        )

    def __repr__(self) -> str:
        return f"OnnxModel({self.out_dir!r}, model={self.metadata.get('model')!r}, dtype={self.dtype.name})"

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """A PIL image -> (3, R, R) float32, as the model's `preprocess` from `clip.load` gives it:
        shorter side resized to R (bicubic), centre crop, RGB, scaled to [0, 1], normalised."""
        from PIL import Image

        spec = self.metadata["preprocess"]
        size, crop = int(spec["resize"]), int(spec["crop"])
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size, int(size * long / short)  # as torchvision rounds it
        new_size = (new_short, new_long) if width <= height else (new_long, new_short)
        if new_size != image.size:
            image = image.resize(new_size, Image.Resampling.BICUBIC)
        left = int(round((new_size[0] - crop) / 2.0))
        top = int(round((new_size[1] - crop) / 2.0))
        image = image.crop((left, top, left + crop, top + crop)).convert(spec["mode"])
        pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)  # (R, R, 3)
        mean = np.asarray(spec["mean"], dtype=np.float32)
        std = np.asarray(spec["std"], dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        """(N, 3, R, R) preprocessed images -> (N, embed_dim) image features, as `encode_image`."""
        array = np.asarray(image)
        res = self.input_resolution
        if array.ndim != 4 or array.shape[1:] != (3, res, res):
            raise ValueError(
                f"encode_image expects preprocessed images of shape (N, 3, {res}, {res}); got "
                f"{array.shape}. Use OnnxModel.preprocess and np.stack the results."
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(
                f"encode_image got {array.dtype} values: they look unpreprocessed. Pass images through "
                "OnnxModel.preprocess (float, normalised) first."
            )
        return self._run(self._visual, array.astype(self.dtype, copy=False))

    def encode_text(self, text: np.ndarray) -> np.ndarray:
        """(N, context_length) token ids from `clip.tokenize` -> (N, embed_dim) text features."""
        array = np.asarray(text)
        if (
            array.ndim != 2
            or array.shape[1] != self.context_length
            or not np.issubdtype(array.dtype, np.integer)
        ):
            raise ValueError(
                f"encode_text expects integer token ids of shape (N, {self.context_length}) as "
                f"clip.tokenize(...).numpy() gives them; got {array.dtype} of shape {array.shape}."
            )
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); got values from {array.min()} to "
                f"{array.max()}. Use clip.tokenize to make them."
            )
        return self._run(self._textual, array.astype(np.int32))

    def __call__(self, image: np.ndarray, text: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(logits_per_image (N_img, N_txt), logits_per_text (N_txt, N_img)), as CLIP's forward:
        exp(logit_scale) times the cosine similarities, in float32."""
        image_features = self.encode_image(image).astype(np.float32)
        text_features = self.encode_text(text).astype(np.float32)
        image_features /= np.linalg.norm(image_features, axis=1, keepdims=True)
        text_features /= np.linalg.norm(text_features, axis=1, keepdims=True)
        logits_per_image = np.float32(math.exp(self.logit_scale)) * image_features @ text_features.T
        return logits_per_image, logits_per_image.T

    def _run(self, session: Any, feed: np.ndarray) -> np.ndarray:
        if feed.shape[0] == 0:
            return np.zeros((0, self.embed_dim), dtype=self.dtype)
        binding = session.get_inputs()[0]
        return session.run(None, {binding.name: np.ascontiguousarray(feed)})[0]


def _read_metadata(out_dir: str) -> Dict[str, Any]:
    path = os.path.join(out_dir, METADATA_FILE)
    if not os.path.isfile(path):
        state = "does not exist" if not os.path.exists(out_dir) else f"has no {METADATA_FILE}"
        raise FileNotFoundError(
            f"{out_dir} {state}: it is not a folder written by clip export. Write one with "
            "`clip export MODEL OUT_DIR` or clip.export.to_onnx(model, OUT_DIR)"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}; export the model again") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f'{path} is not the metadata of a clip export (no "format": {FORMAT!r})')
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {metadata.get('format_version')!r}; this version of clip reads "
            f"{FORMAT_VERSION}. Export the model again with this version"
        )
    return metadata


def _verify_files(out_dir: str, metadata: Dict[str, Any]) -> None:
    for entry in metadata["graphs"].values():
        files = [(entry["file"], entry["sha256"])]
        if entry.get("data_file"):
            files.append((entry["data_file"], entry["data_sha256"]))
        for name, expected in files:
            path = os.path.join(out_dir, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing; export the model again")
            if _sha256(path) != expected:
                raise ValueError(
                    f"{path} does not match the SHA256 in {METADATA_FILE} (changed or damaged); export "
                    "the model again, or pass verify=False to use it as it is"
                )
