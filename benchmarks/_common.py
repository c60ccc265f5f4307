"""Helpers shared by the benchmarks: where the original `clip` lives and how a process imports it.

Our package and the original (`clip-anytorch`) are both named `clip`, so they never share one
interpreter: each side runs in a process whose PYTHONPATH leads with that side's folder, the
original's with its working directory outside the repository (else our `clip/` would shadow it).

The original imports `pkg_resources`, which setuptools 81 removed. Either install setuptools < 81
(in the virtual environment or into the oracle folder), or let `oracle_env` put a stand-in on the
original's path: it is added only when no `pkg_resources` can be found.
"""

import importlib.machinery
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ORACLE = str(REPO / ".oracle")  # git-ignored; the golden scripts use the same folder
ORACLE_ENV_VAR = "CLIP_ORACLE_PATH"
INSTALL_COMMAND = 'pip install --no-deps --target {oracle} clip-anytorch && pip install "setuptools<81"'

# The original's only use of pkg_resources: `packaging.version.parse(torch.__version__)`.
_PKG_RESOURCES_SHIM = '''"""Stand-in for pkg_resources (gone in setuptools 81), from benchmarks/_common.py."""
try:
    import packaging
    import packaging.version
except ImportError:  # torch vendors a copy
    from torch._vendor import packaging
    import torch._vendor.packaging.version
'''


def resolve_oracle(oracle: Optional[str] = None) -> str:
    """The folder holding the original `clip`: `oracle`, else $CLIP_ORACLE_PATH, else .oracle
    in the repository.

    The result is absolute: the original's worker processes run in another working directory, where
    a relative PYTHONPATH entry (`--oracle .oracle`) would find nothing and import our `clip`.

    Raises FileNotFoundError, with the install command, when the folder holds no original package.
    """
    oracle = oracle or os.environ.get(ORACLE_ENV_VAR) or DEFAULT_ORACLE
    if not (Path(oracle) / "clip" / "clip.py").is_file():
        raise FileNotFoundError(
            f"no original `clip` package in {oracle!r}. Install it in a folder of its own with "
            f"`{INSTALL_COMMAND.format(oracle=oracle)}`, then pass --oracle {oracle} or set "
            f"{ORACLE_ENV_VAR}."
        )
    return os.path.abspath(oracle)


def _shim_dir() -> str:
    """A folder holding the pkg_resources stand-in (written when missing or out of date)."""
    user = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(tempfile.gettempdir()) / f"clip-bench-pkg-resources-{user}"
    target = folder / "pkg_resources" / "__init__.py"
    if not target.is_file() or target.read_text(encoding="utf-8") != _PKG_RESOURCES_SHIM:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(_PKG_RESOURCES_SHIM, encoding="utf-8")
        os.replace(partial, target)
    return str(folder)


def oracle_env(oracle: str) -> Tuple[Dict[str, str], str]:
    """(environment, working directory) for a process that must import the original `clip`."""
    paths = [oracle]
    if importlib.machinery.PathFinder.find_spec("pkg_resources", [oracle, *sys.path]) is None:
        paths.append(_shim_dir())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONWARNINGS": "ignore"}
    return env, tempfile.gettempdir()


