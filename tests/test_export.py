"""`clip export` / `clip.export`: ONNX graphs of the two encoders, against the original's outputs.

Exporting is slow (seconds per graph), so the graphs are written once per module: three tiny
structural variants of the released models (a ResNet with attention pooling over an odd grid, a ViT
with 32-pixel patches at 224, a ViT with 14-pixel patches at 336; tests/data/make_export_golden.py),
two of them through the command line, one of those in fp16. Their onnxruntime outputs are compared
with the ORIGINAL implementation's (tests/data/export_golden.pt). The failure cases reuse those
graphs or fail before anything is exported.

Not marked `golden`: onnxruntime's kernels do not follow torch's ATEN_CPU_CAPABILITY, so rerunning
these under other torch kernels (tests/test_portability.py) would check nothing new.
"""

import contextlib
import copy
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import pytest
import torch
from _model_factory import make_images, make_state_dict
from _published import CLIP_PNG, README_TEXTS, pattern_image, released_model
from PIL import Image

import clip
import clip.export
from clip.__main__ import main
from clip._preprocess import _transform
from clip.model import build_model

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "export_golden.pt"
DOC = REPO / "docs" / "export.md"
DOC_HEADING = "## Classify an image with onnxruntime"
RN, VIT_224, VIT_336 = "rn-odd-grid", "vit-32px-patch", "vit-14px-patch-336"
CONFIGS = (RN, VIT_224, VIT_336)
FP32_REL, FP32_COS, FP16_COS = 1e-4, 0.99999, 0.999
PUBLISHED_PROBS = [0.9927937, 0.00421068, 0.00299572]  # the release's README, ViT-B/32 on CLIP.png
PUBLISHED_ATOL = 1e-3
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: many small ops


# ---- the exports, once per module --------------------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> Dict[str, Any]:
    return torch.load(GOLDEN, weights_only=True)


def _model(golden: Dict[str, Any], config: str) -> torch.nn.Module:
    entry = golden["models"][config]
    return build_model(make_state_dict(entry["dims"], entry["seed"])).float().eval()


def _images(golden: Dict[str, Any], config: str) -> np.ndarray:
    entry = golden["models"][config]
    return make_images(entry["dims"]["image_resolution"], entry["image_seed"], entry["image_batch"]).numpy()


