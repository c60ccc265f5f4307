"""clip.load reads every format users hold, recognised by content: same weights, same outputs."""

import json
import shutil
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch
from _checkpoints import example_inputs, release_archive, tiny_state_dict

import clip
from clip._weights import CheckpointError, read_state_dict
from clip._weights.layouts import hf_config, hf_from_release, release_from_hf
from clip._weights.safetensors import read_safetensors, write_safetensors
from clip.model import CLIPDimensions

safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is a runtime requirement")

ARCHES = ("vit", "resnet")


def _outputs(path: Path, arch: str) -> Tuple[torch.Tensor, ...]:
    model, _ = clip.load(str(path), device="cpu")
    images, tokens = example_inputs(arch)
    with torch.no_grad():
        return (model.encode_image(images), model.encode_text(tokens), *model(images, tokens))


def _weights(arch: str) -> Dict[str, torch.Tensor]:
    return dict(tiny_state_dict(arch, scalars=False))


def _safetensors_release(tmp: Path, arch: str) -> Path:
    path = tmp / "weights.bin"  # the name says nothing: the content decides
    write_safetensors(_weights(arch), str(path))
    return path


def _open_clip_plain(tmp: Path, arch: str) -> Path:
    path = tmp / "open_clip_pytorch_model.bin"
    torch.save({k: v.float() for k, v in _weights(arch).items()}, path)  # open_clip keeps fp32
    return path


def _open_clip_training(tmp: Path, arch: str) -> Path:
    path = tmp / "epoch_3.pt"
    state = {f"module.{k}": v.float() for k, v in _weights(arch).items()}
    optimizer = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    torch.save({"epoch": 3, "name": "run", "state_dict": state, "optimizer": optimizer}, path)
    return path


def _open_clip_safetensors(tmp: Path, arch: str) -> Path:
    path = tmp / "open_clip_model.safetensors"
    write_safetensors({k: v.float() for k, v in _weights(arch).items()}, str(path))
    return path


def _hf_safetensors(tmp: Path, arch: str) -> Path:
    path = tmp / "model.safetensors"
    write_safetensors({k: v.float() for k, v in hf_from_release(_weights(arch)).items()}, str(path))
    return path


def _hf_directory(tmp: Path, arch: str) -> Path:
    folder = tmp / "hf"
    folder.mkdir()
    _hf_safetensors(folder, arch)
    dims = CLIPDimensions.from_state_dict(_weights(arch))
    (folder / "config.json").write_text(json.dumps(hf_config(dims)))
    return folder


def _hf_torch_save(tmp: Path, arch: str) -> Path:
    folder = tmp / "hf_bin"
    folder.mkdir()
    torch.save(hf_from_release(_weights(arch)), folder / "pytorch_model.bin")
    return folder


FORMATS: Dict[str, Tuple[Callable[[Path, str], Path], Tuple[str, ...]]] = {
    "release-layout safetensors": (_safetensors_release, ARCHES),
    "open_clip state dict": (_open_clip_plain, ARCHES),
    "open_clip training checkpoint": (_open_clip_training, ARCHES),
    "open_clip safetensors": (_open_clip_safetensors, ARCHES),
    "transformers model.safetensors": (_hf_safetensors, ("vit",)),
    "transformers directory": (_hf_directory, ("vit",)),
    "transformers pytorch_model.bin directory": (_hf_torch_save, ("vit",)),
}
CASES = [(fmt, arch) for fmt, (_, arches) in FORMATS.items() for arch in arches]


@pytest.mark.parametrize(("fmt", "arch"), CASES, ids=[f"{f}-{a}" for f, a in CASES])
def test_every_format_gives_the_release_archive_outputs(tmp_path: Path, fmt: str, arch: str) -> None:
    path = FORMATS[fmt][0](tmp_path, arch)
    expected = _outputs(release_archive(arch), arch)
    got = _outputs(path, arch)
    # exact: the same weights (fp32 copies of the release's fp16 values round-trip exactly through
    # build_model's cast to the release's dtypes) run through the same code in one process
    for ours, reference in zip(got, expected):
        assert torch.equal(ours, reference)


