"""The command line (`python -m clip`, the `clip` console script): the README example and its errors.

Models are tiny test-made archives; their expected probabilities come from the original
implementation (tests/data/published_golden.json). Released names are served by the local HTTP
test server, never the network.
"""

import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
from _checkpoints import make_release_dir, release_archive, release_file_name
from _http_server import FileServer
from _published import CLIP_PNG, GOLDEN_ATOL, GOLDEN_RTOL, load_golden

import clip.clip as clip_module
from clip.__main__ import EXAMPLE_IMAGE, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main

RELEASED_URL = "https://openaipublic.azureedge.net/clip/models/"
SUBPROCESS_TIMEOUT_S = 120
PRINT_DIGITS_RTOL = 1e-6  # numpy prints 8 significant digits
# every subcommand `clip --help` must list (each with a worked example in its own --help)
ALL_SUBCOMMANDS = [
    "classify",
    "embed",
    "search",
    "index",
    "dedup",
    "convert",
    "train",
    "export",
    "serve",
    "explain",
    "score",
]


def _golden_probs(arch: str) -> np.ndarray:
    return np.array(load_golden()["archives"][arch]["python"]["clip_png_probs"])


def _printed_probs(stdout: str) -> np.ndarray:
    """The array after "Label probs:" (up to the first blank line), as numbers."""
    match = re.search(r"Label probs: (\[\[.*?\]\])\n", stdout, re.S)
    assert match, stdout
    rows = re.findall(r"\[([^\[\]]*)\]", match.group(1))
    return np.array([[float(x) for x in row.split()] for row in rows])


