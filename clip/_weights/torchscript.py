"""Reading the weights of a TorchScript archive without running code from it.

The released checkpoints are TorchScript archives: zip files holding a pickle (``<root>/data.pkl``)
of the module tree, the raw tensor bytes (``<root>/data/<key>``) and TorchScript source
(``<root>/code/...``). The original reads their weights with ``torch.jit.load``, which compiles and
keeps code from the file. Here the weights are read with a restricted unpickler instead:

* only the callables needed to rebuild tensors and containers are resolved; every other global
  (``os.system``, ``builtins.eval``, ...) is refused with :class:`UnsafeCheckpointError`;
* TorchScript module objects (``__torch__.*`` classes) become inert attribute records; nothing is
  imported for them;
* which attributes are parameters and buffers is read from the ``__parameters__`` / ``__buffers__``
  declarations in the archive's source text, which is parsed as text and never executed, so the
  state dict has exactly the keys, order, dtypes and values of ``torch.jit.load(f).state_dict()``;
* tensor bytes are memory-mapped from the file (they are stored uncompressed), every storage is
  placed on the CPU whatever location the archive names, and every record is bounds-checked.

Memory maps made here are registered with :func:`clip._weights.mapping.register_mapping`, so that
:func:`clip._weights.mapping.materialize_` can release their pages while it copies a built model out
of them. What a file is, from its first bytes, is :mod:`clip._weights.sniff`'s question.
"""

import ast
import collections
import io
import mmap
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from .errors import CheckpointError, UnsafeCheckpointError
from .mapping import register_mapping
from .sniff import ZIP_MAGIC, check_file, sniff, unknown_format_error

__all__ = [
    "PathLike",
    "archive_root",
    "has_compressed_members",
    "is_torchscript_archive",
    "is_torchscript_zip",
    "open_zip",
    "read_archive",
    "read_torchscript_state_dict",
]

PathLike = Union[str, "os.PathLike[str]"]

ZIP_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # the fixed part of a zip local file header

MAX_PICKLE_BYTES = 64 * 1024 * 1024  # data.pkl of the largest release (RN50x64) is well below 1 MiB
MAX_CODE_BYTES = 64 * 1024 * 1024  # TorchScript source of one class file (kilobytes in the release)
MAX_INFLATE_RATIO = 64  # largest plausible expansion of a compressed tensor member
MIN_INFLATE_ALLOWANCE = 1024 * 1024  # small compressed members may expand more than the ratio

_STORAGE_DTYPES: Dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}


# ----------------------------------------------------------------------------------------------
# The zip container


def open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"{path!r} is a damaged zip archive ({exc}): the file is probably truncated by an interrupted "
            "download or copy. Delete it and download it again."
        ) from exc


def archive_root(path: str, zf: zipfile.ZipFile) -> str:
    """The folder that holds ``data.pkl`` in a torch zip archive (its name is not fixed)."""
    roots = [name[: -len("/data.pkl")] for name in zf.namelist() if re.fullmatch(r"[^/]+/data\.pkl", name)]
    if len(roots) != 1:
        found = "no" if not roots else f"{len(roots)}"
        raise CheckpointError(
            f"{path!r} is a zip file but not a PyTorch archive ({found} '<folder>/data.pkl' entries; "
            "expected exactly one). Pass a CLIP checkpoint file."
        )
    return roots[0]


def is_torchscript_zip(zf: zipfile.ZipFile, root: str) -> bool:
    names = set(zf.namelist())
    return f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names)


