"""The declared supported versions are the ones the code checks, and an old torch gets one clear error."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from clip import _versions

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("installed", ["2.3.1", "2.3.0+cu121", "1.13.1", "2.0.0a0+git123"])
def test_an_older_torch_is_named_with_the_required_version(installed: str) -> None:
    with pytest.raises(ImportError) as caught:
        _versions.check("torch", installed, _versions.MIN_TORCH)
    message = str(caught.value)
    assert f"torch {installed} is installed" in message
    assert "torch>=2.4" in message and "pip install" in message


@pytest.mark.parametrize("installed", ["2.4.0", "2.4.1+cpu", "2.14.1", "3.0.0.dev20270101", "10.0"])
def test_supported_torch_versions_pass(installed: str) -> None:
    _versions.check("torch", installed, _versions.MIN_TORCH)


def test_import_clip_with_an_old_torch_raises_one_clear_error() -> None:
    lines = ["import torch", "torch.__version__ = '2.3.1'", "try:", "    import clip"]
    script = "\n".join([*lines, "except ImportError as e:", "    print(e)"])
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    assert "clip needs torch>=2.4, but torch 2.3.1 is installed" in done.stdout, done.stdout + done.stderr


def _requirement_minimum(name: str) -> tuple:
    text = (REPO / "requirements.txt").read_text(encoding="utf-8")
    match = re.search(rf"^{name}>=(\d+)\.(\d+)\s*$", text, re.MULTILINE)
    assert match, f"requirements.txt has no {name}>=X.Y line"
    return int(match.group(1)), int(match.group(2))


def test_requirements_declare_the_minimums_the_import_check_enforces() -> None:
    assert _requirement_minimum("torch") == _versions.MIN_TORCH
    assert _requirement_minimum("torchvision") == _versions.MIN_TORCHVISION
    assert "packaging" not in (REPO / "requirements.txt").read_text(encoding="utf-8")


def test_python_requirement_matches_the_classifiers_and_the_readme() -> None:
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    minors = re.search(r"^SUPPORTED_PYTHON_MINORS = \(([\d, ]+)\)", setup, re.MULTILINE)
    assert minors, "setup.py has no SUPPORTED_PYTHON_MINORS tuple"
    supported = [f"3.{int(minor)}" for minor in minors.group(1).split(",") if minor.strip()]
    assert f'python_requires=">={supported[0]}"' in setup  # the oldest supported is the floor
    assert f"Python | {', '.join(supported)}" in (REPO / "README.md").read_text(encoding="utf-8")
    newest = re.search(r'^NEWEST_PYTHON_MINOR="(3\.\d+)"', (REPO / ".ci/run").read_text(), re.MULTILINE)
    assert newest and newest.group(1) == supported[-1]  # CI's second leg runs the newest one
