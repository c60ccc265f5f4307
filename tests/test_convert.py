"""`clip convert`: release-layout .safetensors and transformers CLIPModel directories."""

import json
from pathlib import Path
from typing import Tuple

import pytest
import torch
from _checkpoints import example_inputs, release_archive, save_state_dict
from _peers import import_transformers

import clip
import clip.clip as clip_module
from clip.__main__ import main
from clip._weights.safetensors import read_safetensors
from clip._weights.torchscript import read_torchscript_state_dict


def _convert(capsys: pytest.CaptureFixture, *argv: str) -> Tuple[int, str, str]:
    code = main(["convert", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _outputs(path: Path, arch: str) -> Tuple[torch.Tensor, ...]:
    model, _ = clip.load(str(path), device="cpu")
    images, tokens = example_inputs(arch)
    with torch.no_grad():
        return tuple(model(images, tokens))


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_safetensors_export_holds_the_release_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture, arch: str
) -> None:
    dst = tmp_path / "model.safetensors"
    code, out, err = _convert(capsys, str(release_archive(arch)), str(dst))
    assert code == 0, err
    assert "release-layout .safetensors" in out
    ours = read_safetensors(str(dst))
    release = read_torchscript_state_dict(release_archive(arch))
    weights = {
        k: v for k, v in release.items() if k not in ("input_resolution", "context_length", "vocab_size")
    }
    assert set(ours) == set(weights)
    for key, value in weights.items():  # same keys, dtypes (fp16 where the release has it) and bits
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    for got, expected in zip(_outputs(dst, arch), _outputs(release_archive(arch), arch)):
        assert torch.equal(got, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary left


def test_convert_from_a_training_checkpoint_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = save_state_dict(tmp_path / "ckpt.pt", "vit", wrapper="state_dict", prefix="module.")
    dst = tmp_path / "out.safetensors"
    assert _convert(capsys, str(src), str(dst))[0] == 0
    before = dst.read_bytes()
    code, _, err = _convert(capsys, str(src), str(dst))
    assert code == 2 and "exists; pass --force" in err and dst.read_bytes() == before
    assert _convert(capsys, str(src), str(dst), "--force")[0] == 0


def test_convert_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = _convert(capsys, str(tmp_path / "missing.pt"), str(tmp_path / "x"))
    assert code == 2 and "neither a released model" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    code, _, err = _convert(capsys, str(junk), str(tmp_path / "x.safetensors"))
    assert code == 1 and "not a PyTorch checkpoint" in err and not (tmp_path / "x.safetensors").exists()
    code, _, err = _convert(capsys, str(release_archive("resnet")), str(tmp_path / "hf"), "--to", "hf")
    assert code == 1 and "ResNet" in err and not (tmp_path / "hf").exists()
    monkeypatch.setitem(clip_module._MODELS, "RN50", "http://127.0.0.1:9/" + "0" * 64 + "/RN50.pt")
    code, _, err = _convert(capsys, "RN50", str(tmp_path / "y"), "--download-root", str(tmp_path / "cache"))
    assert code == 2 and "--download" in err  # cache-only unless asked


def test_convert_a_released_name_found_on_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _checkpoints import make_release_dir
    from _http_server import sha256_hex

    cache = tmp_path / "cache"
    digest = sha256_hex(make_release_dir(cache, "RN50").read_bytes())
    monkeypatch.setitem(clip_module._MODELS, "RN50", f"http://127.0.0.1:9/{digest}/RN50.pt")  # never reached
    dst = tmp_path / "rn50.safetensors"
    code, _, err = _convert(capsys, "RN50", str(dst), "--download-root", str(cache))
    assert code == 0, err
    for got, expected in zip(_outputs(dst, "resnet"), _outputs(release_archive("resnet"), "resnet")):
        assert torch.equal(got, expected)


def test_hf_export_loads_in_transformers_with_the_same_logits(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    transformers = import_transformers()
    dst = tmp_path / "hf-model"
    code, out, err = _convert(capsys, str(release_archive("vit")), str(dst), "--to", "hf")
    assert code == 0, err
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((dst / "config.json").read_text())["architectures"] == ["CLIPModel"]
    hf = transformers.CLIPModel.from_pretrained(str(dst)).eval()
    images, tokens = example_inputs("vit")
    with torch.no_grad():
        theirs = hf(input_ids=tokens, pixel_values=images)
    ours = _outputs(release_archive("vit"), "vit")
    # fp32 through 2 + 2 tiny layers, with transformers' own attention and matmul kernels: the
    # sums run in another order, so agreement is to rounding (logits are ~1e1, eps 1.2e-7)
    torch.testing.assert_close(theirs.logits_per_image, ours[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(theirs.logits_per_text, ours[1], rtol=1e-5, atol=1e-4)
    # and back: the directory loads with clip.load, bit for bit the release's outputs
    for got, expected in zip(_outputs(dst, "vit"), ours):
        assert torch.equal(got, expected)