def is_torchscript_archive(path: PathLike) -> bool:
    """True if `path` is a TorchScript archive (what ``torch.jit.save`` writes). Reads no pickle."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return False
    try:
        with zipfile.ZipFile(path) as zf:
            roots = [n[: -len("/data.pkl")] for n in zf.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
            return len(roots) == 1 and is_torchscript_zip(zf, roots[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError):
        return False


def _refuse_zip_bomb(path: str, info: zipfile.ZipInfo) -> None:
    """CheckpointError if a compressed member would expand beyond any plausible ratio."""
    allowance = max(MIN_INFLATE_ALLOWANCE, MAX_INFLATE_RATIO * info.compress_size)
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > allowance:
        raise CheckpointError(
            f"{path!r}: compressed member {info.filename} declares {info.file_size} bytes from "
            f"{info.compress_size} (more than {MAX_INFLATE_RATIO}x); refusing a possible zip bomb. "
            "Checkpoints written by torch.save are never compressed: use the original file."
        )


def has_compressed_members(path: str, zf: zipfile.ZipFile) -> bool:
    """True if a member of a torch.save archive is compressed (torch never does it; other zip tools
    may). Raises CheckpointError for a member that would inflate like a zip bomb."""
    compressed = False
    for info in zf.infolist():
        _refuse_zip_bomb(path, info)
        compressed = compressed or info.compress_type != zipfile.ZIP_STORED
    return compressed


# ----------------------------------------------------------------------------------------------
# Tensor bytes inside the archive


class _ArchiveData:
    """Tensor bytes of a zip archive: stored members are memory-mapped, others read with a bound."""

    def __init__(self, path: str, zf: zipfile.ZipFile, root: str, file_size: int) -> None:
        self.path = path
        self.zf = zf
        self.root = root
        self.file_size = file_size
        self._map: Optional[mmap.mmap] = None
        self._storages: Dict[str, torch.Tensor] = {}

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as f:
                # a private copy-on-write mapping: tensors built on it are writable, the file never is
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            register_mapping(self._map)
        return self._map

    def _member(self, key: str) -> zipfile.ZipInfo:
        if not isinstance(key, str) or not re.fullmatch(r"[0-9A-Za-z_.-]+", key) or ".." in key:
            raise CheckpointError(f"{self.path!r}: invalid tensor record key {key!r}; the file is corrupt")
        try:
            return self.zf.getinfo(f"{self.root}/data/{key}")
        except KeyError:
            raise CheckpointError(
                f"{self.path!r}: a tensor refers to {self.root}/data/{key}, which the archive does not "
                "contain; the file is corrupt or truncated. Delete it and download it again."
            ) from None

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        mapping = self._mapping()
        start = info.header_offset
        end = start + ZIP_LOCAL_HEADER.size
        if end > len(mapping):
            raise CheckpointError(f"{self.path!r}: zip entry {info.filename} lies outside the file")
        fields = ZIP_LOCAL_HEADER.unpack(mapping[start:end])
        if fields[0] != ZIP_MAGIC:
            raise CheckpointError(f"{self.path!r}: zip entry {info.filename} has a damaged header")
        name_len, extra_len = fields[9], fields[10]
        return end + name_len + extra_len

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """A 1-D tensor of `numel` elements of `dtype` over the bytes of member ``data/<key>``."""
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self.path!r}: invalid element count {numel!r} for tensor record {key}")
        cached = self._storages.get(key)
        if cached is not None:
            if cached.dtype != dtype or cached.numel() < numel:
                raise CheckpointError(f"{self.path!r}: tensor record {key} is used with conflicting types")
            return cached
        info = self._member(key)
        itemsize = torch.empty((), dtype=dtype).element_size()
        nbytes = numel * itemsize
        if nbytes > info.file_size:
            raise CheckpointError(
                f"{self.path!r}: tensor record {key} claims {nbytes} bytes but the archive holds "
                f"{info.file_size}; the file is corrupt or truncated. Delete it and download it again."
            )
        if nbytes == 0:
            flat = torch.empty(0, dtype=dtype)
        elif info.compress_type == zipfile.ZIP_STORED:
            offset = self._data_offset(info)
            if offset + nbytes > self.file_size:
                raise CheckpointError(
                    f"{self.path!r}: tensor record {key} extends past the end of the file "
                    f"({offset + nbytes} > {self.file_size} bytes); the file is truncated. Delete it and "
                    "download it again."
                )
            raw = torch.frombuffer(self._mapping(), dtype=torch.uint8, count=nbytes, offset=offset)
            flat = raw.view(dtype) if offset % itemsize == 0 else raw.clone().view(dtype)
        else:
            _refuse_zip_bomb(self.path, info)
            buffer = bytearray(nbytes)
            with self.zf.open(info) as member:
                read = member.readinto(buffer)
            if read != nbytes:
                raise CheckpointError(f"{self.path!r}: member {info.filename} is truncated")
            flat = torch.frombuffer(buffer, dtype=torch.uint8).view(dtype)
        self._storages[key] = flat
        return flat

    def read_member(self, name: str, limit: int) -> bytes:
        info = self.zf.getinfo(name)
        if info.file_size > limit:
            raise CheckpointError(
                f"{self.path!r}: {name} declares {info.file_size} bytes (limit {limit}); refusing to read it"
            )
        try:
            with self.zf.open(info) as member:
                data = member.read(limit + 1)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:  # zlib.error is a ValueError-alike
            raise CheckpointError(
                f"{self.path!r}: cannot read {name} ({exc}); the file is corrupt or truncated. Delete it "
                "and download it again."
            ) from exc
        except Exception as exc:
            raise CheckpointError(f"{self.path!r}: cannot read {name} ({exc}); the file is corrupt") from exc
        if len(data) > limit:
            raise CheckpointError(f"{self.path!r}: {name} is larger than its declared size; refusing it")
        return data


# ----------------------------------------------------------------------------------------------
# The restricted unpickler


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: torch.dtype


class _ScriptObject:
    """An inert stand-in for a pickled TorchScript object: records its class name and state."""

    qualified_name = "__torch__"

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError(f"tensor record without storage (got {type(storage).__name__})")
    ints = (storage_offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if ints is None or len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints):
        raise CheckpointError(
            f"invalid tensor geometry: offset {storage_offset!r}, size {size!r}, {stride!r}"
        )
    if all(s > 0 for s in size):
        extent = storage_offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
    else:
        extent = storage_offset
    if extent > storage.numel():
        raise CheckpointError(
            f"a tensor of size {size} reaches element {extent} of a storage of {storage.numel()} elements; "
            "the file is corrupt"
        )
    return torch.as_strided(storage, size, stride, storage_offset)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"parameter record without a tensor (got {type(data).__name__})")
    return data


def _identity(value: Any, *_: Any) -> Any:
    return value


_ALLOWED_CALLABLES: Dict[Tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # typed-container helpers of the TorchScript pickler: the values are already plain lists
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; storages come from the archive, placed on the CPU."""

    def __init__(self, data: bytes, archive: _ArchiveData) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._script_classes: Dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_CALLABLES.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if (module == "__torch__" or module.startswith("__torch__.")) and name.isidentifier():
            qualified = f"{module}.{name}"
            cls = self._script_classes.get(qualified)
            if cls is None:
                cls = type("ScriptObjectRecord", (_ScriptObject,), {"qualified_name": qualified})
                self._script_classes[qualified] = cls
            return cls
        raise UnsafeCheckpointError(
            f"{self._archive.path!r} asks to call {module}.{name}, which loading weights never needs; "
            "refusing to load it (nothing from the file was run). Only load checkpoints from sources you "
            "trust; the released CLIP files need no such call."
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._archive.path!r}: unsupported record {pid!r}; the file is corrupt")
        _, storage_type, key, _location, numel = pid  # the location (often 'cuda:0') is ignored: CPU
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._archive.path!r}: storage record of unknown type {storage_type!r}")
        return self._archive.storage(key, storage_type.dtype, numel)


