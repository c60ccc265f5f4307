"""`clip serve` as a user runs it: the real server in a subprocess on a free loopback port, driven
over HTTP with httpx, the hostile cases, and the page in headless Chromium.

One server per module (a collection of six generated photos with captions, a tiny test-made
checkpoint); a second one without a collection. Expected values are computed here independently:
features with the model loaded in this process, rankings with `clip.collection`'s exact scan.
"""

import io
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import numpy as np
import pytest
import torch
from _checkpoints import release_archive
from _images import bomb_png
from _serve import CAPTIONS, ServeProcess, chromium_command, find_chromium, make_photos
from PIL import Image

import clip
import clip.collection
from clip import zeroshot
from clip.__main__ import main as clip_main

MAX_UPLOAD_MB = 1  # a small limit, so that the 413 cases send little
SCORE_ATOL = 1e-3  # stored features are float16
FEATURE_ATOL = 1e-5
PROBABILITY_ATOL = 1e-4
THUMB_SIZE = 256
SERVER_PACKAGES = ("fastapi", "uvicorn", "multipart", "python_multipart", "starlette", "httpx")
IMPORT_CHECK = (
    "import sys, clip, clip.collection, clip.zeroshot, clip._cli.main\n"
    f"print(','.join(m for m in {SERVER_PACKAGES!r} if m in sys.modules))\n"
)
QUERY = "an orange cat on a sofa"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def checkpoint(workdir: Path) -> Path:
    target = workdir / "tiny-vit.pt"
    target.write_bytes(release_archive("vit").read_bytes())
    return target


@pytest.fixture(scope="module")
def photos(workdir: Path) -> Path:
    make_photos(workdir / "photos")
    return workdir / "photos"


