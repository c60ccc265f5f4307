"""Where the weights of a released name come from (clip/_weights/sources.py, clip/_weights/hub.py):
the release file, the Hugging Face cache, the release URL, then the hub copies; each failure mode,
offline."""

import multiprocessing
import os
import pickle
import socket
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
import torch
from _checkpoints import example_inputs, make_release_dir, release_archive, release_file_name, tiny_state_dict
from _http_server import HTML_PAGE, FileServer, sha256_hex

import clip
import clip.clip as clip_module
from clip._weights import download as dl
from clip._weights import registry
from clip._weights.download import DownloadError
from clip._weights.hub import HubFile
from clip._weights.layouts import hf_from_release
from clip._weights.safetensors import write_safetensors

OPEN_CLIP_REPO = "timm/resnet50_clip.openai"
OPEN_CLIP_FILE = "open_clip_model.safetensors"
CACHE_NAME = HubFile(OPEN_CLIP_REPO, OPEN_CLIP_FILE).cache_name


def _open_clip_bytes(tmp: Path, arch: str = "resnet") -> bytes:
    path = tmp / f"open_clip_{arch}.safetensors"
    write_safetensors({k: v.float() for k, v in tiny_state_dict(arch, scalars=False).items()}, str(path))
    return path.read_bytes()


def _hf_bytes(tmp: Path) -> bytes:
    path = tmp / "hf_model.safetensors"
    write_safetensors(hf_from_release(dict(tiny_state_dict("vit", scalars=False))), str(path))
    return path.read_bytes()


def _outputs(model: torch.nn.Module, arch: str) -> Tuple[torch.Tensor, ...]:
    images, tokens = example_inputs(arch)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _assert_release_outputs(model: torch.nn.Module, arch: str = "resnet") -> None:
    reference, _ = clip.load(str(release_archive(arch)), device="cpu")
    for ours, expected in zip(_outputs(model, arch), _outputs(reference, arch)):
        assert torch.equal(ours, expected)  # same weights, same code, one process: exact


