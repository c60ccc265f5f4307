"""The benchmark harness's own logic (no timing): where it finds the original, how it scores rows."""

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
