"""benchmarks/gpu_check.py without a GPU: its refusal, its parsers, and a whole dry run on the CPU.

The GPU run itself cannot happen here; what can go wrong before it (the subprocesses, the oracle
lookup, the time budget, the report) is exercised with `--dry-run-cpu`: tiny models on the CPU,
torch.compile with the "eager" backend, the CUDA tests collected and skipped.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ORACLE = str(REPO / ".oracle")  # the benchmarks' documented default; $CLIP_ORACLE_PATH overrides
ORACLE = os.environ.get("CLIP_ORACLE_PATH") or DEFAULT_ORACLE
HAS_ORACLE = (Path(ORACLE) / "clip" / "clip.py").is_file()
DRY_RUN_BUDGET_S = 900  # generous: a loaded 2-core machine imports torch slowly in each process
SCRIPT_TIMEOUT_S = DRY_RUN_BUDGET_S + 120


def _script(*args: str, timeout: float = SCRIPT_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("benchmarks.gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens on a machine without a GPU")
def test_without_a_gpu_it_says_so_exits_0_and_writes_nothing(
    gpu_check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "GPU_RESULTS.md"
    assert gpu_check.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no CUDA GPU here" in printed and "was not written" in printed and "--dry-run-cpu" in printed
    assert not list(tmp_path.iterdir())


def test_pytest_output_is_counted(gpu_check: ModuleType) -> None:
    lines = [
        "tests/test_cuda.py::test_a[tiny-vit] PASSED                 [ 25%]",
        "tests/test_cuda.py::test_b[ViT-B/32] FAILED                 [ 50%]",
        "tests/test_cuda.py::test_c SKIPPED (needs a CUDA GPU)       [ 75%]",
        "tests/test_cuda.py::test_d ERROR                            [100%]",
        "FAILED tests/test_cuda.py::test_b[ViT-B/32] - AssertionError",  # the -r summary: not counted
    ]
    parsed = gpu_check.parse_pytest(lines)
    assert parsed["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1, "xfail": 0, "xpass": 0}
    assert parsed["failing"] == ["tests/test_cuda.py::test_b[ViT-B/32]", "tests/test_cuda.py::test_d"]


def test_the_budget_caps_each_part_and_skips_what_cannot_fit(gpu_check: ModuleType) -> None:
    now = [0.0]
    budget = gpu_check.Budget(100.0, clock=lambda: now[0])
    assert budget.allow(30.0) == 30.0
    now[0] = 70.0  # 30 s left, 5 kept back for the report
    assert budget.allow(60.0) == 25.0
    now[0] = 90.0
    assert budget.allow(60.0) == 0.0  # under MIN_PART_S: not started


def test_worker_lines_are_told_apart_from_other_output(gpu_check: ModuleType) -> None:
    tag = gpu_check.WORKER_TAG
    lines = ["a warning", tag + '{"kind": "row", "batch": 1}', tag + "{not json", tag + '{"kind": "done"}']
    assert gpu_check.worker_results(lines) == [{"kind": "row", "batch": 1}, {"kind": "done"}]


@pytest.mark.slow
def test_dry_run_on_the_cpu_runs_every_part_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report" / "GPU_RESULTS.md"
    oracle = ORACLE if HAS_ORACLE else str(tmp_path / "no-oracle-here")
    # --skip-tests: the CUDA tests' collection is covered by running tests/test_cuda.py itself, the
    # parsing of their output above; each process costs seconds of imports
    options = ["--models", "tiny-vit", "--batches", "1", "--skip-tests", "--budget", str(DRY_RUN_BUDGET_S)]
    result = _script("--dry-run-cpu", "--out", str(out), "--oracle", oracle, *options)
    assert result.returncode == 0, result.stdout + result.stderr
    report = out.read_text(encoding="utf-8")
    log = out.with_suffix(".log").read_text(encoding="utf-8")
    assert "DRY RUN on the CPU" in report and "PARTIAL" not in report, report + log
    assert "| CUDA tests pass | not run | - |" in report
    for tower in ("image", "text"):
        assert f"| tiny-vit | {tower} | 1 |" in report, report  # a throughput row per tower
    row = next(line for line in report.splitlines() if line.startswith("| tiny-vit | image | 1 |"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[3] != "-" and cells[6] != "-", report  # ours, eager and compiled
    accuracy = [line for line in report.splitlines() if line.startswith("| fp16 features within tolerance")]
    assert accuracy and accuracy[0].endswith("| yes |"), report  # the dry run's "GPU" is the CPU itself
    if HAS_ORACLE:
        assert f"clip-anytorch from {oracle}" in report
        assert cells[4] != "-" and cells[7] != "-", report  # the original, eager and compiled
    else:
        assert "was not found" in report and "only our side was measured" in report
        assert cells[4] == "-", report
