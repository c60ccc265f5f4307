"""jit=True: the archive's TorchScript module, its GPU-traced graph constants patched for the device."""

import warnings
from pathlib import Path
from typing import Iterator, List

import pytest
import torch
from _checkpoints import example_inputs, release_archive, save_state_dict, tiny_model, tiny_state_dict
from _golden import digest

import clip
from clip._weights.jit import FLOAT, HALF, load_jit, patch_device, patch_half_to_float
from clip.model import CLIP

GOLDEN = Path(__file__).resolve().parent / "data" / "load_golden.pt"


def _raw_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def _graphs(module: torch.jit.ScriptModule) -> Iterator[torch._C.Graph]:
    for sub in module.modules():
        for name in sub._c._method_names():
            yield sub._c._get_method(name).graph


def _device_constants(module: torch.jit.ScriptModule) -> List[str]:
    return [
        node.s("value")
        for graph in _graphs(module)
        for node in graph.findAllNodes("prim::Constant")
        if "value" in node.attributeNames() and node.kindOf("value") == "s"
    ]


def _to_dtype_constants(module: torch.jit.ScriptModule) -> List[int]:
    found = []
    for graph in _graphs(module):
        for node in graph.findAllNodes("aten::to"):
            schema = torch._C.parse_schema(node.schema())
            names = [argument.name for argument in schema.arguments]
            if "dtype" in names:
                source = node.inputsAt(names.index("dtype")).node()
                if source.kind() == "prim::Constant" and "value" in source.attributeNames():
                    found.append(source.i("value"))
    return found


def test_release_layout_archive_is_pinned_to_the_gpu_before_patching() -> None:
    """Precondition of the patch tests: the test archive has what the released files have."""
    raw = _raw_load(release_archive("vit"))
    assert "cuda" in _device_constants(raw)
    assert HALF in _to_dtype_constants(raw)
    images, tokens = example_inputs("vit")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):  # a "cuda" torch.arange inside encode_text
            raw.encode_text(tokens)
    raw.float()
    with pytest.raises(RuntimeError):  # the image is cast to Half by a graph constant
        raw.encode_image(images)


def test_patches_reach_every_method_of_every_submodule() -> None:
    model = _raw_load(release_archive("vit"))
    methods = {name for sub in model.modules() for name in sub._c._method_names()}
    assert {"forward", "forward1", "encode_image", "encode_text"} <= methods
    assert patch_device(model, torch.device("cpu")) > 0
    assert patch_half_to_float(model) > 0
    assert not [value for value in _device_constants(model) if value.startswith("cuda")]
    assert HALF not in _to_dtype_constants(model) and FLOAT in _to_dtype_constants(model)


def test_device_patch_writes_the_requested_device_string() -> None:
    model = _raw_load(release_archive("vit"))
    patch_device(model, torch.device("cuda", 1))  # only rewrites the graphs; nothing runs
    assert "cuda:1" in _device_constants(model) and "cuda" not in _device_constants(model)


class _SharedConstant(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float16).float()[:, :5].sum(dim=1)