@pytest.fixture(scope="module")
def collection(workdir: Path, photos: Path, checkpoint: Path) -> Path:
    out = workdir / "photos.clip"
    argv = [str(photos / "pairs.csv"), "-o", str(out), "--model", str(checkpoint), "--workers", "0"]
    assert clip_main(["embed", *argv, "--no-progress"]) == 0
    clip.collection.build_index(out, progress=False)  # the server searches through it
    return out


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> Any:
    return clip.load(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def started(collection: Path, checkpoint: Path) -> Iterator[Dict[str, Any]]:
    """Everything that needs a fresh interpreter, started at once so that their imports overlap: the
    server of the collection (with its own model: no --model), one without a collection, and the
    check of what `import clip` imports."""
    with (
        ServeProcess([str(collection), "--max-upload", str(MAX_UPLOAD_MB)]) as server,
        ServeProcess(["--model", str(checkpoint)]) as bare,
    ):
        importer = subprocess.Popen(
            [sys.executable, "-c", IMPORT_CHECK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        server.wait_ready()
        bare.wait_ready()
        yield {"server": server, "bare": bare, "importer": importer}
        importer.kill()
        importer.wait()


@pytest.fixture(scope="module")
def server(started: Dict[str, Any]) -> ServeProcess:
    return started["server"]


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as opened:
        yield opened


def _text_features(model: Any, texts: List[str]) -> torch.Tensor:
    with torch.no_grad():
        features = model[0].encode_text(clip.tokenize(texts)).float()
    return features / features.norm(dim=-1, keepdim=True)


def _image_features(model: Any, paths: List[Path]) -> torch.Tensor:
    pixels = torch.stack([model[1](Image.open(path)) for path in paths])
    with torch.no_grad():
        features = model[0].encode_image(pixels).float()
    return features / features.norm(dim=-1, keepdim=True)


def _no_machine_paths(text: str, *folders: Path) -> None:
    for folder in (*folders, Path(tempfile.gettempdir()), Path.home()):
        assert str(folder) not in text, f"{folder} revealed in {text!r}"


def _jpeg(path: Path) -> bytes:
    return path.read_bytes()


# ------------------------------------------------------------------------------------------------
# The endpoints


def test_healthz(client: httpx.Client, collection: Path, checkpoint: Path) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok"
    assert body["model"] == checkpoint.name  # the file's name only, not its folder
    assert body["collection"] == {"items": len(CAPTIONS), "captions": True, "index": "flat"}
    assert body["dim"] == 32
    _no_machine_paths(answer.text, collection, checkpoint.parent)


def test_search_by_text(client: httpx.Client, model: Any, collection: Path, photos: Path) -> None:
    answer = client.get("/v1/search", params={"q": QUERY, "k": 4})
    assert answer.status_code == 200
    results = answer.json()["results"]
    with clip.collection.open(collection) as opened:
        scores, rows = opened.search(_text_features(model, [QUERY]).numpy(), k=4, exact=True)
        paths = opened.paths(rows[0])
        captions = opened.captions(rows[0])
    assert [result["row"] for result in results] == rows[0].tolist()
    np.testing.assert_allclose([r["score"] for r in results], scores[0], atol=SCORE_ATOL)
    assert [result["path"] for result in results] == [os.path.relpath(path, photos) for path in paths]
    assert [result["caption"] for result in results] == captions
    _no_machine_paths(answer.text, photos)


def test_search_by_image_finds_the_image_itself(client: httpx.Client, photos: Path) -> None:
    for row in (1, 4):
        name = sorted(photos.glob("photo*"))[row].name
        answer = client.post("/v1/search", files={"image": (name, _jpeg(photos / name))}, data={"k": "3"})
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert len(results) == 3
        assert results[0]["path"] == name
        assert results[0]["score"] == pytest.approx(1.0, abs=SCORE_ATOL)
        assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]


def test_classify_with_labels(client: httpx.Client, model: Any, photos: Path) -> None:
    labels = ["a diagram", "a dog", "a cat", "a red sunset over the sea"]
    image = photos / "photo0.jpg"
    answer = client.post("/v1/classify", files={"image": ("x.jpg", _jpeg(image))}, data={"labels": labels})
    assert answer.status_code == 200, answer.text
    got = answer.json()["labels"]
    scale = model[0].logit_scale.exp().item()
    expected = (scale * _image_features(model, [image]) @ _text_features(model, labels).T).softmax(-1)[0]
    order = torch.argsort(expected, descending=True).tolist()
    assert [entry["label"] for entry in got] == [labels[i] for i in order]
    np.testing.assert_allclose(
        [e["probability"] for e in got], expected[order].numpy(), atol=PROBABILITY_ATOL
    )
    assert sum(entry["probability"] for entry in got) == pytest.approx(1.0, abs=1e-5)


def test_classify_with_a_built_in_class_set(client: httpx.Client, model: Any, photos: Path) -> None:
    image = photos / "photo3.jpg"
    answer = client.post(
        "/v1/classify", files={"image": ("x.jpg", _jpeg(image))}, data={"classes": "cifar10"}
    )
    assert answer.status_code == 200, answer.text
    got = answer.json()["labels"]
    classifier = zeroshot.build_classifier(
        model[0], zeroshot.CIFAR10_CLASSES, zeroshot.CIFAR_TEMPLATES, progress=False
    )
    pixels = model[1](Image.open(image)).unsqueeze(0)
    expected = zeroshot.predict(model[0], pixels, classifier).softmax(-1)[0]
    by_label = {entry["label"]: entry["probability"] for entry in got}
    assert sorted(by_label) == sorted(zeroshot.CIFAR10_CLASSES)
    for index, name in enumerate(zeroshot.CIFAR10_CLASSES):
        assert by_label[name] == pytest.approx(expected[index].item(), abs=PROBABILITY_ATOL)
    assert [e["probability"] for e in got] == sorted(by_label.values(), reverse=True)


def test_embed_texts_and_images(client: httpx.Client, model: Any, photos: Path) -> None:
    texts = ["a blue door", "a dog", "a much longer caption about a grey city street at night"]
    answer = client.post("/v1/embed", json={"texts": texts})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["dim"] == 32
    np.testing.assert_allclose(body["embeddings"], _text_features(model, texts).numpy(), atol=FEATURE_ATOL)

    images = [photos / "photo1.jpg", photos / "photo2.png"]
    files = [("images", (path.name, _jpeg(path))) for path in images]
    answer = client.post("/v1/embed", files=files)
    assert answer.status_code == 200, answer.text
    got = np.asarray(answer.json()["embeddings"])
    np.testing.assert_allclose(got, _image_features(model, images).numpy(), atol=FEATURE_ATOL)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_thumbnails(client: httpx.Client, collection: Path) -> None:
    with clip.collection.open(collection) as opened:
        rows = len(opened)
        sizes = [Image.open(path).size for path in opened.paths(list(range(rows)))]
    for row in (0, rows - 1):
        answer = client.get(f"/v1/thumb/{row}")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(answer.content))
        assert thumb.format == "JPEG"
        assert max(thumb.size) <= THUMB_SIZE
        width, height = sizes[row]
        assert thumb.size[0] / thumb.size[1] == pytest.approx(width / height, rel=0.02)
        assert client.get(f"/v1/thumb/{row}").content == answer.content  # cached: the same bytes
    for outside in (str(rows), "-1", "99999999999999999999"):
        answer = client.get(f"/v1/thumb/{outside}")
        assert answer.status_code in (404, 422) and "error" in answer.json(), outside


def test_the_page_and_its_files(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    scripts = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in scripts and "/static/style.css" in scripts
    for url in scripts:
        assert url.startswith("/"), f"{url}: the page must work offline (no CDN)"
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        answer = client.get(f"/static/{name}")
        assert answer.status_code == 200 and kind in answer.headers["content-type"]
        assert "http://" not in answer.text and "https://" not in answer.text
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/index.html.bak").json()["error"]
    assert client.get("/openapi.json").json()["paths"].keys() >= {
        "/healthz",
        "/v1/classify",
        "/v1/embed",
        "/v1/search",
        "/v1/thumb/{row}",
    }


# ------------------------------------------------------------------------------------------------
# Hostile requests: every error a JSON body naming no path, and the server keeps serving


def _hostile_cases(photos: Path, workdir: Path) -> List[Dict[str, Any]]:
    good = _jpeg(photos / "photo0.jpg")
    bomb = bomb_png(workdir / "bomb.png").read_bytes()
    over = MAX_UPLOAD_MB * 1024 * 1024 + 1
    too_long = " ".join(["word"] * 100)

    def chunked(data: bytes) -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    boundary = "x" * 16
    big_form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'.encode()
        + b"\0" * over
        + f"\r\n--{boundary}--\r\n".encode()
    )
    image = {"image": ("a.jpg", good)}
    one_label = {"labels": ["a"]}
    multipart = {"content-type": f"multipart/form-data; boundary={boundary}"}
    as_json = {"content-type": "application/json"}

    def case(name: str, status: Any, method: str, url: str, **request: Any) -> Dict[str, Any]:
        return dict(name=name, status=status, method=method, url=url, **request)

    return [
        case(
            "over the limit",
            413,
            "POST",
            "/v1/classify",
            files={"image": ("a", b"\0" * over)},
            data=one_label,
        ),
        case("over, chunked", 413, "POST", "/v1/classify", content=chunked(big_form), headers=multipart),
        case("not an image", 400, "POST", "/v1/classify", files={"image": ("a.jpg", b"hi")}, data=one_label),
        case(
            "truncated", 400, "POST", "/v1/classify", files={"image": ("a.jpg", good[:-900])}, data=one_label
        ),
        case("empty file", 400, "POST", "/v1/classify", files={"image": ("a.jpg", b"")}, data=one_label),
        case("decompression bomb", 413, "POST", "/v1/search", files={"image": ("b.png", bomb)}),
        case("no image", 422, "POST", "/v1/classify", data=one_label),
        case("no labels", 422, "POST", "/v1/classify", files=image),
        case(
            "labels and classes",
            422,
            "POST",
            "/v1/classify",
            files=image,
            data={**one_label, "classes": "cifar10"},
        ),
        case("unknown classes", 422, "POST", "/v1/classify", files=image, data={"classes": "/etc"}),
        case("empty label", 422, "POST", "/v1/classify", files=image, data={"labels": ["a", " "]}),
        case("label too long", 422, "POST", "/v1/classify", files=image, data={"labels": [too_long]}),
        case("k zero", 422, "GET", "/v1/search?q=cat&k=0"),
        case("k huge", 422, "GET", "/v1/search?q=cat&k=100000"),
        case("k not a number", 422, "GET", "/v1/search?q=cat&k=many"),
        case("k zero, image", 422, "POST", "/v1/search", files=image, data={"k": "0"}),
        case("no query", 422, "GET", "/v1/search"),
        case("empty query", 422, "GET", "/v1/search?q="),
        case("query too long", 422, "GET", "/v1/search", params={"q": too_long}),
        case("embed: bad JSON", 422, "POST", "/v1/embed", content=b"{", headers=as_json),
        case("embed: no texts", 422, "POST", "/v1/embed", json={"texts": []}),
        case("embed: not strings", 422, "POST", "/v1/embed", json={"texts": [1]}),
        case(
            "embed: plain text",
            415,
            "POST",
            "/v1/embed",
            content=b"a cat",
            headers={"content-type": "text/plain"},
        ),
        case("embed: no images", 422, "POST", "/v1/embed", data={"x": "1"}, files={"other": ("a", b"1")}),
        case("thumb of a path", (404, 422), "GET", "/v1/thumb/..%2F..%2Fetc%2Fpasswd"),
        case("thumb of a path, plain", (404, 422), "GET", "/v1/thumb/%2Fetc%2Fpasswd"),
        case("unknown route", 404, "GET", "/v2/everything"),
        case("wrong method", 405, "DELETE", "/v1/search"),
        case("another Host (DNS rebinding)", 400, "GET", "/healthz", headers={"host": "evil.example:8000"}),
    ]


def test_hostile_requests_get_json_errors(
    client: httpx.Client, server: ServeProcess, photos: Path, workdir: Path, collection: Path
) -> None:
    failures = []
    for case in _hostile_cases(photos, workdir):
        name, expected = case.pop("name"), case.pop("status")
        answer = client.request(**case)
        allowed = expected if isinstance(expected, tuple) else (expected,)
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code not in allowed or not isinstance(body, dict) or not body.get("error"):
            failures.append(f"{name}: {answer.status_code} {answer.text[:200]!r}")
            continue
        _no_machine_paths(answer.text, photos, collection, workdir)
        assert "Traceback" not in answer.text
    assert not failures, "\n".join(failures)
    assert client.get("/healthz").json()["status"] == "ok"  # still serving
    assert client.get("/v1/search", params={"q": QUERY, "k": 2}).status_code == 200
    assert server.process.poll() is None


def test_concurrent_requests_are_batched(client: httpx.Client, server: ServeProcess) -> None:
    import concurrent.futures

    before = client.get("/healthz").json()["forward_passes"]
    queries = [f"photo number {n}" for n in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda q: client.get("/v1/search", params={"q": q, "k": 2}), queries))
    assert [answer.status_code for answer in answers] == [200] * len(queries)
    passes = client.get("/healthz").json()["forward_passes"] - before
    assert 1 <= passes <= len(queries)


