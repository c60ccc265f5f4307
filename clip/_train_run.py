"""A training run's folder (``LOGS``): checked before training, written only when there is something
to keep, and continued only on purpose.

``LOGS/out.log`` gets one line per epoch and ``LOGS/checkpoints/epoch_N.pt`` the checkpoints, each
written whole or not at all (:mod:`clip._atomic`). A folder that already holds a run (an out.log or
a checkpoint) is refused unless the run is resumed from one of its own checkpoints (``--resume
latest`` or ``--resume LOGS/checkpoints/epoch_N.pt``), as open_clip refuses an existing experiment.
Nothing is created before the first line or checkpoint is written, so a run that fails early
leaves no folders behind.
"""

import os
import pickle
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ._atomic import replacing

__all__ = [
    "CHECKPOINT_DIR",
    "LOG_FILE",
    "LATEST",
    "RESUME_KEYS",
    "check_logs",
    "latest_checkpoint",
    "read_resume",
    "save_checkpoint",
    "append_log",
    "one_line",
]

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_RE = re.compile(r"^epoch_(\d+)\.pt$")
LOG_FILE = "out.log"
LATEST = "latest"
RESUME_KEYS = ("epoch", "state_dict", "optimizer")  # what a checkpoint of `clip train` holds, at least
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_PROTOCOL_2 = b"\x80\x02"  # the opening of torch.save's legacy format
REFUSED_PICKLE = "WeightsUnpickler error:"  # torch's reason, after its advice to load unsafely
DETAIL_CHARACTERS = 200  # an exception's text quoted in a message is cut to this many characters


def one_line(exc: BaseException, skip_first: bool = False) -> str:
    """`exc`'s type and its message's first line (the second with `skip_first`: torch's own heading),
    cut to DETAIL_CHARACTERS: a detail quoted inside a one-line message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = (lines[1:] if skip_first and len(lines) > 1 else lines or [""])[0]
    if len(text) > DETAIL_CHARACTERS:
        text = text[:DETAIL_CHARACTERS] + "..."
    return f"{type(exc).__name__}: {text}"


def _checkpoints(logs: str) -> List[Tuple[int, Path]]:
    folder = Path(logs) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)))


def latest_checkpoint(logs: str) -> Optional[Path]:
    """The checkpoint of the highest epoch in ``LOGS/checkpoints``, or None."""
    found = _checkpoints(logs)
    return found[-1][1] if found else None


def check_logs(logs: str, resume: Optional[str]) -> None:
    """Raise ValueError when ``LOGS`` cannot take this run; create nothing.

    Refused: a `logs` that holds a run (out.log or a checkpoint) unless `resume` continues that run
    (``"latest"`` or one of its checkpoints); a `logs` (or a folder above it) that is not a folder;
    a place where files cannot be created; a `resume` file that does not exist.
    """
    if resume is not None and resume != LATEST and not os.path.isfile(resume):
        raise ValueError(f"--resume {resume}: no such file (give a checkpoint file, or {LATEST!r})")
    held = [LOG_FILE] if os.path.isfile(os.path.join(logs, LOG_FILE)) else []
    found = _checkpoints(logs)
    if found:
        held.append(f"{len(found)} checkpoint(s) up to {CHECKPOINT_DIR}/{found[-1][1].name}")
    own_checkpoint = resume is not None and (
        resume == LATEST or Path(resume).resolve().parent == (Path(logs) / CHECKPOINT_DIR).resolve()
    )
    if held and not own_checkpoint:
        what = "--resume continues it only from its own checkpoints" if resume else "continue it"
        raise ValueError(
            f"--logs {logs} already holds a run ({', '.join(held)}); {what} with --resume {LATEST}, "
            "or pass another --logs folder for a new run"
        )
    existing = Path(os.path.abspath(logs))
    while not existing.exists():  # the nearest folder that exists: where the run's folders would go
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--logs {logs}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ValueError(f"--logs {logs}: cannot create files in {existing} ({exc.strerror})") from exc


def read_resume(path: str) -> Dict[str, Any]:
    """The checkpoint of `clip train` at `path`, or a ValueError that says what the file is instead.

    Read with ``weights_only=True``: nothing in the file is run. The message never repeats torch's
    advice to load with ``weights_only=False``.
    """
    with open(path, "rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC and not head.startswith(PICKLE_PROTOCOL_2):
        raise ValueError(
            f"--resume {path} is not a checkpoint of clip train (not a file torch.save writes); give "
            f"LOGS/{CHECKPOINT_DIR}/epoch_N.pt of an earlier run, or {LATEST!r}"
        )
    if head == ZIP_MAGIC and _is_torchscript(path):
        raise ValueError(
            f"--resume {path} is a TorchScript archive (a released model), not a checkpoint of clip train; "
            "to fine-tune it, pass it as --model"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        _, _, refused = str(exc).partition(REFUSED_PICKLE)
        if not refused:
            raise ValueError(f"--resume {path} cannot be read as a checkpoint ({one_line(exc)})") from exc
        detail = next((line.strip() for line in refused.splitlines() if line.strip()), "")
        raise ValueError(
            f"--resume {path}: its pickle asks for something no checkpoint of clip train holds "
            f"({detail.split(' was not an allowed global')[0]}); refusing to load it (nothing in it was run)"
        ) from exc
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise ValueError(f"--resume {path} cannot be read as a checkpoint ({one_line(exc)})") from exc
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in RESUME_KEYS):
        raise ValueError(
            f"--resume {path} is not a checkpoint of clip train (it lacks "
            f"{', '.join(map(repr, RESUME_KEYS))}); to start from its weights, pass it as --model"
        )
    return checkpoint


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def save_checkpoint(state: Dict[str, Any], logs: str, epoch: int) -> Path:
    """Write ``LOGS/checkpoints/epoch_N.pt`` whole or not at all (creating the folders); its path."""
    folder = Path(logs) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch_{epoch}.pt"
    with replacing(str(path)) as tmp:
        torch.save(state, tmp)
    return path


def append_log(logs: str, line: str) -> None:
    """Append `line`, timestamped, to ``LOGS/out.log`` (creating the folder)."""
    os.makedirs(logs, exist_ok=True)
    with open(os.path.join(logs, LOG_FILE), "a", encoding="utf-8") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
