"""The safe checkpoint reader (clip/_weights/): exact state dicts, nothing run, clear errors."""

import builtins
import os
import pickle
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from _checkpoints import (
    TINY_DIMS,
    archive_root,
    release_archive,
    rewrite_zip,
    save_state_dict,
    tiny_state_dict,
)

from clip._weights import (
    CheckpointError,
    UnsafeCheckpointError,
    is_torchscript_archive,
    read_state_dict,
    read_torchscript_state_dict,
    torchscript,
)


def _jit_state_dict(path: Path) -> "dict[str, torch.Tensor]":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").state_dict()


def _assert_same_state(ours: "dict[str, torch.Tensor]", reference: "dict[str, torch.Tensor]") -> None:
    assert list(ours) == list(reference)  # same keys, same order
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype, key
        assert ours[key].shape == value.shape, key
        assert ours[key].device.type == "cpu", key
        assert torch.equal(ours[key], value), key


# ----------------------------------------------------------------------------------------------
# Exactly what torch.jit.load(...).state_dict() gives


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_archive_state_dict_equals_torch_jit_load(arch: str) -> None:
    path = release_archive(arch)
    ours = read_torchscript_state_dict(path)
    _assert_same_state(ours, _jit_state_dict(path))
    # and it is the release layout: weights in the model's order, the three scalars after the
    # top-level parameters, fp16 where convert_weights casts
    _assert_same_state(ours, tiny_state_dict(arch))
    assert ours["visual.conv1.weight"].dtype == torch.float16
    assert ours["token_embedding.weight"].dtype == torch.float32
    assert int(ours["input_resolution"]) == TINY_DIMS[arch]["image_resolution"]
    assert int(ours["context_length"]) == 77 and int(ours["vocab_size"]) == 49408


class _Odd(torch.nn.Module):
    """Module features whose state-dict membership TorchScript decides: absent optional
    parameters, non-persistent buffers, plain tensor attributes, nested containers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)  # bias is a None parameter
        self.attn = torch.nn.MultiheadAttention(8, 2)  # q/k/v_proj_weight are None parameters
        self.bn = torch.nn.BatchNorm2d(4)  # num_batches_tracked: an int64 buffer
        self.blocks = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        self.register_buffer("hidden", torch.arange(5.0), persistent=False)
        self.plain = torch.ones(3)  # a plain attribute: a graph constant, not a state entry
        self.scale16 = torch.nn.Parameter(torch.randn(4).half())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)).mean(dim=(2, 3))
        return self.blocks(y).sum() + self.hidden.sum() + self.plain.sum() + self.scale16.float().sum()


def test_reader_decides_membership_like_torchscript(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Odd().eval(), torch.randn(1, 3, 8, 8), check_trace=False)
        traced.save(str(tmp_path / "odd.pt"))
    ours = read_state_dict(tmp_path / "odd.pt")
    reference = _jit_state_dict(tmp_path / "odd.pt")
    _assert_same_state(ours, reference)
    assert "conv.bias" not in ours and "plain" not in ours
    assert "hidden" in ours and ours["bn.num_batches_tracked"].dtype == torch.int64


def test_archives_without_buffer_declarations(tmp_path: Path) -> None:
    """Older writers may not declare buffers: tensor attributes that are not parameters are."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(_Odd().eval(), torch.randn(1, 3, 8, 8), check_trace=False).save(
            str(tmp_path / "odd.pt")
        )
    reference = _jit_state_dict(tmp_path / "odd.pt")
    replace = {}
    with zipfile.ZipFile(tmp_path / "odd.pt") as zf:
        for name in zf.namelist():
            if "/code/" in name and name.endswith(".py"):
                source = zf.read(name).decode()
                stripped = "\n".join(line for line in source.splitlines() if "__buffers__" not in line)
                if stripped != source.rstrip("\n"):
                    replace[name] = stripped.encode()
    assert replace  # the buffers of BatchNorm2d and _Odd were declared
    old_style = rewrite_zip(tmp_path / "odd.pt", tmp_path / "old.pt", replace)
    _assert_same_state(read_state_dict(old_style), reference)