# ----------------------------------------------------------------------------------------------
# Which attributes are parameters and buffers: the archive's class declarations


@dataclass(frozen=True)
class _ClassInfo:
    is_module: bool
    parameters: Optional[Tuple[str, ...]]  # None: the class body does not declare them
    buffers: Optional[Tuple[str, ...]]


_CLASS_RE = re.compile(r"^class ([A-Za-z_][A-Za-z0-9_]*)\(([^)]*)\):[ \t]*$", re.MULTILINE)
_DECL_RE = re.compile(r"^  (__parameters__|__buffers__) = (\[[^\]]*\])", re.MULTILINE)


def _parse_class_infos(source: str) -> Dict[str, _ClassInfo]:
    """Class name -> declarations, from TorchScript source text (parsed as text, never run)."""
    infos: Dict[str, _ClassInfo] = {}
    headers = list(_CLASS_RE.finditer(source))
    for i, header in enumerate(headers):
        body_end = headers[i + 1].start() if i + 1 < len(headers) else len(source)
        body = source[header.end() : body_end]
        decls: Dict[str, Optional[Tuple[str, ...]]] = {"__parameters__": None, "__buffers__": None}
        for decl in _DECL_RE.finditer(body):
            try:
                names = ast.literal_eval(decl.group(2))
            except (ValueError, SyntaxError):
                continue
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                decls[decl.group(1)] = tuple(names)
        infos[header.group(1)] = _ClassInfo(
            is_module=header.group(2).strip() == "Module",
            parameters=decls["__parameters__"],
            buffers=decls["__buffers__"],
        )
    return infos


