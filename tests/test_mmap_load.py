"""`clip.load(..., mmap=True)`: weights stay memory-mapped from the file where no conversion is
needed, the model is the same, the file is never written; `clip convert --dtype` makes such files."""

import hashlib
import warnings
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from _checkpoints import example_inputs, release_archive

import clip
import clip.clip as clip_module
from clip.__main__ import main
from clip._weights.mapping import mapping_at
from clip._weights.safetensors import read_safetensors


def _fp32_file(tmp_path: Path, arch: str, capsys: pytest.CaptureFixture) -> Path:
    dst = tmp_path / f"{arch}-float32.safetensors"
    code = main(["convert", str(release_archive(arch)), str(dst), "--dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    return dst


def _tensors(model: torch.nn.Module) -> List[torch.Tensor]:
    return [t for t in (*model.parameters(), *model.buffers()) if t.numel()]


def _mapped(model: torch.nn.Module) -> List[bool]:
    return [mapping_at(t.data_ptr()) is not None for t in _tensors(model)]


def _outputs(model: torch.nn.Module, arch: str) -> Tuple[torch.Tensor, ...]:
    images, tokens = example_inputs(arch)
    with torch.no_grad():
        return tuple(model(images, tokens))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_an_fp32_file_stays_mapped_and_gives_the_same_model(
    tmp_path: Path, arch: str, capsys: pytest.CaptureFixture
) -> None:
    path = _fp32_file(tmp_path, arch, capsys)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to convert: no warning
        mapped, _ = clip.load(str(path), device="cpu", dtype=torch.float32, mmap=True)
    copied, _ = clip.load(str(path), device="cpu", dtype=torch.float32)
    released, _ = clip.load(str(release_archive(arch)), device="cpu")
    # every weight read from the file stays in its mapping (the causal mask is built, not read)
    state = read_safetensors(str(path))
    from_file = [name for name in mapped.state_dict() if name in state]
    assert len(from_file) == len(state)
    flags = dict(zip([n for n, t in mapped.state_dict().items() if t.numel()], _mapped(mapped)))
    assert all(flags[name] for name in from_file if state[name].numel())
    assert not any(_mapped(copied))  # without mmap: memory of its own
    for a, b, c in zip(_outputs(mapped, arch), _outputs(copied, arch), _outputs(released, arch)):
        assert torch.equal(a, b) and torch.equal(a, c)
    floats = [t for t in _tensors(mapped) if t.is_floating_point()]
    assert mapped.training is False and floats and all(t.dtype == torch.float32 for t in floats)


def test_writing_a_mapped_weight_never_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _fp32_file(tmp_path, "vit", capsys)
    before = _sha256(path)
    model, _ = clip.load(str(path), device="cpu", dtype=torch.float32, mmap=True)
    weight = model.visual.proj
    assert mapping_at(weight.data_ptr()) is not None
    with torch.no_grad():
        weight.mul_(2)  # a fine-tuning step, in place: a private page of this process
    expected = read_safetensors(str(path))["visual.proj"] * 2
    assert torch.equal(weight, expected)
    del model, weight
    assert _sha256(path) == before
    again, _ = clip.load(str(path), device="cpu", dtype=torch.float32, mmap=True)
    assert torch.equal(again.visual.proj, read_safetensors(str(path))["visual.proj"])


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_weights_that_need_converting_are_copied_with_a_warning(dtype: "torch.dtype | None") -> None:
    archive = release_archive("vit")  # fp16 weights
    with pytest.warns(UserWarning, match=r"mmap=True: \d+ of \d+ weights .*clip convert .*--dtype float32"):
        model, _ = clip.load(str(archive), device="cpu", dtype=dtype, mmap=True)
    reference, _ = clip.load(str(archive), device="cpu", dtype=dtype)
    converted = [t for t, m in zip(_tensors(model), _mapped(model)) if not m]
    assert converted  # the fp16 weights now live in memory of their own ...
    assert all(t.dtype == torch.float32 for t in _tensors(model) if t.is_floating_point())
    for a, b in zip(_outputs(model, "vit"), _outputs(reference, "vit")):
        assert torch.equal(a, b)  # ... and the model is the one a plain load gives


def test_without_a_dtype_an_fp32_file_takes_the_release_rounding_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _fp32_file(tmp_path, "vit", capsys)
    with pytest.warns(UserWarning, match=r"release's float16 rounding \(no dtype given\)"):
        model, _ = clip.load(str(path), device="cpu", mmap=True)
    reference, _ = clip.load(str(path), device="cpu")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values())
    )


def test_mmap_requests_that_cannot_work_are_refused_before_reading(tmp_path: Path) -> None:
    missing = str(tmp_path / "never-read.safetensors")  # checked before the file is looked at
    with pytest.raises(ValueError, match="only supported with jit=False"):
        clip.load(missing, device="cpu", jit=True, mmap=True)
    with pytest.raises(TypeError, match="mmap must be True or False"):
        clip.load(missing, device="cpu", mmap="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only the CPU reads.*device='cpu'"):
        clip_module._check_mmap_request(True, False, torch.device("cuda", 0))
    clip_module._check_mmap_request(False, True, torch.device("cuda", 0))  # off: nothing to check


def test_convert_dtype_casts_floating_weights_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    archive = str(release_archive("resnet"))
    release = read_safetensors(str(_convert_to(tmp_path / "release.safetensors", archive)))
    for dtype in ("float32", "bfloat16"):
        dst = _convert_to(tmp_path / f"{dtype}.safetensors", archive, "--dtype", dtype)
        got = read_safetensors(str(dst))
        assert set(got) == set(release)
        for key, value in release.items():
            want = value.to(getattr(torch, dtype)) if value.is_floating_point() else value
            assert got[key].dtype == want.dtype and torch.equal(got[key], want), key
    assert any(not v.is_floating_point() for v in release.values())  # the check above saw both kinds
    code = main(["convert", archive, str(tmp_path / "hf"), "--to", "hf", "--dtype", "float16"])
    assert code == 2 and "--to hf writes float32" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def _convert_to(dst: Path, *argv: str) -> Path:
    assert main(["convert", argv[0], str(dst), *argv[1:]]) == 0
    return dst
