"""Tiny, seeded CLIP checkpoints in the release's layouts, for tests and notebooks.

Every builder makes a small random CLIP (full 49,408-token vocabulary and 77-token context, so real
`clip.tokenize` output works) and saves it in one of the layouts `clip.load` meets:

* :func:`release_archive`: a TorchScript archive like the released ``.pt`` files: traced
  ``forward`` / ``encode_image`` / ``encode_text``, fp16 weights where ``convert_weights`` casts,
  the three scalar buffers ``input_resolution`` / ``context_length`` / ``vocab_size``, storages
  recorded on ``cuda:0`` and graphs holding ``cuda`` device constants and Half dtype constants
  (the released files were traced on a GPU; these are rewritten from a CPU trace);
* :func:`save_state_dict`: ``torch.save`` files of the state dict, with or without the scalar
  entries, wrapped or prefixed as fine-tuning scripts save them;
* :func:`make_release_dir`: an archive saved under the file name the release uses for a model name.

Built artefacts are cached for the whole process in a temporary directory (removed at exit): treat
paths returned by cached builders as read-only and copy them before altering anything. Usage::

    from _checkpoints import release_archive, tiny_model
    path = release_archive("vit")            # cached; read-only
    model = tiny_model("vit")                # the same weights as a Python CLIP (fp16 mixed)
"""

import atexit
import copy
import functools
import io
import os
import pickletools
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from _model_factory import UNIT_VARIANCE, exact_uniform, make_state_dict

from clip.clip import _MODELS
from clip.model import CLIP, build_model

__all__ = [
    "TINY_DIMS",
    "example_inputs",
    "tiny_model",
    "tiny_state_dict",
    "trace_model",
    "save_torchscript_archive",
    "release_archive",
    "save_state_dict",
    "make_release_dir",
    "rewrite_zip",
    "archive_root",
    "relocate_storages",
    "arch_for_name",
    "release_file_name",
]

TINY_DIMS: Dict[str, Dict[str, Any]] = {
    "vit": dict(
        embed_dim=32,
        image_resolution=32,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=8,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    ),
    "resnet": dict(
        embed_dim=32,
        image_resolution=64,
        vision_layers=(1, 1, 1, 1),
        vision_width=16,  # attention pool: 16 * 32 = 512 channels, 8 heads of 64
        vision_patch_size=None,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    ),
}
ZIP_ALIGNMENT = 64  # torch aligns tensor members so they can be memory-mapped
ZIP_EXTRA_HEADER = struct.Struct("<2sH")
ZIP_LOCAL_HEADER_BYTES = 30
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
RELEASE_LOCATION = "cuda:0"  # what the released archives record for every storage
EOT_TOKEN = 49407
SCALARS = ("input_resolution", "context_length", "vocab_size")


def arch_for_name(name: str) -> str:
    """ "vit" for ViT model names, "resnet" for RN ones."""
    return "resnet" if name.startswith("RN") else "vit"


def release_file_name(name: str) -> str:
    """The file name the release uses for a model name ("ViT-B/32" -> "ViT-B-32.pt")."""
    return os.path.basename(_MODELS[name])


@functools.cache
def _cache_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="clip-test-checkpoints-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def example_inputs(arch: str = "vit", seed: int = 0, n_images: int = 2, n_texts: int = 3) -> Tuple:
    """Seeded (images (N, 3, R, R) float32, tokens (M, 77) int64 ending with EOT) for `arch`."""
    dims = TINY_DIMS[arch]
    return _inputs(dims["image_resolution"], dims["context_length"], seed, n_images, n_texts)


def _inputs(res: int, context: int, seed: int, n_images: int, n_texts: int) -> Tuple:
    gen = torch.Generator().manual_seed(seed + 1)
    images = exact_uniform((n_images, 3, res, res), gen, UNIT_VARIANCE)  # the same bits on every CPU
    tokens = torch.zeros(n_texts, context, dtype=torch.long)
    for row in range(n_texts):
        length = 3 + row * 2
        tokens[row, 0] = EOT_TOKEN - 1  # start of text
        tokens[row, 1:length] = torch.randint(1, EOT_TOKEN - 1, (length - 1,), generator=gen)
        tokens[row, length] = EOT_TOKEN
    return images, tokens


def tiny_model(arch: str = "vit", seed: int = 0) -> CLIP:
    """A seeded tiny CLIP in the release's precision (fp16 where convert_weights casts), eval mode.

    The weights come from `_model_factory.make_state_dict` (seeded, fan-in scaled, drawn in the
    release's key order), so they do not depend on how `clip.model` initialises a CLIP.
    """
    return build_model(make_state_dict(TINY_DIMS[arch], seed, scalars=False))