def test_root_folder_name_is_not_fixed(tmp_path: Path) -> None:
    renamed = rewrite_zip(release_archive("vit"), tmp_path / "ViT-B-32.pt", rename_root="something_else")
    assert archive_root(renamed) == "something_else"
    _assert_same_state(read_state_dict(renamed), tiny_state_dict("vit"))


def test_cuda_storage_locations_are_read_onto_the_cpu() -> None:
    path = release_archive("vit")
    with zipfile.ZipFile(path) as zf:
        pickled = zf.read(f"{archive_root(path)}/data.pkl")
    assert b"cuda:0" in pickled and b"cpu" not in pickled  # every record names the GPU, as released
    state = read_state_dict(path)
    assert {t.device.type for t in state.values()} == {"cpu"}


def test_tensors_are_mapped_copy_on_write(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(release_archive("vit").read_bytes())
    before = path.read_bytes()
    state = read_state_dict(path)
    weight = state["visual.conv1.weight"]
    assert weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()
    weight.zero_()  # writable, and the file never changes
    assert path.read_bytes() == before
    assert torch.equal(
        read_state_dict(path)["visual.conv1.weight"], tiny_state_dict("vit")["visual.conv1.weight"]
    )


def test_compressed_tensor_members_are_read(tmp_path: Path) -> None:
    deflated = rewrite_zip(release_archive("vit"), tmp_path / "z.pt", compress_data=True)
    with zipfile.ZipFile(deflated) as zf:
        assert any(i.compress_type == zipfile.ZIP_DEFLATED and "/data/" in i.filename for i in zf.infolist())
    _assert_same_state(read_state_dict(deflated), tiny_state_dict("vit"))


# ----------------------------------------------------------------------------------------------
# Plain torch.save files


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"scalars": False},
        {"wrapper": "state_dict"},
        {"wrapper": "model_state_dict", "scalars": False},
        {"prefix": "module."},
        {"legacy_format": True},
    ],
    ids=["plain", "no-scalars", "wrapped", "model-wrapped", "dataparallel", "legacy-format"],
)
def test_plain_state_dicts_load(tmp_path: Path, options: dict) -> None:
    path = save_state_dict(tmp_path / "sd.pt", "vit", **options)
    expected = tiny_state_dict("vit", scalars=options.get("scalars", True))
    _assert_same_state(read_state_dict(path), expected)
    assert not is_torchscript_archive(path)


def test_fp32_state_dict_keeps_its_dtype(tmp_path: Path) -> None:
    path = save_state_dict(tmp_path / "sd.pt", "resnet", dtype=torch.float32)
    state = read_state_dict(path)
    assert state["visual.conv1.weight"].dtype == torch.float32
    assert torch.equal(state["visual.conv1.weight"], tiny_state_dict("resnet")["visual.conv1.weight"].float())


def test_is_torchscript_archive(tmp_path: Path) -> None:
    assert is_torchscript_archive(release_archive("vit"))
    assert not is_torchscript_archive(tmp_path / "missing.pt")
    (tmp_path / "page.pt").write_bytes(b"<html></html>")
    assert not is_torchscript_archive(tmp_path / "page.pt")


# ----------------------------------------------------------------------------------------------
# Nothing from the file runs


class _RunsCode:
    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple:
        return self.func, (self.arg,)


def _payloads(marker: Path) -> "dict[str, bytes]":
    make = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": pickle.dumps(_RunsCode(os.system, f"touch {marker}"), protocol=2),
        "builtins.exec": pickle.dumps(_RunsCode(builtins.exec, make), protocol=2),
        "builtins.eval": pickle.dumps(_RunsCode(builtins.eval, make), protocol=2),
        "subprocess.getoutput": pickle.dumps(_RunsCode(subprocess.getoutput, f"touch {marker}"), protocol=2),
    }