# ------------------------------------------------------------------------------------------------
# The page in a browser


def test_the_page_shows_thumbnails_for_a_shared_link(
    client: httpx.Client, server: ServeProcess, tmp_path: Path
) -> None:
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); the page was not opened")
    expected = client.get("/v1/search", params={"q": QUERY, "k": 3}).json()["results"]
    command = chromium_command(
        browser,
        tmp_path / "profile",
        "--virtual-time-budget=10000",
        "--dump-dom",
        f"{server.url}/?q={QUERY}&k=3",
    )
    shown = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr[-2000:]
    dom = shown.stdout
    thumbs = re.findall(r'<img src="/v1/thumb/(\d+)"', dom)
    assert [int(row) for row in thumbs] == [result["row"] for result in expected], dom[-3000:]
    for result in expected:
        assert f"{result['score']:.3f}" in dom
        assert result["caption"] in dom


# ------------------------------------------------------------------------------------------------
# The command line: no collection, the extra missing, another host, signals


def test_without_a_collection(started: Dict[str, Any]) -> None:
    bare = started["bare"]
    with httpx.Client(base_url=bare.url, timeout=30.0) as http:
        assert http.get("/healthz").json()["collection"] is None
        answer = http.get("/v1/search", params={"q": "a cat"})
        assert answer.status_code == 404 and "clip serve COLLECTION" in answer.json()["error"]
        assert http.get("/v1/thumb/0").status_code == 404
        assert http.post("/v1/embed", json={"texts": ["a cat"]}).status_code == 200
    assert bare.stop(signal.SIGINT) == 0
    assert "stopped (SIGINT)" in bare.output and "Traceback" not in bare.output


