"""The weights of CLIP models, found, downloaded and read without running code from any file: the
names other modules import.

One module per job. Each imports only modules listed below it and, outside this package, only the
leaves `clip.model` (layouts) and `clip._atomic` (safetensors): none calls back up into `clip.clip`.


* :mod:`~clip._weights.sources`: `resolve(name, root, allow_download)`, a released name -> a verified file.
* :mod:`~clip._weights.formats`: a checkpoint file or folder recognised by content and read, any format.
* :mod:`~clip._weights.registry`: one entry per released model: release file, SHA256, URL, hub copies.
* :mod:`~clip._weights.hub`: the Hugging Face hub copies: found in a hub cache, or fetched over HTTP(S).
* :mod:`~clip._weights.download`: verified, resumable, lock-protected downloads into the clip cache.
* :mod:`~clip._weights.torchscript`: the safe reader of TorchScript archives (the released ``.pt`` files).
* :mod:`~clip._weights.safetensors`: ``.safetensors`` files, read memory-mapped and written atomically.
* :mod:`~clip._weights.layouts`: open_clip's and transformers' key layouts, to and from the release's.
* :mod:`~clip._weights.sniff`: what a file is from its first bytes (magic numbers, an HTML page).
* :mod:`~clip._weights.mapping`: memory-mapped weights: their mappings, and a model copied out of them.
* :mod:`~clip._weights.jit`: a release archive loaded as TorchScript, patched for the device (`jit=True`).
* :mod:`~clip._weights.errors`: :class:`CheckpointError` and :class:`UnsafeCheckpointError`.
"""

from .errors import CheckpointError, UnsafeCheckpointError
from .formats import LEGACY_TORCH_MAGIC, read_state_dict
from .mapping import materialize_
from .torchscript import is_torchscript_archive, read_torchscript_state_dict

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "LEGACY_TORCH_MAGIC",
    "is_torchscript_archive",
    "read_state_dict",
    "read_torchscript_state_dict",
    "materialize_",
]