def _cli(*argv: str) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["export", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exports(golden: Dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """{config: folder} for the three fp32 exports, "fp16": the ResNet's fp16 export, and the two
    command-line runs' (status, stdout, stderr) under "cli" and "cli-fp16"."""
    root = tmp_path_factory.mktemp("exports")
    entry = golden["models"][RN]
    checkpoint = root / "rn.pt"
    torch.save(make_state_dict(entry["dims"], entry["seed"]), checkpoint)  # a state dict clip.load reads
    out: Dict[str, Any] = {}
    out["cli"] = _cli(str(checkpoint), str(root / RN))
    out["cli-fp16"] = _cli(str(checkpoint), str(root / "fp16"), "--dtype", "float16")
    out[RN], out["fp16"] = root / RN, root / "fp16"
    for config in (VIT_224, VIT_336):
        clip.export.to_onnx(_model(golden, config), root / config, model_name=config)
        out[config] = root / config
    return out


@pytest.fixture(scope="module")
def onnx_models(exports: Dict[str, Any]) -> Dict[str, clip.export.OnnxModel]:
    return {config: clip.export.OnnxModel(exports[config]) for config in (*CONFIGS, "fp16")}


def _agreement(got: np.ndarray, want: np.ndarray) -> Tuple[float, float]:
    """(largest |difference| as a fraction of the largest |want|, smallest row cosine)."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return rel, float(cos.min())


# ---- the graphs compute what the original computes ----------------------------------------------


def test_the_commands_succeeded_and_printed_the_figures(exports: Dict[str, Any]) -> None:
    for key, dtype, limit in (("cli", "float32", "0.99999"), ("cli-fp16", "float16", "0.999")):
        code, out, err = exports[key]
        assert code == 0, err
        for graph in ("visual", "textual"):
            line = next(line for line in out.splitlines() if line.startswith(f"{graph}.onnx"))
            assert f"{dtype} on CPUExecutionProvider" in line and line.endswith(": ok"), line
            cosine = float(re.search(r"min cosine ([0-9.]+) \(limit ([0-9.]+)\)", line).group(1))
            assert cosine >= float(limit) and f"(limit {limit})" in line, line
        assert re.search(
            r"^wrote .*: visual\.onnx \(.*\), textual\.onnx \(.*\), clip_export\.json", out, re.M
        )


@pytest.mark.parametrize("config", CONFIGS)
def test_image_graph_matches_the_original_alone_and_in_batches(
    config: str, golden: Dict[str, Any], onnx_models: Dict[str, Any]
) -> None:
    model, images = onnx_models[config], _images(golden, config)
    want = golden["models"][config]["image_features"].numpy()
    for rows in ([0], [1], [2], [2, 0], [0, 1, 2]):
        rel, cos = _agreement(model.encode_image(images[rows]), want[rows])
        assert rel <= FP32_REL and cos >= FP32_COS, (config, rows, rel, cos)


@pytest.mark.parametrize("config", CONFIGS)
def test_text_graph_matches_the_original_and_keeps_the_causal_mask(
    config: str, golden: Dict[str, Any], onnx_models: Dict[str, Any]
) -> None:
    """Texts of every length (empty, short, all 77 positions, non-ASCII), alone and together: a graph
    that dropped the causal mask or fixed the text length when it was captured fails here."""
    model, tokens = onnx_models[config], golden["tokens"].numpy()
    assert tokens.dtype == np.int32 and tokens.shape == (5, 77) and tokens[2, -1] == 49407
    assert (clip.tokenize(golden["texts"], truncate=True).numpy() == tokens).all()  # same ids as ours
    want = golden["models"][config]["text_features"].numpy()
    batch = model.encode_text(tokens)
    rel, cos = _agreement(batch, want)
    assert rel <= FP32_REL and cos >= FP32_COS, (config, rel, cos)
    for row in range(len(tokens)):
        alone = model.encode_text(tokens[row : row + 1])
        rel, cos = _agreement(alone, batch[row : row + 1])
        assert rel <= 1e-5 and cos >= FP32_COS, (config, row, rel, cos)
    rel, _ = _agreement(model.encode_text(tokens[[4, 2, 0]]), want[[4, 2, 0]])
    assert rel <= FP32_REL


@pytest.mark.parametrize("config", CONFIGS)
def test_graphs_are_standard_onnx_with_a_dynamic_batch(
    config: str, golden: Dict[str, Any], exports: Dict
) -> None:
    import onnx

    dims = golden["models"][config]["dims"]
    res, embed = dims["image_resolution"], dims["embed_dim"]
    expected = {
        "visual.onnx": (
            ("image", onnx.TensorProto.FLOAT, ["batch", 3, res, res]),
            ("image_features", ["batch", embed]),
        ),
        "textual.onnx": (
            ("text", onnx.TensorProto.INT32, ["batch", 77]),
            ("text_features", ["batch", embed]),
        ),
    }
    for name, ((input_name, input_type, input_shape), (output_name, output_shape)) in expected.items():
        graph = onnx.load(str(exports[config] / name))
        onnx.checker.check_model(graph)
        assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"} and not graph.functions
        assert not any(node.op_type.startswith("ATen") for node in graph.graph.node)
        (value,) = graph.graph.input
        shape = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert (value.name, value.type.tensor_type.elem_type, shape) == (input_name, input_type, input_shape)
        (value,) = graph.graph.output
        shape = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert (value.name, shape) == (output_name, output_shape)


def test_metadata_says_what_a_user_needs(golden: Dict[str, Any], exports: Dict[str, Any]) -> None:
    from clip._preprocess import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    for config, name in ((RN, None), (VIT_336, VIT_336)):
        folder = exports[config]
        meta = json.loads((folder / "clip_export.json").read_text(encoding="utf-8"))
        dims = golden["models"][config]["dims"]
        assert meta["model"] == (name or str(folder.parent / "rn.pt"))
        assert meta["architecture"] == ("ResNet" if config == RN else "ViT")
        assert (meta["embed_dim"], meta["input_resolution"], meta["context_length"]) == (
            dims["embed_dim"],
            dims["image_resolution"],
            77,
        )
        pre = meta["preprocess"]
        assert (pre["resize"], pre["crop"], pre["interpolation"]) == (dims["image_resolution"],) * 2 + (
            "bicubic",
        )
        assert (tuple(pre["mean"]), tuple(pre["std"])) == (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        assert meta["logit_scale"] == pytest.approx(math.log(100.0)) and meta[
            "logit_scale_exp"
        ] == pytest.approx(100)
        assert meta["opset"] >= 18 and meta["dtype"] == "float32" and meta["clip_version"] == clip.__version__
        for graph in ("visual", "textual"):
            entry = meta["graphs"][graph]
            assert entry["sha256"] == clip.export._sha256(str(folder / entry["file"]))
            check = meta["check"][graph]
            assert check["passed"] and check["relative_diff"] <= FP32_REL and check["min_cosine"] >= FP32_COS
        assert sorted(os.listdir(folder)) == ["clip_export.json", "textual.onnx", "visual.onnx"]


def test_fp16_graphs_take_and_give_float16_and_hold_cosine(
    golden: Dict[str, Any], exports: Dict[str, Any], onnx_models: Dict[str, Any]
) -> None:
    import onnx

    meta = json.loads((exports["fp16"] / "clip_export.json").read_text(encoding="utf-8"))
    assert meta["dtype"] == "float16"
    assert {c["min_cosine_limit"] for c in meta["check"].values()} == {FP16_COS}
    assert all(c["passed"] and c["max_diff_limit"] is None for c in meta["check"].values())
    visual = onnx.load(str(exports["fp16"] / "visual.onnx"), load_external_data=False)
    assert visual.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert visual.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert (exports["fp16"] / "visual.onnx").stat().st_size < 0.6 * (
        exports[RN] / "visual.onnx"
    ).stat().st_size
    model = onnx_models["fp16"]
    features = model.encode_image(_images(golden, RN))  # float32 input, cast to the graph's float16
    assert features.dtype == np.float16
    assert _agreement(features, golden["models"][RN]["image_features"].numpy())[1] >= FP16_COS
    features = model.encode_text(golden["tokens"].numpy())
    assert _agreement(features, golden["models"][RN]["text_features"].numpy())[1] >= FP16_COS


# ---- OnnxModel -----------------------------------------------------------------------------------


def test_preprocess_is_the_releases_bit_for_bit(onnx_models: Dict[str, Any]) -> None:
    model = onnx_models[VIT_336]
    for image in (
        Image.open(CLIP_PNG),
        pattern_image(),
        pattern_image().rotate(90, expand=True).convert("L"),
    ):
        want = _transform(model.input_resolution)(image).numpy()
        got = model.preprocess(image)
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_forward_is_clips_forward(golden: Dict[str, Any], onnx_models: Dict[str, Any]) -> None:
    torch_model = _model(golden, VIT_224)
    images, tokens = _images(golden, VIT_224), golden["tokens"].numpy()
    with torch.no_grad():
        want, _ = torch_model(torch.from_numpy(images), torch.from_numpy(tokens))
    per_image, per_text = onnx_models[VIT_224](images, tokens)
    assert np.allclose(per_image, want.numpy(), rtol=1e-4, atol=1e-3) and np.array_equal(
        per_text, per_image.T
    )


def test_onnx_model_refuses_bad_input(onnx_models: Dict[str, Any]) -> None:
    model = onnx_models[VIT_224]
    with pytest.raises(ValueError, match=r"shape \(N, 3, 224, 224\)"):
        model.encode_image(np.zeros((3, 224, 224), np.float32))
    with pytest.raises(TypeError, match="unpreprocessed"):
        model.encode_image(np.zeros((1, 3, 224, 224), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(N, 77\)"):
        model.encode_text(np.zeros((1, 76), np.int32))
    with pytest.raises(ValueError, match=r"\[0, 49408\)"):
        model.encode_text(np.full((1, 77), 49408))
    assert model.encode_text(np.zeros((0, 77), np.int64)).shape == (0, 64)
    assert model.encode_text(clip.tokenize(["a dog"])).shape == (1, 64)  # a torch tensor converts


def test_onnx_model_checks_the_files(exports: Dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(exports[VIT_224], folder)
    with open(folder / "textual.onnx", "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match="does not match the SHA256"):
        clip.export.OnnxModel(folder)
    clip.export.OnnxModel(folder, verify=False)
    with pytest.raises(FileNotFoundError, match="not a folder written by clip export"):
        clip.export.OnnxModel(tmp_path)


def test_the_docs_example_runs(
    exports: Dict[str, Any], golden: Dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/export.md's zero-shot example, on the tiny export in place of ViT-B/32's."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(DOC_HEADING) :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"vit-b-32-onnx"' in code and '"CLIP.png"' in code
    shutil.copy(CLIP_PNG, tmp_path / "CLIP.png")
    shutil.copytree(exports[VIT_224], tmp_path / "vit-b-32-onnx")
    scope: Dict[str, Any] = {}
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, str(DOC), "exec"), scope)
    assert out.getvalue().startswith("Label probs:")
    torch_model = _model(golden, VIT_224)
    image = _transform(224)(Image.open(CLIP_PNG))[None]
    with torch.no_grad():
        logits, _ = torch_model(image, clip.tokenize(["a diagram", "a dog", "a cat"]))
    assert np.allclose(scope["probs"], logits.softmax(dim=-1).numpy(), atol=1e-5)


@pytest.mark.real_weights
def test_released_vit_b_32_gives_the_published_probabilities(tmp_path: Path) -> None:
    model, _ = clip.load(released_model("ViT-B/32"), device="cpu")
    clip.export.to_onnx(model, tmp_path / "out", model_name="ViT-B/32")
    onnx_model = clip.export.OnnxModel(tmp_path / "out")
    image = onnx_model.preprocess(Image.open(CLIP_PNG))[None]
    logits, _ = onnx_model(image, clip.tokenize(README_TEXTS).numpy())
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.allclose(probs[0], PUBLISHED_PROBS, atol=PUBLISHED_ATOL)


# ---- what is refused -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(golden: Dict[str, Any]) -> torch.nn.Module:
    return _model(golden, VIT_224)


def _graphs_from(folder: Path):
    """A stand-in for the exporter that copies the graphs of an earlier export (no export: fast)."""

    def export_graph(encoder, example, names, path, opset) -> None:
        shutil.copy(folder / os.path.basename(path), path)

    return export_graph


def test_a_text_graph_without_the_causal_mask_fails_the_check_and_leaves_nothing(
    exports: Dict[str, Any], golden: Dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way users' own exports went wrong: attention without the causal mask."""
    from clip._onnx_graphs import TextEncoder

    model = _model(golden, VIT_224)
    unmasked = copy.deepcopy(model)
    for block in unmasked.transformer.resblocks:
        block.attn_mask = None
    export_graph = clip.export.export_graph

    def export_without_mask(encoder, example, names, path, opset) -> None:
        if names[0] == "text":
            export_graph(TextEncoder(unmasked), example, names, path, opset)
        else:  # the image graph is right: the module's own, copied (one export fewer)
            shutil.copy(exports[VIT_224] / "visual.onnx", path)

    monkeypatch.setattr(clip.export, "export_graph", export_without_mask)
    with pytest.raises(clip.export.ExportCheckError, match="textual.onnx disagreed") as info:
        clip.export.to_onnx(model, tmp_path / "out")
    visual, textual = info.value.checks
    assert visual.passed and not textual.passed and textual.min_cosine < 0.9
    assert os.listdir(tmp_path) == []  # no OUT_DIR, no scratch folder beside it


def test_a_failed_check_on_the_command_line_exits_1_and_prints_the_figures(
    exports: Dict[str, Any], golden: Dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Graphs of other weights fail the check too (copied in place of an export: fast)."""
    entry = golden["models"][VIT_224]
    monkeypatch.setattr(clip.export, "export_graph", _graphs_from(exports[VIT_224]))
    checkpoint = tmp_path.parent / f"{tmp_path.name}-other.pt"
    torch.save(make_state_dict(entry["dims"], entry["seed"] + 1), checkpoint)
    code, out, err = _cli(str(checkpoint), str(tmp_path / "out"))
    assert code == 1 and out.count("FAILED") == 2 and err.count("\n") == 1 and "nothing written" in err
    assert os.listdir(tmp_path) == []


def test_force_replaces_an_earlier_export_only(
    exports: Dict[str, Any], tiny: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(exports[VIT_224], out)
    monkeypatch.setattr(clip.export, "export_graph", _graphs_from(exports[VIT_224]))
    with pytest.raises(FileExistsError, match="holds an earlier export; pass force=True"):
        clip.export.to_onnx(tiny, out)
    report = clip.export.to_onnx(tiny, out, force=True, check=False, model_name="again")
    assert json.loads((out / "clip_export.json").read_text())["model"] == "again" and report.checks == ()
    assert sorted(os.listdir(tmp_path)) == ["out"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds other files than an export"):
        clip.export.to_onnx(tiny, out, force=True)
    monkeypatch.chdir(out)
    (out / "notes.txt").unlink()
    with pytest.raises(FileExistsError, match="working folder"):
        clip.export.to_onnx(tiny, out, force=True)


def test_models_that_cannot_be_exported_say_what_to_pass(tiny: torch.nn.Module, tmp_path: Path) -> None:
    from _checkpoints import trace_model

    with pytest.raises(TypeError, match=r"jit=False"):
        clip.export.to_onnx(trace_model(tiny), tmp_path / "a")
    with pytest.raises(ValueError, match="int8 model.*Pass the fp32 model.*quantize_dynamic"):
        clip.export.to_onnx(clip.quantize(tiny), tmp_path / "b")
    bf16 = copy.deepcopy(tiny).to(torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16 weights.*Pass the fp32 model"):
        clip.export.to_onnx(bf16, tmp_path / "c")
    with pytest.raises(ValueError, match="torch.float32 or torch.float16"):
        clip.export.to_onnx(tiny, tmp_path / "d", dtype=torch.bfloat16)
    for opset in (17, 26, 20.0):
        with pytest.raises(ValueError, match="opset must be an integer from 18 to 25"):
            clip.export.to_onnx(tiny, tmp_path / "e", opset=opset)
    with pytest.raises(NotADirectoryError):
        clip.export.to_onnx(tiny, CLIP_PNG)
    with pytest.raises(FileNotFoundError, match="create it first"):
        clip.export.to_onnx(tiny, tmp_path / "missing" / "out")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dtype", "bfloat16"], "invalid choice: 'bfloat16'"),
        (["--opset", "12"], "opset must be an integer from 18"),
        (["--force"], "holds other files than an export ('stuff.txt')"),
        ([], "exists and holds other files"),
    ],
    ids=["dtype", "opset", "force-onto-other-files", "not-empty"],
)
def test_command_line_refusals_exit_2_and_write_nothing(
    argv: list, message: str, exports: Dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stuff.txt").write_text("kept")
    checkpoint = exports[RN].parent / "rn.pt"
    code, stdout, err = _cli(str(checkpoint), str(out), *argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["stuff.txt"]


def test_command_line_refuses_unwritable_and_unknown(exports: Dict[str, Any], tmp_path: Path) -> None:
    checkpoint = str(exports[RN].parent / "rn.pt")
    if os.path.isdir("/proc/self"):
        code, _, err = _cli(checkpoint, "/proc/clip-export-out")
        assert code == 2 and "no folder can be created in /proc" in err and err.count("\n") == 1
    code, _, err = _cli(str(tmp_path / "missing.pt"), str(tmp_path / "out"))
    assert code == 2 and "neither a released model" in err
    code, _, err = _cli(checkpoint, str(tmp_path / "no" / "out"))
    assert code == 2 and "create it first" in err
    assert os.listdir(tmp_path) == []


def test_missing_onnx_names_the_extra(
    tiny: torch.nn.Module, exports: Dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises ImportError
    with pytest.raises(ImportError, match=re.escape('pip install "clip-faithful[onnx]"')):
        clip.export.to_onnx(tiny, tmp_path / "out")
    code, _, err = _cli(str(exports[RN].parent / "rn.pt"), str(tmp_path / "out"))
    assert code == 1 and "onnxscript" in err and "clip-faithful[onnx]" in err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="onnxruntime.*clip-faithful"):
        clip.export.OnnxModel(exports[VIT_224])
    assert os.listdir(tmp_path) == []


def test_import_clip_does_not_import_onnx() -> None:
    probe = f"import sys, clip, clip.export; print(sorted(m for m in {ONNX_MODULES} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
