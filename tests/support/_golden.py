"""Helpers of the golden-data scripts (tests/data/make_*.py) and of the tests that check their output.

Standard library and torch only, and nothing that puts the repository on `sys.path`: the scripts
that import the original `clip` in-process load this file, and our own `clip/` must not shadow it.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[2]
ORACLE_ENV_VAR = "CLIP_ORACLE_PATH"
DEFAULT_ORACLE = REPO / ".oracle"  # git-ignored; any folder works through --oracle or the variable
INSTALL_COMMAND = 'pip install --no-deps --target {oracle} clip-anytorch==2.6.0 "setuptools<81"'
_CHILD_ENV_VAR = "_CLIP_GOLDEN_UNDER_ORACLE"


def digest(tensors: Dict[str, torch.Tensor]) -> str:
    """SHA256 over (key, dtype, shape, bytes) in key order: tells stale golden data from a regression."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().contiguous()
        h.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def resolve_oracle(oracle: Optional[str] = None) -> str:
    """The folder holding the original `clip`: `oracle`, else $CLIP_ORACLE_PATH, else <repo>/.oracle.

    Exits with the install command when that folder holds no original package.
    """
    folder = Path(oracle or os.environ.get(ORACLE_ENV_VAR) or DEFAULT_ORACLE).resolve()
    if not (folder / "clip" / "clip.py").is_file():
        sys.exit(
            f"no original `clip` package in {str(folder)!r}. Install it in a folder of its own with "
            f"`{INSTALL_COMMAND.format(oracle=folder)}`, then pass --oracle DIR or set {ORACLE_ENV_VAR}."
        )
    return str(folder)


def _oracle_env(oracle: str) -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": oracle, "PYTHONWARNINGS": "ignore"}


def run_oracle_script(script: str, args: Sequence[str], cwd: str, oracle: str) -> None:
    """Run `script` (Python source) in a process that imports the original `clip` from `oracle`.

    `cwd` must lie outside the repository, so that our own `clip/` does not shadow the original.
    The child checks where `clip` came from before it runs `script`.
    """
    check = f"import clip as _c; assert {oracle!r} in _c.__file__, _c.__file__\n"
    command = [sys.executable, "-c", check + script, *args]
    subprocess.run(command, cwd=cwd, env=_oracle_env(oracle), check=True)


def oracle_argument(description: str) -> Optional[str]:
    """Parse the golden scripts' one option, ``--oracle DIR``, from the command line."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    default = f"${ORACLE_ENV_VAR}, else .oracle in the repository"
    parser.add_argument("--oracle", help=f"folder holding the original clip (default: {default})")
    return parser.parse_args().oracle


def under_oracle(script_path: str, oracle: Optional[str]) -> None:
    """For scripts that import the original `clip` in-process: make sure this process is such a one.

    In the first process this runs `script_path` again, with the oracle folder as the only entry of
    PYTHONPATH and a scratch working directory, then exits with its status. In that child it checks
    that `import clip` gives the oracle's package and returns.
    """
    folder = resolve_oracle(oracle)
    if os.environ.get(_CHILD_ENV_VAR) != folder:
        with tempfile.TemporaryDirectory() as scratch:
            env = {**_oracle_env(folder), _CHILD_ENV_VAR: folder}
            command = [sys.executable, str(Path(script_path).resolve()), *sys.argv[1:]]
            done = subprocess.run(command, cwd=scratch, env=env)
        sys.exit(done.returncode)
    import clip

    if not str(Path(clip.__file__).resolve()).startswith(folder):
        sys.exit(f"`clip` came from {clip.__file__}, not from the oracle folder {folder}")