def ours_env() -> Tuple[Dict[str, str], str]:
    """(environment, working directory) for a process that must import our `clip` from this checkout."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env, str(REPO)


def side_env(side: str, oracle: str) -> Tuple[Dict[str, str], str]:
    """`oracle_env` for "original", `ours_env` for "ours"."""
    if side == "original":
        return oracle_env(oracle)
    if side == "ours":
        return ours_env()
    raise ValueError(f"side must be 'original' or 'ours', got {side!r}")


# glibc's malloc adjusts its mmap threshold as a process runs, and returns freed memory at the top of
# its heaps to the kernel past a trim threshold. Which state a process lands in depends on the order
# of its first allocations: measured here over 21 fresh processes encoding ViT-B/32 images at batch
# 32, 5 page-faulted 300-700 MB back on every call and ran 10-20% slower, ours and the original's
# alike. That process lottery, not the code, decided several rows. So the compute benchmarks give
# every side the same fixed settings (both are needed: either alone disables the adjustment and
# every large tensor is mapped afresh, 1.6 GB of faults a call). A variable the caller has set is
# kept; CLIP_BENCH_MALLOC=default keeps glibc's own behaviour. Other C libraries ignore them.
STEADY_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),  # glibc's largest dynamic threshold
    "MALLOC_TRIM_THRESHOLD_": str(4 * 1024**3),
}
MALLOC_ENV_VAR = "CLIP_BENCH_MALLOC"


def steady_malloc(env: Dict[str, str]) -> Dict[str, str]:
    """`env` with STEADY_MALLOC added (a new dict), unless CLIP_BENCH_MALLOC=default is set in it."""
    if env.get(MALLOC_ENV_VAR, "").strip().lower() == "default":
        return dict(env)
    return {**STEADY_MALLOC, **env}


def workers_malloc_note() -> str:
    """`malloc_note` for the compute workers this process starts (the results headers' line)."""
    return malloc_note(steady_malloc(dict(os.environ)))


def malloc_note(env: Dict[str, str]) -> str:
    """What a worker with environment `env` was told about its allocator, for a results header."""
    chosen = [f"{name}={env[name]}" for name in STEADY_MALLOC if name in env]
    if not chosen:
        return "glibc defaults (CLIP_BENCH_MALLOC=default)"
    return " ".join(chosen) + " for every side's process (see benchmarks/_common.py: STEADY_MALLOC)"


def check_imported_from(module_file: str, root: str) -> None:
    """Exit the (worker) process if `clip` was imported from outside `root`: the wrong side ran."""
    if Path(root).resolve() not in Path(module_file).resolve().parents:
        sys.exit(f"expected `clip` from {root}, imported {module_file}")


def load_model_factory() -> ModuleType:
    """tests/support/_model_factory.py (torch only), loaded by path: works from a fresh checkout, on
    either side."""
    path = REPO / "tests" / "support" / "_model_factory.py"
    spec = importlib.util.spec_from_file_location("_clip_bench_model_factory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> Optional[float]:
    """The 1-minute load average, where the OS reports one."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_info() -> Dict[str, Any]:
    """CPU model, CPU count, torch version and intra-op threads, load average, GPU presence."""
    import torch

    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "load_average_1min": load_average(),
    }


class WorkerSide:
    """One side's (``ours`` or ``original``) worker process of a benchmark script, spoken to in JSON
    lines: `script` is started as ``script --worker SIDE --inputs INPUTS --threads N --expect-root
    ROOT`` with that side's environment; its first line must say ``{"ready": true, ...}``. Each
    request carries ``op`` and, with `tag_side`, ``"ours": True/False``."""

    def __init__(
        self, script: Path, side: str, oracle: str, inputs: Path, threads: int, tag_side: bool = False
    ) -> None:
        self.side, self.tag_side = side, tag_side
        env, cwd = side_env(side, oracle)
        env = steady_malloc(env)  # the same allocator settings for both sides
        root = oracle if side == "original" else str(REPO)
        command = [sys.executable, str(Path(script).resolve()), "--worker", side, "--inputs", str(inputs)]
        command += ["--threads", str(threads), "--expect-root", root]
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if not self._read().get("ready"):  # the worker's first line: its model factory and inputs are loaded
            raise RuntimeError(f"the {side} benchmark process did not start")

    def _read(self) -> Dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} benchmark process stopped (exit code {self.process.wait()})")
        return json.loads(line)

    def ask(self, op: str, **request: Any) -> Dict[str, Any]:
        tag = {"ours": self.side == "ours"} if self.tag_side else {}
        self.process.stdin.write(json.dumps({"op": op, **tag, **request}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()
