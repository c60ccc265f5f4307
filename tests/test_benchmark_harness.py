"""The benchmark harness's own logic (no timing): where it finds the original, how it scores rows."""

import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest
from _benchmarks import import_benchmark

common = import_benchmark("_common")
peers = import_benchmark("bench_peers")


def test_a_relative_oracle_folder_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the original's workers run in another working directory: a relative PYTHONPATH finds nothing
    (tmp_path / "oracle" / "clip").mkdir(parents=True)
    (tmp_path / "oracle" / "clip" / "clip.py").write_text("", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    resolved = common.resolve_oracle("oracle")
    assert Path(resolved).is_absolute() and Path(resolved) == tmp_path / "oracle"
    env, cwd = common.oracle_env(resolved)
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path / "oracle") and cwd != str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no original `clip` package"):
        common.resolve_oracle("missing")


def _result(load: Dict[str, float], mapped: float) -> Dict[str, Any]:
    rows: Dict[str, Dict[str, float]] = {side: {"load_s": value} for side, value in load.items()}
    rows["ours"]["load_mmap_s"] = mapped
    return {
        "rows": rows,
        "sides": list(load),
        "modes": [],
        "batches": [],
        "captions": 10,
        "images": 1,
        "vnni": False,
        "feature_min_cosine_to_ours": {},
    }


def _mmap_row(table: List[Dict[str, str]]) -> Dict[str, str]:
    (row,) = [row for row in table if "mmap=True" in row["Row"]]
    return row


@pytest.mark.parametrize(("theirs", "met"), [(0.30, "yes"), (0.12, "**no**")])
def test_the_mmap_load_row_compares_with_transformers(theirs: float, met: str) -> None:
    table = peers.table_rows(_result({"ours": 0.5, "transformers": theirs}, mapped=0.1))
    row = _mmap_row(table)
    assert row["Ours"] == "0.10 s" and row["transformers"] == f"{theirs:.2f} s"
    assert row["Ours / transformers"] == f"{theirs / 0.1:.2f}x faster"
    assert row["Met"] == met  # goal: at least 1.5x faster than transformers
    assert table[0]["Met"] == "**no**"  # the default (copying) load is still scored on its own


def test_the_mmap_load_row_without_transformers_has_no_verdict() -> None:
    row = _mmap_row(peers.table_rows(_result({"ours": 0.5}, mapped=0.1)))
    assert row["Met"] == "" and "Ours / transformers" not in row


def test_compute_workers_get_the_same_steady_allocator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(common.MALLOC_ENV_VAR, raising=False)
    for name in common.STEADY_MALLOC:
        monkeypatch.delenv(name, raising=False)
    base = {"PATH": "/bin"}
    env = common.steady_malloc(base)
    assert base == {"PATH": "/bin"}  # the caller's dict is not changed
    # both are set: either alone turns glibc's dynamic threshold off and maps every large tensor afresh
    assert {name: env[name] for name in common.STEADY_MALLOC} == common.STEADY_MALLOC
    assert "MALLOC_TRIM_THRESHOLD_" in env and "MALLOC_MMAP_THRESHOLD_" in env
    assert "every side" in common.malloc_note(env)
    assert common.workers_malloc_note() == common.malloc_note(common.steady_malloc({}))  # the headers' line
    # a value the caller set is kept; CLIP_BENCH_MALLOC=default keeps glibc's own behaviour
    assert common.steady_malloc({"MALLOC_TRIM_THRESHOLD_": "1"})["MALLOC_TRIM_THRESHOLD_"] == "1"
    plain = common.steady_malloc({common.MALLOC_ENV_VAR: "default"})
    assert not set(common.STEADY_MALLOC) & set(plain)
    assert "glibc defaults" in common.malloc_note(plain)


def test_the_peers_workers_run_with_the_steady_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(common.MALLOC_ENV_VAR, raising=False)
    for name in common.STEADY_MALLOC:
        monkeypatch.delenv(name, raising=False)
    seen: List[Dict[str, str]] = []

    def run(command: List[str], **kwargs: Any) -> Any:
        seen.append(kwargs["env"])
        return subprocess.CompletedProcess(command, 0, stdout='{"side": "ours", "rows": {}}\n', stderr="")

    monkeypatch.setattr(peers.subprocess, "run", run)
    paths = ("archive", "hf_folder", "fp32_file", "inputs", "captions", "images", "outdir")
    options: Dict[str, Any] = {key: "x" for key in paths}
    options.update(passes=1, load_repeats=1, modes=["fp32"], batches=[1], threads=0)
    assert peers._run_worker("ours", options) == {"side": "ours", "rows": {}}
    (env,) = seen
    assert {name: env[name] for name in common.STEADY_MALLOC} == common.STEADY_MALLOC