def test_sigterm_stops_the_server_cleanly(server: ServeProcess, client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert server.stop(signal.SIGTERM) == 0
    assert "stopped (SIGTERM)" in server.output and "Traceback" not in server.output


def test_import_clip_imports_no_server_package(started: Dict[str, Any]) -> None:
    out, err = started["importer"].communicate(timeout=120)
    assert started["importer"].returncode == 0, err
    assert out.strip() == "", f"import clip imported {out.strip()}"


@pytest.mark.parametrize("missing", ["fastapi", "uvicorn", "python_multipart"])
def test_serve_without_the_extra_names_it(
    missing: str, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError, as when not installed
    assert clip_main(["serve", "--model", str(checkpoint)]) == 1
    err = capsys.readouterr().err
    assert 'pip install "clip-faithful[serve]"' in err and missing in err
    assert "Traceback" not in err


def test_another_host_is_warned_about(checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning, then a refusal to listen.
    code = clip_main(["serve", "--model", str(checkpoint), "--host", "192.0.2.1", "--port", "9"])
    err = capsys.readouterr().err
    assert "warning: listening on 192.0.2.1" in err
    assert "no authentication" in err
    assert code == 1 and "cannot listen on 192.0.2.1:9" in err


def test_a_model_other_than_the_collections_is_refused(
    collection: Path, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    other = workdir / "other.pt"
    other.write_bytes(release_archive("vit", seed=1).read_bytes())  # the same width, other weights
    assert clip_main(["serve", str(collection), "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "would mean nothing" in err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--port", "70000"], "--port must be 0 to 65535"),
        (["--max-upload", "0"], "--max-upload must be more than 0"),
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--batch-window", "-1"], "--batch-window must be 0 to 1000 ms"),
        (["no-such-collection"], "no-such-collection"),
    ],
)
def test_bad_arguments_are_one_line(argv: List[str], words: str, capsys: pytest.CaptureFixture) -> None:
    assert clip_main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.startswith("clip serve: error:") and "Traceback" not in err
