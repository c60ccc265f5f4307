"""clip.load: names, paths, downloads, devices, dtypes, what it returns; hubconf."""

import importlib.util
import inspect
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from _checkpoints import (
    archive_root,
    example_inputs,
    make_release_dir,
    release_archive,
    release_file_name,
    rewrite_zip,
    save_state_dict,
    tiny_model,
    tiny_state_dict,
)
from _http_server import HTML_PAGE, FileServer
from torchvision.transforms import Compose, Resize

import clip
import clip.clip as clip_module
from clip._weights import CheckpointError, UnsafeCheckpointError
from clip.model import CLIP

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_NAMES = {
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
    "ViT_B_32": "ViT-B/32",
    "ViT_B_16": "ViT-B/16",
    "ViT_L_14": "ViT-L/14",
    "ViT_L_14_336px": "ViT-L/14@336px",
}


def _features(model: torch.nn.Module, arch: str) -> "tuple[torch.Tensor, torch.Tensor]":
    images, tokens = example_inputs(arch)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _assert_reference_features(model: torch.nn.Module, arch: str) -> None:
    """`model` computes what the test-made checkpoint's own model computes (fp32, to float rounding)."""
    reference = tiny_model(arch).float()
    for ours, expected in zip(_features(model, arch), _features(reference, arch)):
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The contract