def tiny_state_dict(
    arch: str = "vit", seed: int = 0, scalars: bool = True
) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of :func:`tiny_model` in the release's order (a fresh copy on every call).

    With `scalars`, the three scalar entries come right after the top-level parameters, where
    the released archives have them (they are buffers of the traced top-level module).
    """
    return OrderedDict(
        (key, value.clone())
        for key, value in _tiny_state(arch, seed).items()
        if scalars or key not in SCALARS
    )


@functools.cache
def _tiny_state(arch: str, seed: int) -> "OrderedDict[str, torch.Tensor]":
    state = tiny_model(arch, seed).state_dict()
    dims = TINY_DIMS[arch]
    scalars = {
        "input_resolution": torch.tensor(dims["image_resolution"]),
        "context_length": torch.tensor(dims["context_length"]),
        "vocab_size": torch.tensor(dims["vocab_size"]),
    }
    out: OrderedDict[str, torch.Tensor] = OrderedDict((k, v) for k, v in state.items() if "." not in k)
    out.update(scalars)
    out.update((k, v) for k, v in state.items() if "." in k)
    return out


def trace_model(model: CLIP, device: Union[str, torch.device] = "cpu") -> torch.jit.ScriptModule:
    """Trace `model` like the release: methods forward / encode_image / encode_text, the three
    scalar entries as buffers, the causal mask as a constant (not a state-dict entry).

    device: where the trace runs (the release was traced on a GPU; fp16 is slow on most CPUs).
    """
    res, context = model.visual.input_resolution, model.context_length
    model = _release_shaped_copy(model).to(device)
    images, tokens = (t.to(device) for t in _inputs(res, context, seed=0, n_images=2, n_texts=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        return torch.jit.trace_module(
            model,
            {"forward": (images, tokens), "encode_image": images, "encode_text": tokens},
            check_trace=False,
        )


def _release_shaped_copy(model: CLIP) -> CLIP:
    model = copy.deepcopy(model)
    for block in model.transformer.resblocks:
        mask = block._buffers.pop("attn_mask")  # the release keeps the mask as a plain attribute
        block.attn_mask = mask
    context_length, vocab_size = model.context_length, model.vocab_size
    del model.context_length, model.vocab_size
    model.register_buffer("input_resolution", torch.tensor(model.visual.input_resolution))
    model.register_buffer("context_length", torch.tensor(context_length))
    model.register_buffer("vocab_size", torch.tensor(vocab_size))
    return model


def _script_methods(module: torch.jit.ScriptModule):
    for sub in module.modules():
        for name in sub._c._method_names():
            yield sub._c._get_method(name)


def _make_graphs_look_gpu_traced(module: torch.jit.ScriptModule) -> None:
    """Rewrite what a GPU trace would have recorded: "cpu" device constants become "cuda".
    (The Half dtype constants are already there: the fp16 model was traced.)"""
    for method in _script_methods(module):
        for node in method.graph.findAllNodes("prim::Constant"):
            if "value" in node.attributeNames() and node.kindOf("value") == "s" and node.s("value") == "cpu":
                node.s_("value", "cuda")


def save_torchscript_archive(
    model: CLIP,
    path: Union[str, Path],
    *,
    cuda_constants: bool = True,
    storage_location: str = RELEASE_LOCATION,
    device: Union[str, torch.device] = "cpu",
) -> Path:
    """Trace `model` and save it as a release-layout TorchScript archive at `path`.

    cuda_constants: rewrite the graphs' device constants to "cuda" as in the released files.
    storage_location: the device every storage record names (the release: "cuda:0").
    device: where the trace runs; a trace on a GPU records its storages there already.
    """
    path = Path(path)
    traced = trace_model(model, device)
    if cuda_constants:
        _make_graphs_look_gpu_traced(traced)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced.save(str(path))
    if storage_location != "cpu":
        root = archive_root(path)
        with zipfile.ZipFile(path) as zf:
            pkl = zf.read(f"{root}/data.pkl")
        rewrite_zip(path, path, {f"{root}/data.pkl": relocate_storages(pkl, storage_location)})
    return path


@functools.cache
def release_archive(arch: str = "vit", seed: int = 0, cuda_constants: bool = True) -> Path:
    """A cached release-layout archive of ``tiny_model(arch, seed)``. Read-only: copy it to alter it."""
    name = f"tiny-{arch}-{seed}{'-cuda' if cuda_constants else ''}.pt"
    return save_torchscript_archive(
        tiny_model(arch, seed), _cache_dir() / name, cuda_constants=cuda_constants
    )


def save_state_dict(
    path: Union[str, Path],
    arch: str = "vit",
    seed: int = 0,
    *,
    scalars: bool = True,
    wrapper: Optional[str] = None,
    prefix: str = "",
    dtype: Optional[torch.dtype] = None,
    legacy_format: bool = False,
) -> Path:
    """``torch.save`` the state dict of ``tiny_model(arch, seed)`` at `path`.

    scalars: include input_resolution / context_length / vocab_size. wrapper: save
    ``{wrapper: state_dict, "epoch": 3}`` (e.g. "state_dict", "model_state_dict"). prefix: prepended
    to every key (e.g. "module."). dtype: cast floating tensors. legacy_format: the pre-1.6 format.
    """
    path = Path(path)
    state: Dict[str, Any] = {}
    for key, value in tiny_state_dict(arch, seed, scalars=scalars).items():
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[prefix + key] = value
    obj: Any = {wrapper: state, "epoch": 3} if wrapper else state
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def make_release_dir(
    tmp_path: Union[str, Path], name: str, seed: int = 0, cuda_constants: bool = True
) -> Path:
    """Copy a tiny archive to ``tmp_path / <release file name of name>`` and return that path.

    The architecture follows the name (RN* -> ResNet, else ViT). The archive's inner root folder
    keeps its own name (the release's root name is not fixed either).
    """
    target = Path(tmp_path) / release_file_name(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(release_archive(arch_for_name(name), seed, cuda_constants), target)
    return target


# ----------------------------------------------------------------------------------------------
# Archive surgery


def archive_root(path: Union[str, Path]) -> str:
    """The top folder of a torch zip archive (the folder holding data.pkl)."""
    with zipfile.ZipFile(path) as zf:
        return next(n for n in zf.namelist() if n.endswith("/data.pkl")).split("/")[0]


def relocate_storages(pickle_bytes: bytes, location: str) -> bytes:
    """Rewrite the location string of every storage record ("cpu") in a protocol-2 pickle."""
    out = io.BytesIO()
    ops = list(pickletools.genops(pickle_bytes))
    for index, (opcode, arg, pos) in enumerate(ops):
        end = ops[index + 1][2] if index + 1 < len(ops) else len(pickle_bytes)
        if opcode.name == "BINUNICODE" and arg == "cpu":
            encoded = location.encode("utf-8")
            out.write(b"X" + struct.pack("<I", len(encoded)) + encoded)
        else:
            out.write(pickle_bytes[pos:end])
    return out.getvalue()


def rewrite_zip(
    src: Union[str, Path],
    dst: Union[str, Path],
    replace: Optional[Mapping[str, bytes]] = None,
    *,
    rename_root: Optional[str] = None,
    compress_data: bool = False,
    drop: Tuple[str, ...] = (),
) -> Path:
    """Copy a torch zip archive member by member, keeping stored members 64-byte aligned.

    replace: new bytes for members (by full name). rename_root: a new top folder name.
    compress_data: deflate the tensor members (torch never does; for reader tests). drop: members
    to leave out.
    """
    replace = dict(replace or {})
    with zipfile.ZipFile(src) as zin:
        members = [(info, replace.pop(info.filename, None) or zin.read(info)) for info in zin.infolist()]
    if replace:
        raise KeyError(f"members not in the archive: {sorted(replace)}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zout:
        for info, data in members:
            if info.filename in drop:
                continue
            name = info.filename
            if rename_root is not None:
                name = rename_root + name[name.index("/") :]
            out = zipfile.ZipInfo(name, date_time=FIXED_DATE)
            is_data = "/data/" in name
            out.compress_type = zipfile.ZIP_DEFLATED if compress_data and is_data else info.compress_type
            if out.compress_type == zipfile.ZIP_STORED:
                offset = buffer.tell() + ZIP_LOCAL_HEADER_BYTES + len(name.encode()) + ZIP_EXTRA_HEADER.size
                pad = -offset % ZIP_ALIGNMENT
                out.extra = ZIP_EXTRA_HEADER.pack(b"FB", pad) + b"Z" * pad
            zout.writestr(out, data)
    Path(dst).write_bytes(buffer.getvalue())
    return Path(dst)