def test_half_patch_leaves_other_uses_of_a_pooled_constant_alone() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(_SharedConstant())
    torch._C._jit_pass_constant_pooling(scripted.graph)
    graph = scripted.graph
    halves = [n for n in graph.findAllNodes("prim::Constant") if n.output().type() == torch._C.IntType.get()]
    shared = [n for n in halves if n.i("value") == HALF]
    assert len(shared) == 1 and len(shared[0].output().uses()) >= 2  # one "5": dtype and slice end
    assert patch_half_to_float(scripted) == 1
    x = torch.randn(3, 8)
    assert torch.equal(scripted(x), x.float()[:, :5].sum(dim=1))  # the slice still ends at 5
    assert _to_dtype_constants(scripted) == [FLOAT, FLOAT]  # the patched cast and .float()


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_load_jit_on_cpu_matches_the_python_model(arch: str) -> None:
    model = load_jit(str(release_archive(arch)), torch.device("cpu"))
    assert isinstance(model, torch.jit.ScriptModule)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    reference = tiny_model(arch).float()
    images, tokens = example_inputs(arch)
    with torch.no_grad():
        image_features = model.encode_image(images)
        text_features = model.encode_text(tokens)
        logits, logits_t = model(images, tokens)
        assert image_features.dtype == text_features.dtype == torch.float32
        torch.testing.assert_close(image_features, reference.encode_image(images), atol=1e-3, rtol=0)
        torch.testing.assert_close(text_features, reference.encode_text(tokens), atol=1e-3, rtol=0)
        torch.testing.assert_close(logits_t, logits.t())


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_clip_load_jit_and_python_models_agree(arch: str) -> None:
    path = release_archive(arch)
    jit_model, jit_preprocess = clip.load(str(path), device="cpu", jit=True)
    py_model, py_preprocess = clip.load(str(path), device="cpu", jit=False)
    assert isinstance(py_model, CLIP) and not isinstance(py_model, torch.jit.ScriptModule)
    assert repr(jit_preprocess) == repr(py_preprocess)
    images, tokens = example_inputs(arch)
    with torch.no_grad():
        jit_probs = jit_model(images, tokens)[0].softmax(dim=-1)
        py_probs = py_model(images, tokens)[0].softmax(dim=-1)
        torch.testing.assert_close(jit_probs, py_probs, atol=0.01, rtol=0.1)  # the original's test
        torch.testing.assert_close(
            jit_model.encode_image(images), py_model.encode_image(images), atol=1e-3, rtol=0
        )
        torch.testing.assert_close(
            jit_model.encode_text(tokens), py_model.encode_text(tokens), atol=1e-3, rtol=0
        )


def test_jit_on_a_state_dict_falls_back_with_a_warning(tmp_path: Path) -> None:
    path = save_state_dict(tmp_path / "sd.pt", "vit")
    with pytest.warns(UserWarning, match=r"is not a JIT archive\. Loading as a state dict instead"):
        model, _ = clip.load(str(path), device="cpu", jit=True)
    assert not isinstance(model, torch.jit.ScriptModule)  # the Python model, built from the weights
    images, tokens = example_inputs("vit")
    reference = tiny_model("vit").float()
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(images), reference.encode_image(images), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            model.encode_text(tokens), reference.encode_text(tokens), atol=1e-5, rtol=0
        )


def test_jit_with_dtype_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only supported with jit=False"):
        clip.load(str(tmp_path / "never-read.pt"), device="cpu", jit=True, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Against the original: tests/data/load_golden.pt, made by tests/data/make_load_golden.py


@pytest.mark.golden
@pytest.mark.parametrize("jit", [False, True], ids=["python", "jit"])
@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_load_matches_the_original(arch: str, jit: bool) -> None:
    golden = torch.load(GOLDEN, weights_only=True)[arch]
    images, tokens = example_inputs(arch)
    stale = "tests/data/load_golden.pt is stale: rerun tests/data/make_load_golden.py"
    assert digest(tiny_state_dict(arch)) == golden["state_sha256"], stale
    assert digest({"images": images, "tokens": tokens}) == golden["inputs_sha256"], stale
    model, _ = clip.load(str(release_archive(arch)), device="cpu", jit=jit)
    expected = golden["jit" if jit else "python"]
    with torch.no_grad():
        got = {
            "image_features": model.encode_image(images),
            "text_features": model.encode_text(tokens),
            "logits_per_image": model(images, tokens)[0],
        }
    for key, value in expected.items():
        assert got[key].dtype == torch.float32, key  # the original's CPU results are fp32 too
        # fp32 on both sides, golden made on another CPU: the tiny models' outputs move by ~1e-6
        # relative between kernel paths (tests/test_model.py, PARITY_RTOL); the jit model also runs the
        # original's fp16-traced graph ops in a different order. 1e-4 keeps a 100x margin on that.
        torch.testing.assert_close(got[key], value, atol=1e-4, rtol=1e-4, msg=key)