def _run(argv: List[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _subprocess(
    args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    environment.pop("CLIP_ALLOW_DOWNLOAD", None)
    return subprocess.run(
        [sys.executable, "-m", "clip", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


@pytest.fixture(autouse=True)
def no_download_permission(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLIP_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "empty-cache"))


# ----------------------------------------------------------------------------------------------
# The README example


@pytest.mark.golden
@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_readme_example_in_process(arch: str, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(["--model", str(release_archive(arch)), "--device", "cpu"], capsys)
    assert code == EXIT_OK, err
    probs = _printed_probs(out)
    np.testing.assert_allclose(
        probs, _golden_probs(arch), rtol=GOLDEN_RTOL + PRINT_DIGITS_RTOL, atol=GOLDEN_ATOL
    )
    # the table: one block per image, one line per label with its percentage
    assert f"\n{EXAMPLE_IMAGE}\n" in out
    for label, p in zip(("a diagram", "a dog", "a cat"), probs[0]):
        assert re.search(rf"^  {re.escape(label)} +{100 * p:6.2f}%$", out, re.M), out


def test_module_entry_point_runs_the_readme_example(tmp_path: Path) -> None:
    result = _subprocess(["--model", str(release_archive("vit")), "--device", "cpu"], cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    np.testing.assert_allclose(
        _printed_probs(result.stdout),
        _golden_probs("vit"),
        rtol=GOLDEN_RTOL + PRINT_DIGITS_RTOL,
        atol=GOLDEN_ATOL,
    )


@pytest.mark.golden
def test_several_images_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    second = tmp_path / "copy.png"
    second.write_bytes(CLIP_PNG.read_bytes())
    labels = ["a diagram", "a dog", "a cat", "a photo of a diagram"]
    code, out, err = _run(
        [str(CLIP_PNG), str(second), "--labels", *labels, "--model", str(release_archive("vit"))], capsys
    )
    assert code == EXIT_OK, err
    probs = _printed_probs(out)
    assert probs.shape == (2, len(labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs[0], probs[1])  # the same pixels
    assert f"\n{CLIP_PNG}\n" in out and f"\n{second}\n" in out


@pytest.mark.golden
def test_jit_option_gives_the_same_probabilities(capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(["--model", str(release_archive("vit")), "--jit", "--device", "cpu"], capsys)
    assert code == EXIT_OK, err
    golden = load_golden()["archives"]["vit"]["jit"]["clip_png_probs"]
    np.testing.assert_allclose(
        _printed_probs(out), golden, rtol=GOLDEN_RTOL + PRINT_DIGITS_RTOL, atol=GOLDEN_ATOL
    )


def test_the_example_image_ships_with_the_package() -> None:
    assert EXAMPLE_IMAGE.is_file() and EXAMPLE_IMAGE.read_bytes() == CLIP_PNG.read_bytes()


def test_console_script_is_declared() -> None:
    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name == "clip"]
    assert [ep.value for ep in scripts] == ["clip.__main__:main"]
    assert scripts[0].load() is main


# ----------------------------------------------------------------------------------------------
# Released names: cache only, unless downloading is allowed


def test_missing_weights_give_one_clear_message(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = _subprocess([], cwd=tmp_path, env={"CLIP_CACHE_DIR": str(cache)})
    assert result.returncode == EXIT_USAGE
    assert result.stdout == "" and "Traceback" not in result.stderr
    message = result.stderr
    assert message.startswith("clip: error: the weights of ViT-B/32 are not in the cache")
    assert str(cache / "ViT-B-32.pt") in message  # which file, where it looked
    assert clip_module._MODELS["ViT-B/32"] in message  # where to get it
    for hint in ("--download", "CLIP_ALLOW_DOWNLOAD=1", "--download-root", "CLIP_CACHE_DIR", "--model"):
        assert hint in message
    assert not cache.exists()  # nothing created, nothing downloaded


def test_missing_weights_under_download_root(
    tmp_path: Path, http_server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    url = http_server.add_model("RN50.pt", release_archive("resnet").read_bytes())
    monkeypatch.setitem(clip_module._MODELS, "RN50", url)
    code, out, err = _run(["--model", "RN50", "--download-root", str(tmp_path / "root")], capsys)
    assert code == EXIT_USAGE and out == ""
    assert str(tmp_path / "root" / "RN50.pt") in err and url in err
    assert http_server.requests == []  # no network access without permission


@pytest.mark.parametrize("permission", ["flag", "env"])
def test_download_when_allowed_then_cached(
    permission: str,
    tmp_path: Path,
    http_server: FileServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    payload = make_release_dir(tmp_path / "src", "ViT-B/32").read_bytes()
    url = http_server.add_model(release_file_name("ViT-B/32"), payload)
    monkeypatch.setitem(clip_module._MODELS, "ViT-B/32", url)
    root = tmp_path / "root"
    argv = ["--download-root", str(root), "--device", "cpu"]
    if permission == "flag":
        argv.append("--download")
    else:
        monkeypatch.setenv("CLIP_ALLOW_DOWNLOAD", "1")
    code, out, err = _run(argv, capsys)
    assert code == EXIT_OK, err
    assert (root / "ViT-B-32.pt").read_bytes() == payload
    np.testing.assert_allclose(
        _printed_probs(out), _golden_probs("vit"), rtol=GOLDEN_RTOL + PRINT_DIGITS_RTOL, atol=GOLDEN_ATOL
    )
    assert len(http_server.requests_for(url)) == 1

    monkeypatch.delenv("CLIP_ALLOW_DOWNLOAD", raising=False)  # cached now: no permission needed
    code, out, err = _run(["--download-root", str(root), "--device", "cpu"], capsys)
    assert code == EXIT_OK, err
    assert len(http_server.requests_for(url)) == 1


def test_cached_file_with_the_wrong_checksum_is_reported_not_replaced(
    tmp_path: Path, http_server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(
        clip_module._MODELS, "ViT-B/32", http_server.add_model("ViT-B-32.pt", b"the real file")
    )
    cached = make_release_dir(tmp_path / "root", "ViT-B/32")  # a CLIP archive, but not the released bytes
    before = cached.read_bytes()
    code, out, err = _run(["--download-root", str(tmp_path / "root")], capsys)
    assert code == EXIT_USAGE and out == ""
    assert f"{cached} exists but its SHA256 does not match" in err and "--download" in err
    assert cached.read_bytes() == before and http_server.requests == []


def test_download_failure_is_reported_without_traceback(
    tmp_path: Path, http_server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    url = http_server.add("/" + "0" * 64 + "/ViT-B-32.pt", b"gone", status=404)
    monkeypatch.setitem(clip_module._MODELS, "ViT-B/32", url)
    code, out, err = _run(["--download", "--download-root", str(tmp_path / "root")], capsys)
    assert code == EXIT_FAILURE and out == ""
    assert err.startswith("clip: error: cannot load 'ViT-B/32'") and url in err
    assert not (tmp_path / "root" / "ViT-B-32.pt").exists()


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_image_paths(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = ["--model", str(release_archive("vit"))]
    code, out, err = _run([str(tmp_path / "nope.png"), *model], capsys)
    assert (
        code == EXIT_USAGE and out == "" and err == f"clip: error: image not found: {tmp_path / 'nope.png'}\n"
    )
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    code, out, err = _run([str(not_an_image), *model], capsys)
    assert code == EXIT_USAGE and err.startswith(f"clip: error: cannot read {not_an_image} as an image")
    code, out, err = _run([str(tmp_path), *model], capsys)
    assert code == EXIT_USAGE and "is a directory" in err


def test_bad_model_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(["--model", "ViT-B/99"], capsys)
    assert code == EXIT_USAGE and "neither a released model" in err and "ViT-L/14@336px" in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 10)
    code, out, err = _run(["--model", str(garbage)], capsys)
    assert code == EXIT_FAILURE and err.startswith(f"clip: error: cannot load {str(garbage)!r}")
    assert "Traceback" not in err


def test_bad_labels_and_devices(capsys: pytest.CaptureFixture) -> None:
    model = ["--model", str(release_archive("vit"))]
    code, out, err = _run([*model, "--labels", "word " * 100], capsys)
    assert code == EXIT_USAGE and "too long" in err
    code, out, err = _run([*model, "--device", "nonsense"], capsys)
    assert code == EXIT_FAILURE and "device" in err


def test_help_and_list_models(capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(["--help"], capsys)
    assert code == EXIT_OK
    for text in (
        "--labels",
        "--model",
        "--device",
        "--download-root",
        "--download",
        "CLIP_ALLOW_DOWNLOAD=1",
        "exit status",
        "~/.cache/clip",
    ):
        assert text in out
    code, out, err = _run(["--list-models"], capsys)
    assert code == EXIT_OK and out.split() == clip_module.available_models()
    code, out, err = _run(["--no-such-option"], capsys)
    assert code == EXIT_USAGE and "unrecognized arguments" in err


def test_help_lists_every_subcommand_with_one_line(capsys: pytest.CaptureFixture) -> None:
    from clip._cli.main import SUBCOMMANDS

    code, out, err = _run(["--help"], capsys)
    assert code == EXIT_OK and set(SUBCOMMANDS) == set(ALL_SUBCOMMANDS)
    listed = {}
    for line in out.splitlines():
        words = line.split(maxsplit=1)
        if len(words) == 2 and words[0] in SUBCOMMANDS and line.startswith("  "):
            listed[words[0]] = words[1]
    assert sorted(listed) == sorted(SUBCOMMANDS)  # each listed, with its line of text
    assert out.index("commands (") < out.index("options:")  # before the default job's options


@pytest.mark.parametrize("name", ALL_SUBCOMMANDS)
def test_each_subcommand_help_gives_a_worked_example(name: str, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run([name, "--help"], capsys)
    assert code == EXIT_OK and f"usage: clip {name}" in out
    examples = out[out.index("example") :]
    assert re.search(rf"^\s+(torchrun .*|clip embed .*&& )?clip {name} \S", examples, re.M), examples


@pytest.mark.parametrize(
    "word, suggestion", [("embd", "embed"), ("clasify", "classify"), ("serach", "search"), ("trian", "train")]
)
def test_mistyped_subcommand_is_named_with_a_suggestion(
    word: str, suggestion: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _run([word, "x", "-o", "y"], capsys)
    assert code == EXIT_USAGE and out == ""
    assert err == f"clip: error: no image or subcommand {word!r}; did you mean {suggestion!r}?\n"
    assert os.listdir(tmp_path) == []


def test_a_file_named_like_a_subcommand_is_still_an_image(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embd").write_bytes(CLIP_PNG.read_bytes())  # an image whose name is close to `embed`
    code, out, err = _run(["embd", "--model", str(release_archive("vit"))], capsys)
    assert code == EXIT_OK and "embd" in out and "Label probs:" in out
    code, out, err = _run(["cat"], capsys)  # no such file, no suffix, not close to a subcommand
    assert code == EXIT_USAGE and "no image or subcommand 'cat'" in err and "classify, embed" in err