def _listing(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def world(http_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    """RN50's release URL and its open_clip hub copy, both on the loopback server; empty caches."""
    src = tmp_path / "src"
    src.mkdir()
    payload = make_release_dir(src, "RN50").read_bytes()
    release_url = http_server.add_model(release_file_name("RN50"), payload)
    monkeypatch.setitem(clip_module._MODELS, "RN50", release_url)
    hub_payload = _open_clip_bytes(src)
    hub_url = http_server.add_hub_file(OPEN_CLIP_REPO, OPEN_CLIP_FILE, hub_payload)
    monkeypatch.setenv("HF_ENDPOINT", http_server.url(""))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    cache = tmp_path / "cache"
    cache.mkdir()
    return {
        "server": http_server,
        "release_url": release_url,
        "hub_url": hub_url,
        "hub_payload": hub_payload,
        "storage": http_server.url(f"/storage/{sha256_hex(hub_payload)}"),
        "cache": cache,
        "tmp": tmp_path,
    }


def _load(world: Dict[str, Any], **kwargs: Any) -> torch.nn.Module:
    return clip.load("RN50", device="cpu", download_root=str(world["cache"]), **kwargs)[0]


def _load_from_hub(world: Dict[str, Any]) -> torch.nn.Module:
    with pytest.warns(UserWarning, match=f"using the hub copy {world['hub_url']}"):
        model = _load(world)
    assert (world["cache"] / CACHE_NAME).read_bytes() == world["hub_payload"]
    assert sorted(p.name for p in world["cache"].iterdir()) == [CACHE_NAME, CACHE_NAME + dl.VERIFIED_SUFFIX]
    return model


# ----------------------------------------------------------------------------------------------
# The release URL fails each way: the hub copy is used


def _release_fails(world: Dict[str, Any], how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    server: FileServer = world["server"]
    route = server.route(world["release_url"])
    if how == "dns":
        url = "http://no-such-host.invalid" + server._path(world["release_url"])
        monkeypatch.setitem(clip_module._MODELS, "RN50", url)
        real = socket.getaddrinfo

        def no_dns(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "no-such-host.invalid":
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return real(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    elif how == "refused":
        monkeypatch.setitem(
            clip_module._MODELS, "RN50", "http://127.0.0.1:9" + server._path(world["release_url"])
        )
    elif how in ("404", "403", "500"):
        route.status = int(how)
    elif how == "timeout":
        monkeypatch.setenv(dl.TIMEOUT_ENV, "0.5")
        route.stall_s = 30.0
    elif how == "corrupt":
        route.body = HTML_PAGE


@pytest.mark.parametrize("how", ["dns", "refused", "404", "403", "500", "timeout", "corrupt"])
def test_release_failure_falls_back_to_the_hub(
    world: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    _release_fails(world, how, monkeypatch)
    model = _load_from_hub(world)
    _assert_release_outputs(model)
    server: FileServer = world["server"]
    assert [r.method for r in server.requests_for(world["hub_url"])] == ["HEAD"]
    assert len(server.requests_for(world["storage"])) == 1
    # later calls find the verified hub copy on disk: no network at all
    server.clear_log()
    with pytest.warns(UserWarning, match="hub copy timm/resnet50_clip.openai/open_clip_model.safetensors in"):
        _load(world)
    assert server.requests == []


def test_release_file_on_disk_wins_and_says_nothing(world: Dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _load(world)  # downloads the release file
        world["server"].clear_log()
        _load(world)
    assert world["server"].requests == []
    assert not (world["cache"] / CACHE_NAME).exists()


def test_hub_download_resumes_with_range(world: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _release_fails(world, "404", monkeypatch)
    server: FileServer = world["server"]
    storage = server.route(world["storage"])
    storage.cut_after, storage.cut_times = 20_000, 1
    with pytest.raises(DownloadError, match="next call resumes it"):
        _load(world)
    assert (world["cache"] / (CACHE_NAME + dl.PARTIAL_SUFFIX)).stat().st_size == 20_000
    _load_from_hub(world)
    ranges = [r.range for r in server.requests_for(world["storage"])]
    assert ranges == [None, "bytes=20000-"]


@pytest.mark.parametrize("lie", ["hash", "size", "no hash", "local file"])
def test_a_hub_that_lies_is_refused_and_leaves_nothing(
    world: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, lie: str
) -> None:
    _release_fails(world, "404", monkeypatch)
    server: FileServer = world["server"]
    route = server.route(world["hub_url"])
    if lie == "hash":
        route.headers["X-Linked-Etag"] = f'"{sha256_hex(b"other bytes")}"'
        expected = "SHA256 checksum .* does not match"
    elif lie == "size":
        route.headers["X-Linked-Size"] = str(len(world["hub_payload"]) + 1)
        expected = "not the announced"
    elif lie == "no hash":
        del route.headers["X-Linked-Etag"]
        expected = "did not announce the file's SHA256"
    else:  # a redirect to a file of this machine, announced with that file's hash
        local = world["tmp"] / "secret.txt"
        local.write_bytes(b"not for the cache")
        route.location = local.as_uri()
        route.headers["X-Linked-Etag"] = f'"{sha256_hex(b"not for the cache")}"'
        route.headers["X-Linked-Size"] = str(len(b"not for the cache"))
        expected = "only http and https URLs are followed"
    before = _listing(world["tmp"])
    with pytest.raises(DownloadError, match=expected) as info:
        _load(world)
    assert _listing(world["tmp"]) == before  # no partial file, no lock, no marker, no copy
    assert world["release_url"] in str(info.value) and world["hub_url"] in str(info.value)


def test_every_source_failing_is_one_error_listing_each(
    world: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _release_fails(world, "404", monkeypatch)
    world["server"].route(world["hub_url"]).status = 503
    with pytest.raises(DownloadError) as info:
        _load(world)
    message = str(info.value)
    assert "no source could provide the weights of RN50" in message
    assert f"release URL {world['release_url']}: the server answered HTTP 404" in message
    assert "Hugging Face cache" in message
    assert f"hub copy {world['hub_url']}: the hub answered HTTP 503" in message
    assert "open_clip_pytorch_model.bin" in message  # the second open_clip file name was tried too
    assert "save it as" in message and CACHE_NAME in message  # how to place a file by hand


def test_offline_skips_the_hub(world: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _release_fails(world, "404", monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="skipped \\(HF_HUB_OFFLINE=1\\)"):
        _load(world)
    assert world["server"].requests_for(world["hub_url"]) == []


def test_source_pinned_by_the_environment(world: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    server: FileServer = world["server"]
    monkeypatch.setenv("CLIP_WEIGHTS_SOURCE", "hub")
    _load_from_hub(world)
    assert server.requests_for(world["release_url"]) == []
    monkeypatch.setenv("CLIP_WEIGHTS_SOURCE", "release")
    server.route(world["release_url"]).status = 404
    with pytest.raises(DownloadError, match="skipped \\(CLIP_WEIGHTS_SOURCE=release\\)"):
        _load(world)  # the hub copy already on disk is not used either
    monkeypatch.setenv("CLIP_WEIGHTS_SOURCE", "anywhere")
    with pytest.raises(ValueError, match="CLIP_WEIGHTS_SOURCE must be one of auto, release, hub"):
        _load(world)


def test_jit_with_a_hub_copy_warns_and_builds_the_python_model(
    world: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _release_fails(world, "404", monkeypatch)
    with pytest.warns(UserWarning, match="not a JIT archive"):
        model = _load(world, jit=True)
    assert isinstance(model, clip.model.CLIP)
    _assert_release_outputs(model)


def _load_in_child(results: Any, cache: str) -> None:
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _ = clip.load("RN50", device="cpu", download_root=cache)
        results.put(("ok", float(sum(float(t.double().sum()) for t in model.state_dict().values()))))
    except BaseException as exc:  # reported by the parent
        results.put(("error", repr(exc)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_processes_share_one_hub_download(
    world: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _release_fails(world, "404", monkeypatch)
    server: FileServer = world["server"]
    server.route(world["storage"]).stall_s = 0.5  # the first download is in flight while the others wait
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process (3.12+)
        children = [
            context.Process(target=_load_in_child, args=(results, str(world["cache"]))) for _ in range(4)
        ]
        for child in children:
            child.start()
    try:
        outcomes = [results.get(timeout=120) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
    assert [kind for kind, _ in outcomes] == ["ok"] * 4, outcomes
    assert len({total for _, total in outcomes}) == 1
    assert len(server.requests_for(world["storage"])) == 1  # one download, three waited
    assert sorted(p.name for p in world["cache"].iterdir()) == [CACHE_NAME, CACHE_NAME + dl.VERIFIED_SUFFIX]


# ----------------------------------------------------------------------------------------------
# An existing Hugging Face cache, read in place


def _hf_cache_tree(
    root: Path, repo: str, filename: str, payload: bytes, revision: str = "a1b2c3d4e5"
) -> Path:
    """The hub client's layout: refs/main -> revision, snapshots/<rev>/<file> -> ../../blobs/<sha>."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    blob = repo_dir / "blobs" / sha256_hex(payload)
    blob.parent.mkdir()
    blob.write_bytes(payload)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / filename).symlink_to(os.path.relpath(blob, snapshot))
    stale = repo_dir / "snapshots" / "0ld"  # an older revision whose blob was pruned
    stale.mkdir()
    (stale / filename).symlink_to("../../blobs/" + "0" * 64)
    return snapshot / filename


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "hf-home" / "hub"
    root.mkdir(parents=True)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(root.parent))  # found through $HF_HOME/hub
    yield root


@pytest.mark.skipif(os.name != "posix", reason="the hub cache uses symlinks")
@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_hf_cache_copy_is_found_offline_and_read_in_place(
    hf_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    if name == "RN50":
        arch, found = (
            "resnet",
            _hf_cache_tree(hf_cache, OPEN_CLIP_REPO, OPEN_CLIP_FILE, _open_clip_bytes(tmp_path)),
        )
    else:
        arch = "vit"
        found = _hf_cache_tree(
            hf_cache, "openai/clip-vit-base-patch32", "model.safetensors", _hf_bytes(tmp_path)
        )
    monkeypatch.setitem(clip_module._MODELS, name, "http://127.0.0.1:9/" + "0" * 64 + "/x.pt")  # unreachable
    cache = tmp_path / "cache"
    before = _listing(hf_cache)
    with pytest.warns(UserWarning, match="Hugging Face cache copy") as record:
        model, _ = clip.load(name, device="cpu", download_root=str(cache))
    assert str(found) in str(record[0].message)
    _assert_release_outputs(model, arch)
    assert _listing(hf_cache) == before  # read in place, never written
    assert not cache.exists() or list(cache.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="the hub cache uses symlinks")
def test_cli_cache_only_default_finds_the_hf_cache_copy(
    hf_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from clip.__main__ import main

    _hf_cache_tree(hf_cache, OPEN_CLIP_REPO, OPEN_CLIP_FILE, _open_clip_bytes(tmp_path))
    code = main(["--model", "RN50", "--download-root", str(tmp_path / "cache"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Label probs:" in captured.out and "Hugging Face cache copy" in captured.err


def test_hf_cache_location_follows_the_hub_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from clip._weights.hub import hf_cache_dir

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "b"))
    assert hf_cache_dir() == str(tmp_path / "a")
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hf_cache_dir() == str(tmp_path / "b" / "hub")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == str(tmp_path / "home" / ".cache" / "huggingface" / "hub")


def test_hub_table_covers_every_released_model() -> None:
    for name in clip.available_models():
        files = registry.hub_files(name)
        assert [f.filename for f in files[:2]] == [
            "open_clip_model.safetensors",
            "open_clip_pytorch_model.bin",
        ]
        assert (
            files[0].repo.startswith("timm/")
            and "_clip" in files[0].repo
            and files[0].repo.endswith(".openai")
        )
        transformers = files[2:]
        assert len(transformers) == (1 if name.startswith("ViT") else 0)
        assert all(
            f.repo.startswith("openai/clip-vit-") and f.filename == "model.safetensors" for f in transformers
        )


def test_models_table_is_the_registrys() -> None:
    """`clip.clip._MODELS` is the registry's own table: pointing a name at a mirror there redirects
    every download of it (the tests above rely on that)."""
    assert clip_module._MODELS is registry.RELEASE_URLS
    assert list(clip_module._MODELS.items()) == [(n, e.url) for n, e in registry.RELEASED.items()]
    for entry in registry.RELEASED.values():
        assert entry.url.endswith(f"/{entry.sha256}/{entry.file_name}")


def test_resolve_without_download_says_what_is_missing(tmp_path: Path) -> None:
    from clip._weights.sources import WeightsNotOnDisk, resolve

    with pytest.raises(WeightsNotOnDisk) as info:
        resolve("RN50", str(tmp_path), allow_download=False)
    missing = info.value
    assert isinstance(missing, DownloadError) and not missing.mismatched
    assert (missing.url, missing.path) == (clip_module._MODELS["RN50"], str(tmp_path / "RN50.pt"))
    (tmp_path / "RN50.pt").write_bytes(b"not the release")
    with pytest.raises(WeightsNotOnDisk) as info:
        resolve("RN50", str(tmp_path), allow_download=False)
    assert info.value.mismatched and pickle.loads(pickle.dumps(info.value)).mismatched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RN50.pt"]  # nothing fetched, nothing written
    with pytest.raises(LookupError):
        resolve("RN51", str(tmp_path), allow_download=True)
