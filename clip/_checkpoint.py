"""Reading checkpoints without running code from them: the names other modules import.

The work is split by concern:

* :mod:`clip._errors`: :class:`CheckpointError` and :class:`UnsafeCheckpointError`;
* :mod:`clip._archive`: the safe reader of TorchScript archives (the released ``.pt`` files);
* :mod:`clip._formats`: recognising a file by its content and reading every supported format;
* :mod:`clip._materialize`: moving a model built on memory-mapped weights into owned memory.
"""

from ._archive import is_torchscript_archive, read_torchscript_state_dict
from ._errors import CheckpointError, UnsafeCheckpointError
from ._formats import LEGACY_TORCH_MAGIC, read_state_dict
from ._materialize import materialize_

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "LEGACY_TORCH_MAGIC",
    "is_torchscript_archive",
    "read_state_dict",
    "read_torchscript_state_dict",
    "materialize_",
]
