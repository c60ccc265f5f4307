"""Hostile inputs for `clip convert` and `clip train`, run as a user runs them (a subprocess,
tests/support/_cli_battery.py): the exit status, one ``clip ...: error:`` line and no traceback, and the
files before and after.

Each case lost data, showed a traceback or misled before its fix: ``--force`` emptied any folder
(the working folder too), a second run overwrote the first one's checkpoints, a decompression bomb
stopped training, messages blamed SRC for DST or quoted torch's advice to load unsafely, files were
written 0600.
"""

import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import torch
from _checkpoints import release_archive
from _cli_battery import Ran, assert_one_line_error, interrupt_clip, run_clip, snapshot
from _http_server import FileServer
from _images import bomb_png
from _model_factory import TINY_TRAIN_CONFIG
from PIL import Image

ROWS = 8
BATCH = 4  # two steps an epoch
UMASK = 0o022  # the common default: new files 0644, new folders 0755
# no source answers at once: the discard port refuses connections
UNREACHABLE = {"CLIP_WEIGHTS_SOURCE": "hub", "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
HAS_PROC = os.path.isdir("/proc/self")


def _pairs(path: Path, images: List[str]) -> Path:
    lines = ["filepath,title"] + [f"{image},a picture number {i}" for i, image in enumerate(images)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only inputs: tiny.json, pairs.csv (ROWS small images), bomb.csv (one row a bomb), model.pt."""
    root = tmp_path_factory.mktemp("hostile-train")
    (root / "images").mkdir()
    names = []
    for index in range(ROWS):
        gen = torch.Generator().manual_seed(index)
        pixels = torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
        names.append(f"images/{index}.png")
    _pairs(root / "pairs.csv", names)
    bomb_png(root / "images" / "bomb.png")
    _pairs(root / "bomb.csv", names[:3] + ["images/bomb.png"] + names[3:])
    (root / "tiny.json").write_text(json.dumps(TINY_TRAIN_CONFIG), encoding="utf-8")
    shutil.copy(release_archive("vit"), root / "model.pt")
    return root


def _train(base: Path, cwd: Path, *extra: str, data: str = "pairs.csv", workers: str = "0") -> Ran:
    argv = ["train", "--train-data", base / data, "--epochs", "1", "--batch-size", str(BATCH)]
    if "--model" not in extra and "--model-config" not in extra:
        argv += ["--model-config", base / "tiny.json"]
    return run_clip([*argv, "--workers", workers, *extra], cwd)


def _convert(base: Path, cwd: Path, dst: str, *extra: str, env: Optional[dict] = None) -> Ran:
    return run_clip(["convert", base / "model.pt", dst, *extra], cwd, env)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)  # inherited by the subprocesses started inside
    try:
        yield
    finally:
        os.umask(previous)


def _modes(folder: Path) -> dict:
    return {name: mode for name, (_, mode) in snapshot(folder).items()}


# ----------------------------------------------------------------------------------------------
# (1) convert --force replaces only a model it could have written


def _folder_of_code(cwd: Path) -> None:
    (cwd / "proj" / "src").mkdir(parents=True)
    (cwd / "proj" / "src" / "main.py").write_text("print('mine')\n")


def _foreign_config(cwd: Path) -> None:
    (cwd / "hf").mkdir()
    (cwd / "hf" / "config.json").write_text('{"model_type": "bert"}')


REFUSED_DESTINATIONS = {
    "a folder of code": (_folder_of_code, ["proj", "--to", "hf", "--force"], ["DST 'proj'", "other files"]),
    "the working folder": (None, [".", "--to", "hf", "--force"], ["DST '.'", "working folder"]),
    "a folder above the working folder": (None, ["..", "--to", "hf", "--force"], ["folder above it"]),
    "another model's folder": (_foreign_config, ["hf", "--to", "hf", "--force"], ["not a CLIPModel's"]),
    "a folder as the .safetensors file": (_folder_of_code, ["proj", "--force"], ["is a folder"]),
    "a text file": (None, ["notes.txt", "--force"], ["'notes.txt'", "not a model file"]),
}


@pytest.mark.parametrize("case", list(REFUSED_DESTINATIONS))
def test_convert_force_never_replaces_what_it_did_not_write(base: Path, tmp_path: Path, case: str) -> None:
    prepare, argv, needles = REFUSED_DESTINATIONS[case]
    cwd = tmp_path / "home" / "work"
    cwd.mkdir(parents=True)
    (cwd / "notes.txt").write_text("my notes\n")
    shutil.copy(base / "model.pt", cwd / "old.pt")
    if prepare is not None:
        prepare(cwd)
    before = snapshot(tmp_path)
    line = assert_one_line_error(_convert(base, cwd, *argv), 2, *needles, "--force replaces only")
    assert "cannot convert" not in line  # the problem is DST, not SRC
    assert snapshot(tmp_path) == before


def test_convert_force_replaces_its_own_output_with_the_umask_modes(base: Path, tmp_path: Path) -> None:
    with _umask(UMASK):
        for argv in (["hf", "--to", "hf"], ["out.safetensors"]):
            assert _convert(base, tmp_path, *argv).code == 0
            ran = _convert(base, tmp_path, *argv, "--force")
            assert ran.code == 0, ran.err
    assert _modes(tmp_path) == {
        "hf": 0o755,
        "hf/config.json": 0o644,
        "hf/model.safetensors": 0o644,
        "out.safetensors": 0o644,
    }  # nothing else: no temporary file or folder left either


# ----------------------------------------------------------------------------------------------
# (5), (6) outputs that cannot be written: DST's problem said as DST's, before SRC is read


DESTINATIONS = {
    "a missing folder": ("missing/out.safetensors", [], ["DST 'missing/out.safetensors'", "does not exist"]),
    "/proc": ("/proc/out.safetensors", [], ["no file can be created in /proc"]),
    "/proc with --to hf": ("/proc/out", ["--to", "hf"], ["no file can be created in /proc"]),
}


@pytest.mark.parametrize("case", list(DESTINATIONS))
def test_convert_names_the_destination_it_cannot_write(base: Path, tmp_path: Path, case: str) -> None:
    dst, extra, needles = DESTINATIONS[case]
    if dst.startswith("/proc") and not HAS_PROC:
        pytest.skip("no /proc on this system")
    line = assert_one_line_error(_convert(base, tmp_path, dst, *extra), 2, "cannot write", *needles)
    assert "cannot convert" not in line and ".tmp" not in line
    assert snapshot(tmp_path) == {}


# ----------------------------------------------------------------------------------------------
# (6) messages in the command line's words: --download-root, not download_root=...


def test_convert_and_train_speak_of_flags_when_weights_are_missing(base: Path, tmp_path: Path) -> None:
    ran = run_clip(["convert", "ViT-B/32", "out.safetensors", "--download"], tmp_path, UNREACHABLE)
    assert_one_line_error(ran, 1, "cannot download the weights of ViT-B/32")
    assert "--download-root DIR" in ran.err and "download_root" not in ran.err and "clip.load" not in ran.err
    ran = _train(base, tmp_path, "--model", "ViT-B/32")  # the cache only, unless --download
    assert_one_line_error(ran, 2, "not in the cache")
    assert "--download" in ran.err and "download_root" not in ran.err
    assert "pass a checkpoint file instead: --model path/to/checkpoint.pt" in ran.err
    assert not (tmp_path / "logs").exists()
    ran = run_clip(["convert", "ViT-B/32", "out.safetensors"], tmp_path)  # convert takes a file as SRC
    assert_one_line_error(ran, 2, "not in the cache")
    assert "pass a checkpoint file instead: clip convert path/to/checkpoint.pt DST" in ran.err
    assert "--model" not in ran.err and not (tmp_path / "out.safetensors").exists()


# ----------------------------------------------------------------------------------------------
# (2) a second run never overwrites the first: --resume is the only way into an existing run


def test_train_refuses_an_existing_run_and_continues_it_only_with_resume(base: Path, tmp_path: Path) -> None:
    with _umask(UMASK):
        first = _train(base, tmp_path)  # the default --logs: ./logs
        assert first.code == 0, first.err
        logs = tmp_path / "logs"
        before = snapshot(logs)
        assert {name: mode for name, (_, mode) in before.items()} == {
            "checkpoints": 0o755,
            "checkpoints/epoch_1.pt": 0o644,
            "out.log": 0o644,
        }
        again = _train(base, tmp_path)
        assert_one_line_error(again, 2, "--logs ./logs already holds a run", "epoch_1.pt", "--resume latest")
        elsewhere = tmp_path / "epoch_1.pt"
        shutil.copy(logs / "checkpoints" / "epoch_1.pt", elsewhere)
        other = _train(base, tmp_path, "--resume", str(elsewhere))  # another run's file: not into this run
        assert_one_line_error(other, 2, "already holds a run", "only from its own checkpoints")
        assert snapshot(logs) == before
        resumed = _train(base, tmp_path, "--resume", "latest", "--epochs", "2")
        assert resumed.code == 0, resumed.err
    after = snapshot(logs)
    assert after["checkpoints/epoch_1.pt"] == before["checkpoints/epoch_1.pt"]  # kept as it was
    assert "checkpoints/epoch_2.pt" in after
    lines = (logs / "out.log").read_text().splitlines()
    assert [line.split()[3] for line in lines] == ["1/1", "2/2"]  # one line per epoch, both runs


# ----------------------------------------------------------------------------------------------
# (5) refused before anything is loaded or written


def _config_with(**values: object) -> str:
    return json.dumps({**TINY_TRAIN_CONFIG, **values})


REFUSED_INPUTS = {
    "a string size": (["--model-config", "bad.json"], _config_with(vision_width="64"), ["'vision_width'"]),
    "a float size": (["--model-config", "bad.json"], _config_with(embed_dim=32.0), ["'embed_dim'", "32.0"]),
    "heads not dividing the width": (
        ["--model-config", "bad.json"],
        _config_with(transformer_heads=3),
        ["'transformer_heads'", "divisor of 'transformer_width' (64)"],
    ),
    "a negative size": (["--model-config", "bad.json"], _config_with(image_resolution=-32), ["-32"]),
    "not JSON": (["--model-config", "bad.json"], "{'embed_dim': 32}", ["not valid JSON", "line 1"]),
    "--logs in /proc": (["--logs", "/proc/clip-logs"], None, ["--logs /proc/clip-logs", "cannot create"]),
    "--resume a missing file": (["--resume", "gone.pt"], None, ["--resume gone.pt: no such file"]),
}


@pytest.mark.parametrize("case", list(REFUSED_INPUTS))
def test_train_refuses_bad_inputs_before_it_starts(base: Path, tmp_path: Path, case: str) -> None:
    argv, content, needles = REFUSED_INPUTS[case]
    if "/proc/clip-logs" in argv and not HAS_PROC:
        pytest.skip("no /proc on this system")
    if content is not None:
        (tmp_path / "bad.json").write_text(content)
    if argv[0] == "--model-config":
        needles = ["--model-config bad.json", *needles]
    before = snapshot(tmp_path)
    assert_one_line_error(_train(base, tmp_path, *argv), 2, *needles)
    assert snapshot(tmp_path) == before  # no logs folder, no empty checkpoints folder


def _release_archive(path: Path) -> None:
    shutil.copy(release_archive("vit"), path)


RESUMES = {
    "a text file": (lambda p: p.write_text("epoch 3\n"), ["not a checkpoint of clip train"]),
    "a release archive": (_release_archive, ["TorchScript archive", "pass it as --model"]),
}


@pytest.mark.parametrize("case", list(RESUMES))
def test_train_says_what_a_resume_file_is_instead(base: Path, tmp_path: Path, case: str) -> None:
    write, needles = RESUMES[case]
    write(tmp_path / "resume.pt")
    before = snapshot(tmp_path)
    ran = _train(base, tmp_path, "--resume", "resume.pt")
    assert_one_line_error(ran, 1, "--resume resume.pt", *needles)
    assert "weights_only" not in ran.err  # torch's advice to load unsafely is no option here
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# (5), (6) the data: a decompression bomb is skipped like any unreadable image; missing files said


def test_train_skips_a_decompression_bomb(base: Path, tmp_path: Path) -> None:
    ran = _train(base, tmp_path, data="bomb.csv", workers="1")  # decoded in a loader process
    assert ran.code == 0, ran.err
    assert "Traceback" not in ran.err and "bad rows skipped 1" in ran.out
    assert (tmp_path / "logs" / "checkpoints" / "epoch_1.pt").is_file()


def test_train_says_the_image_files_are_missing(base: Path, tmp_path: Path) -> None:
    _pairs(tmp_path / "moved.csv", ["gone/a.png", "gone/b.png"])
    before = snapshot(tmp_path)
    ran = run_clip(
        ["train", "--train-data", "moved.csv", "--model-config", base / "tiny.json", "--workers", "0"],
        tmp_path,
    )
    line = assert_one_line_error(ran, 1, "image files of all 2 rows are missing", "gone/a.png'")
    assert "--batch-size" not in line
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# (5) Ctrl-C: one line, exit 130, the last checkpoint and DST intact


def test_ctrl_c_during_train_keeps_whole_checkpoints(base: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "logs" / "checkpoints"
    argv = ["train", "--train-data", base / "pairs.csv", "--model-config", base / "tiny.json"]
    argv += ["--batch-size", str(BATCH), "--epochs", "1000", "--workers", "1"]
    ran = interrupt_clip(argv, tmp_path, lambda: (checkpoints / "epoch_1.pt").exists())
    assert ran.code == 130, ran.err
    assert "Traceback" not in ran.err
    assert ran.err.strip().splitlines()[-1] == (
        "clip train: interrupted; the checkpoints saved so far are kept; continue with --resume latest "
        "and the same --logs"
    )
    saved = sorted(checkpoints.iterdir())
    assert saved and all(path.name.startswith("epoch_") for path in saved)  # no temporary file left
    for path in saved:
        assert set(torch.load(path, map_location="cpu", weights_only=True)) >= {"epoch", "state_dict"}


def test_ctrl_c_during_convert_leaves_dst_as_it_was(base: Path, tmp_path: Path) -> None:
    from clip._weights import registry

    shutil.copy(base / "model.pt", tmp_path / "out.safetensors")  # replaceable (--force), yet kept
    before = snapshot(tmp_path)
    with FileServer() as server:
        endpoint = server.url("").rstrip("/")
        first = registry.hub_files("ViT-B/32")[0].url(endpoint)
        server.add(first[len(endpoint) :], b"", stall_s=60)  # the download hangs
        env = {**UNREACHABLE, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(tmp_path / "hub")}
        argv = ["convert", "ViT-B/32", "out.safetensors", "--download", "--force"]
        argv += ["--download-root", str(tmp_path / "cache")]
        ran = interrupt_clip(argv, tmp_path, lambda: bool(server.requests), env)
    assert ran.code == 130, ran.err
    assert "Traceback" not in ran.err
    assert ran.err.strip().splitlines()[-1] == "clip convert: interrupted; DST was left as it was"
    assert {k: v for k, v in snapshot(tmp_path).items() if k == "out.safetensors"} == before


def test_ctrl_c_while_convert_writes_leaves_no_part(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import safetensors.torch

    from clip.__main__ import main

    def interrupted_write(tensors: dict, path: str, metadata: Optional[dict] = None) -> None:
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted_write)
    monkeypatch.chdir(tmp_path)
    for argv in (["out.safetensors"], ["hf", "--to", "hf"]):
        assert main(["convert", str(base / "model.pt"), *argv]) == 130
        assert capsys.readouterr().err.strip() == "clip convert: interrupted; DST was left as it was"
        assert snapshot(tmp_path) == {}  # neither DST nor any temporary file or folder


def test_an_interrupt_held_during_a_swap_lands_after_it() -> None:
    from clip._atomic import interrupts_held

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run: Python runs handlers between bytecodes
            steps.append("swapped")
    assert steps == ["swapped"]