class _ClassDeclarations:
    def __init__(self, archive: _ArchiveData) -> None:
        self._archive = archive
        self._files: Dict[str, Dict[str, _ClassInfo]] = {}

    def get(self, qualified_name: str) -> Optional[_ClassInfo]:
        module, _, name = qualified_name.rpartition(".")
        if module not in self._files:
            member = f"{self._archive.root}/code/{module.replace('.', '/')}.py"
            try:
                source = self._archive.read_member(member, MAX_CODE_BYTES).decode("utf-8", "replace")
            except KeyError:
                source = ""
            self._files[module] = _parse_class_infos(source)
        return self._files[module].get(name)


def _collect(
    record: _ScriptObject,
    prefix: str,
    declarations: _ClassDeclarations,
    out: Dict[str, torch.Tensor],
    depth: int = 0,
) -> None:
    """Parameters, then buffers, then submodules, as ``Module.state_dict`` orders them."""
    if depth > 1000:
        raise CheckpointError("the module tree of the archive is nested too deeply; the file is corrupt")
    state = record.state
    if not isinstance(state, dict):
        raise CheckpointError(
            f"TorchScript object {record.qualified_name} has no attribute table; this archive is not a "
            "plain module tree and cannot be read without running its code"
        )
    info = declarations.get(record.qualified_name)
    tensors = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    if info is None or info.parameters is None:  # nothing declared: every tensor attribute is an entry
        tensor_names: List[str] = tensors
    elif info.buffers is None:  # archives without buffer declarations: other tensors are buffers
        tensor_names = [*info.parameters, *(k for k in tensors if k not in info.parameters)]
    else:
        tensor_names = [*info.parameters, *info.buffers]
    for name in tensor_names:
        value = state.get(name)
        if isinstance(value, torch.Tensor):  # None for absent optional parameters (e.g. bias=False)
            out[prefix + name] = value
    for name, value in state.items():
        if isinstance(value, _ScriptObject):
            child = declarations.get(value.qualified_name)
            if child is None or child.is_module:
                _collect(value, f"{prefix}{name}.", declarations, out, depth + 1)


# ----------------------------------------------------------------------------------------------
# Public readers


def read_torchscript_state_dict(path: PathLike) -> "collections.OrderedDict[str, torch.Tensor]":
    """The state dict of a TorchScript archive, as ``torch.jit.load(path).state_dict()`` gives it.

    Nothing from the file is executed: the pickle is read by an allow-list unpickler and tensors are
    memory-mapped from the file (on the CPU, whatever device the archive recorded). The returned
    tensors are copy-on-write views of the file; write to them freely, the file is never changed.

    Raises:
        UnsafeCheckpointError: the pickle asks for a callable outside the allow-list.
        CheckpointError: the file is not such an archive, or is corrupt or truncated.
    """
    path = os.fspath(path)
    file_size = check_file(path)
    head = sniff(path)
    if not head.startswith(ZIP_MAGIC):
        raise unknown_format_error(path, head)
    with open_zip(path) as zf:
        return read_archive(path, zf, archive_root(path, zf), file_size)


def read_archive(
    path: str, zf: zipfile.ZipFile, root: str, file_size: int
) -> "collections.OrderedDict[str, torch.Tensor]":
    archive = _ArchiveData(path, zf, root, file_size)
    data = archive.read_member(f"{root}/data.pkl", MAX_PICKLE_BYTES)
    try:
        obj = _RestrictedUnpickler(data, archive).load()
    except CheckpointError:
        raise
    except RecursionError as exc:
        raise CheckpointError(f"{path!r}: data.pkl is nested too deeply; the file is corrupt") from exc
    except Exception as exc:  # malformed pickle opcodes raise anything from EOFError to TypeError
        raise CheckpointError(
            f"{path!r}: cannot read data.pkl ({type(exc).__name__}: {exc}); the file is corrupt. Delete "
            "it and download it again."
        ) from exc
    if not isinstance(obj, _ScriptObject):
        raise CheckpointError(
            f"{path!r}: data.pkl holds a {type(obj).__name__}, not a TorchScript module; the file is "
            "not a TorchScript archive"
        )
    out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    _collect(obj, "", _ClassDeclarations(archive), out)
    return out