@pytest.mark.parametrize(
    "callable_name", ["os.system", "builtins.exec", "builtins.eval", "subprocess.getoutput"]
)
def test_code_in_a_torchscript_archive_is_refused_and_not_run(tmp_path: Path, callable_name: str) -> None:
    marker = tmp_path / "ran"
    payload = _payloads(marker)[callable_name]
    source = release_archive("vit")
    evil = rewrite_zip(source, tmp_path / "evil.pt", {f"{archive_root(source)}/data.pkl": payload})
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(evil)
    assert callable_name.split(".")[1] in str(info.value)  # names the offending global
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    assert not marker.exists()


def test_code_in_a_plain_state_dict_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2)}, plain)
    evil = rewrite_zip(
        plain, tmp_path / "evil.pt", {f"{archive_root(plain)}/data.pkl": _payloads(marker)["os.system"]}
    )
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(evil)
    assert not marker.exists()


def test_a_bare_pickle_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bare = tmp_path / "bare.pt"
    bare.write_bytes(_payloads(marker)["os.system"])
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_state_dict(bare)
    assert not marker.exists()


def test_storage_keys_cannot_point_outside_the_archive(tmp_path: Path) -> None:
    source = release_archive("vit")
    root = archive_root(source)
    with zipfile.ZipFile(source) as zf:
        pickled = zf.read(f"{root}/data.pkl")
    # the first storage key is "0": point it at a path outside the data folder (same length)
    tampered = pickled.replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x00/", 1)
    assert tampered != pickled
    evil = rewrite_zip(source, tmp_path / "evil.pt", {f"{root}/data.pkl": tampered})
    with pytest.raises(CheckpointError, match="invalid tensor record key"):
        read_state_dict(evil)


# ----------------------------------------------------------------------------------------------
# Wrong files: clear errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        read_state_dict(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.pt")


def test_random_bytes(tmp_path: Path) -> None:
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "noise.pt")


def test_html_page_saved_as_checkpoint(tmp_path: Path) -> None:
    page = b"\n<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>denied</body></html>"
    (tmp_path / "ViT-B-32.pt").write_bytes(page)
    with pytest.raises(CheckpointError, match="HTML page.*download probably failed"):
        read_state_dict(tmp_path / "ViT-B-32.pt")


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated_archive(tmp_path: Path, fraction: float) -> None:
    data = release_archive("vit").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(tmp_path / "cut.pt")


def test_tensor_member_shorter_than_its_record(tmp_path: Path) -> None:
    source = release_archive("vit")
    member = f"{archive_root(source)}/data/0"
    with zipfile.ZipFile(source) as zf:
        original = zf.read(member)
    short = rewrite_zip(source, tmp_path / "short.pt", {member: original[: len(original) // 2]})
    with pytest.raises(CheckpointError, match="claims .* bytes"):
        read_state_dict(short)


def test_tensor_member_missing(tmp_path: Path) -> None:
    source = release_archive("vit")
    dropped = rewrite_zip(source, tmp_path / "dropped.pt", drop=(f"{archive_root(source)}/data/3",))
    with pytest.raises(CheckpointError, match="does not contain"):
        read_state_dict(dropped)


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a PyTorch archive"):
        read_state_dict(tmp_path / "other.pt")


def test_zip_bomb_member_is_refused(tmp_path: Path) -> None:
    class Zeros(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("big", torch.zeros(2_000_000))  # 8 MB of zeros deflate to ~8 KB

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.big[:1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(Zeros(), torch.ones(1), check_trace=False).save(str(tmp_path / "zeros.pt"))
    bomb = rewrite_zip(tmp_path / "zeros.pt", tmp_path / "bomb.pt", compress_data=True)
    with pytest.raises(CheckpointError, match="zip bomb"):
        read_state_dict(bomb)


def test_oversized_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchscript, "MAX_PICKLE_BYTES", 64)
    with pytest.raises(CheckpointError, match="refusing to read"):
        read_state_dict(release_archive("vit"))


def test_pickle_of_something_else(tmp_path: Path) -> None:
    plain = tmp_path / "list.pt"
    torch.save([torch.ones(2)], plain)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(plain)
