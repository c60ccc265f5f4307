"""Helpers of the golden-data scripts (tests/data/make_*.py) and of the tests that check their output."""

import hashlib
import os
import subprocess
import sys
from typing import Dict, Sequence

import torch


def digest(tensors: Dict[str, torch.Tensor]) -> str:
    """SHA256 over (key, dtype, shape, bytes) in key order: tells stale golden data from a regression."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().contiguous()
        h.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_oracle_script(script: str, args: Sequence[str], cwd: str, oracle: str) -> None:
    """Run `script` (Python source) in a process that imports the original `clip` from `oracle`.

    `cwd` must lie outside the repository, so that our own `clip/` does not shadow the original.
    """
    env = {**os.environ, "PYTHONPATH": oracle, "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=env, check=True)
