"""The notebooks run top to bottom, offline, and are committed without outputs.

Each notebook is executed with nbclient (kernel "python3", the ipykernel installed next to this
interpreter) in a temporary copy of notebooks/, with a tiny test-made checkpoint
(CLIP_NOTEBOOK_MODEL) and the local substitute data (CLIP_NOTEBOOK_SUBSTITUTE_DATA=1), an empty
weight cache and data directory (nothing may be downloaded), and matplotlib's Agg backend.
"""

import re
import shutil
from pathlib import Path
from typing import List

import nbformat
import numpy as np
import pytest
from _checkpoints import release_archive
from _published import GOLDEN_ATOL, GOLDEN_RTOL, load_golden

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("Interacting_with_CLIP.ipynb", "Prompt_Engineering_for_ImageNet.ipynb", "Linear_Probe.ipynb")
CELL_TIMEOUT_S = 300
PRINT_DIGITS_RTOL = 1e-6  # numpy prints 8 significant digits


def _text_outputs(notebook: nbformat.NotebookNode) -> List[str]:
    """Per cell: its stdout (one printed line may arrive in several stream messages) and results."""
    texts = []
    for cell in notebook.cells:
        pieces = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                pieces.append(output["text"])
            elif "data" in output and "text/plain" in output["data"]:
                pieces.append(output["data"]["text/plain"] + "\n")
        texts.append("".join(pieces))
    return texts


def _execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    workdir = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, workdir, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    monkeypatch.setenv("CLIP_NOTEBOOK_MODEL", str(release_archive("vit")))
    monkeypatch.setenv("CLIP_NOTEBOOK_SUBSTITUTE_DATA", "1")
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CLIP_DATA_DIR", str(tmp_path / "empty-data"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    monkeypatch.delenv("CLIP_ALLOW_DOWNLOAD", raising=False)
    notebook = nbformat.read(workdir / name, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    assert not (tmp_path / "empty-cache").exists() and not (tmp_path / "empty-data").exists()
    return notebook


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_carry_no_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert "widgets" not in notebook.metadata


def test_interacting_with_clip_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = _execute("Interacting_with_CLIP.ipynb", tmp_path, monkeypatch)
    text = "\n".join(_text_outputs(notebook))
    assert "ViT-B/32" in text  # available_models()
    # The README example with the tiny archive gives what the original computes for it.
    match = re.search(r"Label probs: \[\[([^\]]*)\]\]", text)
    assert match, text
    probs = np.array([[float(x) for x in match.group(1).split()]])
    golden = load_golden()["archives"]["vit"]["python"]["clip_png_probs"]
    np.testing.assert_allclose(probs, golden, rtol=GOLDEN_RTOL + PRINT_DIGITS_RTOL, atol=GOLDEN_ATOL)
    # The CIFAR-100 example printed five classes with percentages.
    predictions = re.findall(r"^ *(\w+): (\d+\.\d\d)%$", text, re.M)
    assert len(predictions) == 5, text
    assert 0 < sum(float(p) for _, p in predictions) <= 100.01


def test_prompt_engineering_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = _execute("Prompt_Engineering_for_ImageNet.ipynb", tmp_path, monkeypatch)
    text = "\n".join(_text_outputs(notebook))
    assert "1000 classes, 80 templates" in text
    assert "using 20 classes and 4 templates" in text and "6 images" in text
    accuracies = dict(re.findall(r"Top-(\d) accuracy: (\d+\.\d\d)%", text))
    assert set(accuracies) == {"1", "5"}, text
    top1, top5 = float(accuracies["1"]), float(accuracies["5"])
    assert 0 <= top1 <= top5 <= 100


def test_linear_probe_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = _execute("Linear_Probe.ipynb", tmp_path, monkeypatch)
    text = "\n".join(_text_outputs(notebook))
    assert "5 training images, 5 test images" in text, text
    assert "train features (5, 32) test features (5, 32)" in text, text  # the tiny model's embed_dim
    match = re.search(r"^Accuracy = (\d+\.\d{3})$", text, re.M)
    assert match, text
    assert 0 <= float(match.group(1)) <= 100