def test_signature_matches_the_original() -> None:
    parameters = inspect.signature(clip.load).parameters
    assert list(parameters)[:4] == ["name", "device", "jit", "download_root"]
    assert parameters["device"].default is None  # decided at call time, not import time
    assert parameters["jit"].default is False and parameters["download_root"].default is None
    assert parameters["dtype"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_load_path_on_cpu_gives_the_fp32_model(arch: str) -> None:
    model, preprocess = clip.load(str(release_archive(arch)), device="cpu")
    assert isinstance(model, CLIP) and not model.training
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {torch.float32}
    assert {t.device.type for t in model.state_dict().values()} == {"cpu"}
    assert isinstance(preprocess, Compose)
    resize = next(t for t in preprocess.transforms if isinstance(t, Resize))
    assert resize.size == model.visual.input_resolution
    reference = tiny_model(arch).float()
    for ours, expected in zip(_features(model, arch), _features(reference, arch)):
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_default_device_is_decided_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, _ = clip.load(str(release_archive("vit")))
    assert model.logit_scale.device.type == "cpu" and model.logit_scale.dtype == torch.float32


def test_load_accepts_pathlike_and_torch_device() -> None:
    model, _ = clip.load(release_archive("vit"), device=torch.device("cpu"))
    _assert_reference_features(model, "vit")


def test_model_does_not_depend_on_the_file_after_loading(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(release_archive("vit").read_bytes())
    model, _ = clip.load(str(path), device="cpu")
    before = _features(model, "vit")
    with open(path, "r+b") as f:  # overwrite every byte in place (same size, same inode)
        f.write(b"\xff" * path.stat().st_size)
    for ours, expected in zip(_features(model, "vit"), before):
        assert torch.equal(ours, expected)


def test_jit_false_never_runs_torchscript(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.jit.load must not be called for jit=False")

    monkeypatch.setattr(torch.jit, "load", refuse)
    model, _ = clip.load(str(release_archive("vit")), device="cpu")
    _assert_reference_features(model, "vit")


def test_no_random_initialisation(monkeypatch: pytest.MonkeyPatch) -> None:
    release_archive("resnet")  # build the archive first: building a model does initialise

    def watch(init):
        def checked(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            assert tensor.is_meta, "loading must not spend time on random initialisation of real tensors"
            return init(tensor, *args, **kwargs)

        return checked

    for name in ("normal_", "uniform_", "xavier_uniform_", "kaiming_uniform_", "zeros_", "ones_"):
        monkeypatch.setattr(torch.nn.init, name, watch(getattr(torch.nn.init, name)))
    model, _ = clip.load(str(release_archive("resnet")), device="cpu")
    _assert_reference_features(model, "resnet")  # weights from the file, none left random


# ----------------------------------------------------------------------------------------------
# Plain state dicts (the original's EOFError) and wrong files


@pytest.mark.parametrize(
    "options",
    [{}, {"scalars": False}, {"wrapper": "state_dict"}, {"dtype": torch.float32}, {"legacy_format": True}],
    ids=["plain", "no-scalars", "wrapped", "fp32", "legacy"],
)
def test_state_dict_files_load_like_the_archive(tmp_path: Path, options: dict) -> None:
    path = save_state_dict(tmp_path / "sd.pt", "resnet", **options)
    model, _ = clip.load(str(path), device="cpu")
    expected, _ = clip.load(str(release_archive("resnet")), device="cpu")
    for ours, reference in zip(_features(model, "resnet"), _features(expected, "resnet")):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_missing_keys_are_named(tmp_path: Path) -> None:
    state = tiny_state_dict("vit")
    del state["visual.ln_post.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['visual.ln_post.weight'\]") as info:
        clip.load(str(tmp_path / "partial.pt"), device="cpu")
    assert isinstance(info.value, ValueError)


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    state = tiny_state_dict("vit")
    state["ln_final.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"ln_final.bias: expected \(64,\), got \(3,\)"):
        clip.load(str(tmp_path / "bad.pt"), device="cpu")


def test_html_page_error_says_the_download_failed(tmp_path: Path) -> None:
    (tmp_path / "ViT-B-32.pt").write_bytes(HTML_PAGE)
    with pytest.raises(CheckpointError, match="HTML page"):
        clip.load(str(tmp_path / "ViT-B-32.pt"), device="cpu")
    with (
        pytest.raises(CheckpointError, match="HTML page"),
        pytest.warns(UserWarning, match="not a JIT archive"),
    ):
        clip.load(str(tmp_path / "ViT-B-32.pt"), device="cpu", jit=True)


def test_unsafe_archive_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    source = release_archive("vit")
    evil = rewrite_zip(
        source,
        tmp_path / "evil.pt",
        {f"{archive_root(source)}/data.pkl": pickle.dumps(RunsCode(), protocol=2)},
    )
    with pytest.raises(UnsafeCheckpointError, match="system"):
        clip.load(str(evil), device="cpu")
    assert not marker.exists()


def test_unknown_name(tmp_path: Path) -> None:
    expected = f"Model ViT-X/99 not found; available models = {clip.available_models()}"
    with pytest.raises(RuntimeError, match="^" + re.escape(expected)):
        clip.load("ViT-X/99", device="cpu")
    with pytest.raises(RuntimeError, match="not found; available models"):
        clip.load(str(tmp_path / "missing.pt"), device="cpu")


def test_directory_name(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        clip.load(str(tmp_path), device="cpu")


# ----------------------------------------------------------------------------------------------
# Released names: download, verify, load


def test_load_by_name_downloads_verifies_and_loads(
    http_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = make_release_dir(tmp_path / "src", "RN50").read_bytes()
    url = http_server.add_model(release_file_name("RN50"), payload)
    monkeypatch.setitem(clip_module._MODELS, "RN50", url)
    cache = tmp_path / "cache"
    model, _ = clip.load("RN50", device="cpu", download_root=str(cache))
    assert (cache / "RN50.pt").read_bytes() == payload
    assert len(http_server.requests_for(url)) == 1
    reference = tiny_model("resnet").float()
    for ours, expected in zip(_features(model, "resnet"), _features(reference, "resnet")):
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    clip.load("RN50", device="cpu", download_root=str(cache))  # cached: no second download
    assert len(http_server.requests_for(url)) == 1


def test_default_download_root_comes_from_the_environment(
    http_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = make_release_dir(tmp_path / "src", "ViT-B/32").read_bytes()
    monkeypatch.setitem(clip_module._MODELS, "ViT-B/32", http_server.add_model("ViT-B-32.pt", payload))
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "env-cache"))
    clip.load("ViT-B/32", device="cpu")
    assert (tmp_path / "env-cache" / "ViT-B-32.pt").is_file()


def test_corrupt_download_is_not_loaded(
    http_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = make_release_dir(tmp_path / "src", "ViT-B/32").read_bytes()
    url = http_server.add_model("ViT-B-32.pt", payload, served=HTML_PAGE)
    monkeypatch.setitem(clip_module._MODELS, "ViT-B/32", url)
    with pytest.raises(RuntimeError):
        clip.load("ViT-B/32", device="cpu", download_root=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "ViT-B-32.pt").exists()


# ----------------------------------------------------------------------------------------------
# Devices: checked before anything is downloaded or read


@pytest.mark.parametrize("device", ["CPU", " cpu ", "Cpu", "cpu:0"])
def test_device_strings_are_normalised(device: str) -> None:
    model, _ = clip.load(str(release_archive("vit")), device=device)
    assert model.logit_scale.device.type == "cpu" and model.logit_scale.dtype == torch.float32


def test_cuda_without_a_gpu(http_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(clip_module._MODELS, "RN50", http_server.add_model("RN50.pt", b"x" * 10))
    for device in ("cuda", "CUDA", "cuda:0", torch.device("cuda")):
        with pytest.raises(RuntimeError, match=r"CUDA is not available.*\['cpu'\].*device='cpu'"):
            clip.load("RN50", device=device, download_root=str(tmp_path / "cache"))
    assert http_server.requests == [] and not (tmp_path / "cache").exists()


def test_cuda_index_out_of_range(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match=r"'cuda:7'.*2 CUDA device.*cuda:0', 'cuda:1'"):
        clip.load(str(tmp_path / "never-read.pt"), device="cuda:7")


def test_mps_when_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"'mps' is not available.*available: \['cpu'"):
        clip.load(str(tmp_path / "never-read.pt"), device="mps")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "", 1.5])
def test_malformed_devices(device: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="device"):
        clip.load(str(tmp_path / "never-read.pt"), device=device)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# dtype


def test_bfloat16_on_cpu() -> None:
    model, _ = clip.load(str(release_archive("vit")), device="cpu", dtype=torch.bfloat16)
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {torch.bfloat16}
    reference, _ = clip.load(str(release_archive("vit")), device="cpu")
    images, tokens = example_inputs("vit")
    with torch.no_grad():
        image_features = model.encode_image(images.bfloat16())
        text_features = model.encode_text(tokens)
        assert image_features.dtype == text_features.dtype == torch.bfloat16
        torch.testing.assert_close(
            image_features.float(), reference.encode_image(images), atol=0.05, rtol=0.05
        )
        torch.testing.assert_close(text_features.float(), reference.encode_text(tokens), atol=0.05, rtol=0.05)


def test_dtype_is_keyword_only_and_floating(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        clip.load(str(release_archive("vit")), "cpu", False, None, torch.bfloat16)  # type: ignore[misc]
    with pytest.raises(ValueError, match="floating-point"):
        clip.load(str(tmp_path / "never-read.pt"), device="cpu", dtype=torch.int8)


# ----------------------------------------------------------------------------------------------
# hubconf.py


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = _hubconf()
    listed = {name for name in dir(hub) if callable(getattr(hub, name)) and not name.startswith("_")}
    assert listed == set(HUB_NAMES) | {"tokenize"}  # what torch.hub.list would show
    assert sorted(HUB_NAMES.values(), key=clip.available_models().index) == clip.available_models()
    for module_name in hub.dependencies:
        assert importlib.util.find_spec(module_name) is not None, module_name

    calls = []
    monkeypatch.setattr(clip, "load", lambda name, **kwargs: calls.append((name, kwargs)) or ("m", "p"))
    for entry, name in HUB_NAMES.items():
        assert getattr(hub, entry)(device="cpu", jit=True) == ("m", "p")
        assert calls[-1] == (name, {"device": "cpu", "jit": True})
        assert getattr(hub, entry).__name__ == entry
    assert hub.tokenize() is clip.tokenize  # the release's hubconf returns the function
    assert torch.equal(hub.tokenize()("a photo of a cat"), clip.tokenize("a photo of a cat"))


def test_torch_hub_local_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip, "load", lambda name, **kwargs: (name, kwargs))
    result = torch.hub.load(str(REPO_ROOT), "ViT_L_14_336px", source="local", device="cpu")
    assert result == ("ViT-L/14@336px", {"device": "cpu"})


def test_the_original_module_names_stay_importable() -> None:
    for name in (
        "_MODELS",
        "_download",
        "_transform",
        "_convert_image_to_rgb",
        "BICUBIC",
        "_Tokenizer",
        "_tokenizer",
        "available_models",
    ):
        assert hasattr(clip_module, name), name
    assert clip_module._Tokenizer is clip.simple_tokenizer.SimpleTokenizer
    assert isinstance(clip_module._tokenizer, clip_module._Tokenizer)
    assert clip_module._transform(32).transforms[1].size == (32, 32)
