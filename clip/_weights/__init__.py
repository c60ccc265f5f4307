"""Reading checkpoints without running code from them: the names other modules import.

The work is split by concern:

* :mod:`clip._weights.errors`: :class:`CheckpointError` and :class:`UnsafeCheckpointError`;
* :mod:`clip._weights.torchscript`: the safe reader of TorchScript archives (the released ``.pt`` files);
* :mod:`clip._weights.formats`: recognising a file by its content and reading every supported format;
* :mod:`clip._weights.mapping`: moving a model built on memory-mapped weights into owned memory.
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
