"""Run a script as N ranks of a `torch.distributed` group on 127.0.0.1 (gloo on the CPU).

Each rank is a process of its own with the environment torchrun would give it (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); the script calls ``dist.init_process_group("gloo")``.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
RANK_TIMEOUT_S = 600  # generous: importing torch alone takes a minute on a loaded machine


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict:
    """The environment of a child process: this checkout first on the path, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def run_ranks(args: Sequence[str], world: int, timeout: float = RANK_TIMEOUT_S) -> List[str]:
    """Run ``python ARGS`` as `world` ranks; return each rank's combined output. Fails on any error."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = child_env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR=LOOPBACK,
            MASTER_PORT=port,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                env=env,
                cwd=str(REPO),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed (exit {proc.returncode}):\n{out}"
    return outputs