@pytest.mark.parametrize("arch", ARCHES)
def test_read_state_dict_matches_the_archive_keys_and_values(tmp_path: Path, arch: str) -> None:
    reference = read_state_dict(release_archive(arch))
    got = read_state_dict(_open_clip_training(tmp_path, arch))
    scalars = ("input_resolution", "context_length", "vocab_size")
    weights = {k: v for k, v in reference.items() if k not in scalars}
    assert set(got) == set(weights)
    for key, value in weights.items():
        assert torch.equal(got[key].to(value.dtype), value), key


def test_hf_layout_round_trips_exactly() -> None:
    weights = _weights("vit")
    hf = hf_from_release(weights)
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in hf
    assert hf["visual_projection.weight"].shape == weights["visual.proj"].t().shape
    back = release_from_hf(hf)
    assert set(back) == set(weights)
    for key, value in weights.items():
        assert torch.equal(back[key], value), key


def test_hf_position_ids_are_ignored(tmp_path: Path) -> None:
    hf = hf_from_release(_weights("vit"))
    hf["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    path = tmp_path / "with_ids.safetensors"
    write_safetensors(hf, str(path))
    assert "text_model.embeddings.position_ids" not in read_state_dict(path)
    for ours, reference in zip(_outputs(path, "vit"), _outputs(release_archive("vit"), "vit")):
        assert torch.equal(ours, reference)


def test_resnet_has_no_transformers_layout() -> None:
    with pytest.raises(ValueError, match="ResNet"):
        hf_from_release(_weights("resnet"))


def test_incomplete_hf_attention_is_named(tmp_path: Path) -> None:
    hf = hf_from_release(_weights("vit"))
    del hf["vision_model.encoder.layers.1.self_attn.k_proj.weight"]
    path = tmp_path / "broken.safetensors"
    write_safetensors(hf, str(path))
    with pytest.raises(CheckpointError, match="vision_model.encoder.layers.1.self_attn.q_proj.weight"):
        clip.load(str(path), device="cpu")


def test_hf_directory_with_another_activation_is_refused(tmp_path: Path) -> None:
    folder = _hf_directory(tmp_path, "vit")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="hidden_act='gelu'"):
        clip.load(str(folder), device="cpu")


def test_directory_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="is a directory"):
        clip.load(str(tmp_path), device="cpu")


def test_our_safetensors_reader_agrees_with_the_library(tmp_path: Path) -> None:
    tensors = {
        "a": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": torch.arange(5, dtype=torch.int64),
        "c": torch.arange(6, dtype=torch.int16).to(torch.float16),
        "d": torch.arange(6, dtype=torch.int16).to(torch.bfloat16).reshape(2, 3),
        "e": torch.tensor([True, False, True]),
        "f": torch.zeros(0, 3),
        "g": torch.tensor(2.5),
    }
    path = tmp_path / "t.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    ours = read_safetensors(str(path))
    theirs = safetensors_torch.load_file(str(path))
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


@pytest.mark.parametrize(
    "damage",
    ["truncated", "header length past the end", "offsets past the end", "bad json", "bad dtype"],
)
def test_damaged_safetensors_files_are_refused(tmp_path: Path, damage: str) -> None:
    path = _safetensors_release(tmp_path, "vit")
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "header length past the end":
        data[:8] = (len(data) * 2).to_bytes(8, "little")
    else:
        first = next(k for k in header if k != "__metadata__")
        if damage == "offsets past the end":
            header[first]["data_offsets"] = [0, len(data) * 4]
        elif damage == "bad dtype":
            header[first]["dtype"] = "X99"
        text = json.dumps(header).encode() if damage != "bad json" else b"{" + b" " * (length - 1)
        text = text.ljust(length)[:length] if damage != "offsets past the end" else text
        data = bytearray(len(text).to_bytes(8, "little")) + text + data[8 + length :]
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        clip.load(str(path), device="cpu")


def test_loading_a_copy_leaves_the_source_untouched(tmp_path: Path) -> None:
    folder = _hf_directory(tmp_path, "vit")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    model, _ = clip.load(str(folder), device="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1)  # written after loading: the file must not change
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    shutil.rmtree(folder)
