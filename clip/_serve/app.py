"""The FastAPI application of ``clip serve``: endpoints, limits and errors.

:func:`create_app` takes a loaded model (and optionally an opened collection) and returns the app;
the command line (clip/_cli/serve.py) loads them and runs it with uvicorn. The model runs on one
worker thread (:mod:`clip._serve.batching`); decoding, tokenising and searching run in request
threads. Every error is a JSON body ``{"error": "..."}`` that names no file of the machine.
"""

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..collection import CollectionError
from .batching import IMAGE, TEXT, Busy, ModelWorker
from .images import NOT_FOUND, ImageRefused, decode_upload, thumbnail_jpeg
from .limits import RequestLimits

__all__ = ["ServeSettings", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
MAX_K = 1000
MODEL_PATHS = ("/v1/classify", "/v1/embed", "/v1/search")
MAX_LABELS = 1000
MAX_TEXTS = 256  # texts per /v1/embed request
MAX_IMAGES = 64  # images per /v1/embed request
MAX_QUERY_CHARS = 1000
TEXT_CACHE_ENTRIES = 4096  # label -> features, so repeated label sets cost no forward pass
BUILT_IN_CLASSES = {
    "imagenet": ("IMAGENET_CLASSES", "IMAGENET_TEMPLATES"),
    "cifar10": ("CIFAR10_CLASSES", "CIFAR_TEMPLATES"),
    "cifar100": ("CIFAR100_CLASSES", "CIFAR_TEMPLATES"),
}
logger = logging.getLogger(__name__)
NO_COLLECTION = "no collection is served: start the server as clip serve COLLECTION"


@dataclass
class ServeSettings:
    """The server's limits and batching. Sizes in bytes and pixels, times in seconds."""

    max_upload: int = 20 * 1024 * 1024
    max_batch: int = 16
    window: float = 0.025
    queue_size: int = 64
    thumb_size: int = 256
    thumb_cache: int = 1024  # thumbnails kept in memory
    hosts: Optional[Tuple[str, ...]] = None  # the Host header names answered (None: any)


class ApiError(Exception):
    """An answer other than 200: `status` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Label(BaseModel):
    label: str
    probability: float


class Classified(BaseModel):
    labels: List[Label]


class Embedded(BaseModel):
    model: str
    dim: int
    embeddings: List[List[float]]


class Result(BaseModel):
    row: int
    path: str
    score: float
    caption: Optional[str]


class Found(BaseModel):
    results: List[Result]


class _LRU:
    """A small thread-safe least-recently-used dict."""

    def __init__(self, entries: int) -> None:
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._entries = entries
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._entries:
                self._data.popitem(last=False)


class _Service:
    """What the endpoints share: the model worker, the collection, the caches."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Any], torch.Tensor],
        model_name: str,
        collection: Any,
        settings: ServeSettings,
    ) -> None:
        self.preprocess = preprocess
        self.model_name = model_name
        self.collection = collection
        self.settings = settings
        self.worker = ModelWorker(
            model, max_batch=settings.max_batch, window=settings.window, queue_size=settings.queue_size
        )
        self.logit_scale = float(model.logit_scale.exp().item())
        self.dim = int(model.text_projection.shape[1])
        self.texts = _LRU(TEXT_CACHE_ENTRIES)
        self.thumbs = _LRU(settings.thumb_cache)
        self.classifiers: Dict[str, Any] = {}  # built-in class set -> future of its classifier
        self.lock = threading.Lock()
        self.collection_lock = threading.Lock()  # the collection's item table is not thread-safe
        self.root = _common_folder(collection) if collection is not None else ""

    # -- inputs -------------------------------------------------------------------------------

    def pixels(self, data: bytes, what: str) -> torch.Tensor:
        image = decode_upload(data, what)
        return self.preprocess(image).unsqueeze(0)

    @staticmethod
    def tokens(texts: Sequence[str], what: str) -> torch.Tensor:
        from ..clip import tokenize

        for number, text in enumerate(texts, start=1):
            if not text.strip():
                raise ApiError(422, f"{what} {number} is empty; give some text")
        try:
            return tokenize(list(texts))
        except RuntimeError:
            for number, text in enumerate(texts, start=1):
                try:
                    tokenize([text])
                except RuntimeError:
                    raise ApiError(
                        422, f"{what} {number} is too long for the model's 77-token context; shorten it"
                    ) from None
            raise

    async def image_features(self, upload: UploadFile, what: str) -> torch.Tensor:
        data = await upload.read()
        pixels = await run_in_threadpool(self.pixels, data, what)
        future = self.worker.submit(IMAGE, pixels)
        return await asyncio.wrap_future(future)

    async def text_features(self, texts: Sequence[str], what: str, cache: bool = False) -> torch.Tensor:
        """Unit-length features of `texts` ``[n, D]``; with `cache`, each text's features are kept."""
        known = {text: self.texts.get(text) for text in texts} if cache else {}
        missing = list(dict.fromkeys(text for text in texts if known.get(text) is None))
        if missing:
            tokens = await run_in_threadpool(self.tokens, missing, what)
            future = self.worker.submit(TEXT, tokens)
            computed = await asyncio.wrap_future(future)
            for text, row in zip(missing, computed):
                known[text] = row
                if cache:
                    self.texts.put(text, row)
        return torch.stack([known[text] for text in texts])

    async def classifier(self, classes: str) -> Tuple[Sequence[str], torch.Tensor]:
        """The names and ``[D, n]`` classifier of a built-in class set, built once on the model thread."""
        from .. import zeroshot

        names_attr, templates_attr = BUILT_IN_CLASSES[classes]
        names, templates = getattr(zeroshot, names_attr), getattr(zeroshot, templates_attr)
        with self.lock:
            future = self.classifiers.get(classes)
            if future is None:
                model = self.worker.model
                future = self.worker.call(
                    lambda: zeroshot.build_classifier(model, names, templates, progress=False).cpu()
                )
                self.classifiers[classes] = future
        try:
            return names, await asyncio.wrap_future(future)
        except BaseException:
            with self.lock:  # not kept: the next request tries again
                if self.classifiers.get(classes) is future:
                    del self.classifiers[classes]
            raise

    # -- collection ---------------------------------------------------------------------------

    def search(self, query: torch.Tensor, k: int) -> List[Dict[str, Any]]:
        if self.collection is None:
            raise ApiError(404, NO_COLLECTION)
        with self.collection_lock:
            try:
                scores, rows = self.collection.search(query.numpy()[None], k=k)
            except (CollectionError, ImportError) as exc:  # a stale index, faiss gone: said in the log
                logger.error("clip serve: the collection cannot be searched: %s", exc)
                raise ApiError(
                    503, "the collection cannot be searched now; the server's log says why"
                ) from None
            rows = [int(row) for row in rows[0]]
            paths = self.collection.paths(rows)
            captions = self.collection.captions(rows)
        return [
            {"row": row, "path": self.shown_path(path), "score": float(score), "caption": caption}
            for row, path, score, caption in zip(rows, paths, scores[0].tolist(), captions)
        ]

    def shown_path(self, path: str) -> str:
        """An item's path as the client sees it: relative to the folder holding all items."""
        if self.root and path.startswith(self.root):
            return path[len(self.root) :].lstrip("/" + os.sep) or os.path.basename(path)
        return os.path.basename(path)

    def thumbnail(self, row: int) -> bytes:
        if self.collection is None:
            raise ApiError(404, NO_COLLECTION)
        if not 0 <= row < len(self.collection):
            raise ApiError(404, f"no row {row}: the collection has rows 0 to {len(self.collection) - 1}")
        cached = self.thumbs.get(row)
        if cached is not None:
            return cached
        with self.collection_lock:
            try:  # a file, or a webdataset sample's image member read from its tar in place
                image_bytes = self.collection.read_item(row)
            except OSError:
                raise ImageRefused(NOT_FOUND, "the item's file is gone or can no longer be read") from None
        data = thumbnail_jpeg(image_bytes, self.settings.thumb_size)
        self.thumbs.put(row, data)
        return data

    def health(self) -> Dict[str, Any]:
        collection = None
        if self.collection is not None:
            index = self.collection.index_info
            collection = {
                "items": len(self.collection),
                "captions": bool(self.collection.has_captions),
                "index": index.get("kind") if index else None,
            }
        return {
            "status": "ok",
            "model": self.model_name,
            "dim": self.dim,
            "collection": collection,
            "forward_passes": self.worker.batches,
        }


def _common_folder(collection: Any) -> str:
    """The deepest folder holding every item of `collection` ("" for none)."""
    if len(collection) == 0:
        return ""
    paths = collection.paths(np.arange(len(collection)))
    try:
        return os.path.commonpath([os.path.dirname(path) for path in paths])
    except ValueError:  # relative and absolute paths mixed (format 1 collections)
        return ""


class _CountServing:
    """ASGI middleware holding `worker.serving()` for every request to an endpoint that uses the model."""

    def __init__(self, app: Any, worker: ModelWorker) -> None:
        self.app = app
        self.worker = worker

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in MODEL_PATHS:
            with self.worker.serving():
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _field_problems(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
        problems.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "the request is not valid"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(ImageRefused)
    async def image_refused(request: Request, exc: ImageRefused) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _field_problems(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "the request cannot be served"
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal error; the server's log says more")


def create_app(
    model: torch.nn.Module,
    preprocess: Callable[[Any], torch.Tensor],
    *,
    model_name: str,
    collection: Any = None,
    settings: Optional[ServeSettings] = None,
) -> FastAPI:
    """The ``clip serve`` application for a loaded `model` and an opened `collection` (or None).

    `model_name` is what /healthz reports (a released name, or a checkpoint's file name).
    """
    settings = settings or ServeSettings()
    service = _Service(model, preprocess, model_name, collection, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.worker.start()
        try:
            yield
        finally:
            service.worker.stop()

    app = FastAPI(
        title="clip serve",
        description="Zero-shot classification, embeddings and collection search with CLIP.",
        lifespan=lifespan,
    )
    app.state.service = service
    _install_error_handlers(app)
    _add_routes(app, service)
    app.add_middleware(_CountServing, worker=service.worker)
    app.add_middleware(RequestLimits, limit=settings.max_upload, hosts=settings.hosts)
    return app


def _add_routes(app: FastAPI, service: _Service) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise ApiError(404, "no such file")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    @app.get("/healthz", summary="Whether the server is up; the model and the collection")
    async def healthz() -> Dict[str, Any]:
        return service.health()

    @app.post("/v1/classify", response_model=Classified, summary="Zero-shot labels of an image")
    async def classify(
        image: UploadFile = File(..., description="the image"),
        labels: Optional[List[str]] = Form(None, description="candidate labels (repeat the field)"),
        classes: Optional[str] = Form(None, description="or a built-in set: imagenet, cifar10, cifar100"),
    ) -> Dict[str, Any]:
        if (labels is None) == (classes is None):
            raise ApiError(422, "pass either labels (one field per label) or classes, not both")
        if classes is not None and classes not in BUILT_IN_CLASSES:
            raise ApiError(422, f"classes must be one of {', '.join(BUILT_IN_CLASSES)}")
        if labels is not None and len(labels) > MAX_LABELS:
            raise ApiError(422, f"at most {MAX_LABELS} labels, got {len(labels)}")
        features = (await service.image_features(image, "the image"))[0]
        if classes is not None:
            names, classifier = await service.classifier(classes)
            logits = 100.0 * features @ classifier  # clip.zeroshot.predict's scale
        else:
            names = labels or []
            text = await service.text_features(names, "label", cache=True)
            logits = service.logit_scale * text @ features  # the model's own logits_per_image
        probabilities = logits.softmax(dim=-1)
        order = torch.argsort(probabilities, descending=True).tolist()
        return {"labels": [{"label": names[i], "probability": float(probabilities[i])} for i in order]}

    @app.post(
        "/v1/embed",
        response_model=Embedded,
        summary="L2-normalised features of texts (JSON) or images (multipart)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["texts"],
                            "properties": {"texts": {"type": "array", "items": {"type": "string"}}},
                        }
                    },
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["images"],
                            "properties": {
                                "images": {"type": "array", "items": {"type": "string", "format": "binary"}}
                            },
                        }
                    },
                },
            }
        },
    )
    async def embed(request: Request) -> Dict[str, Any]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            features = await service.text_features(await _texts_of(request), "text")
        elif kind == "multipart/form-data":
            async with request.form(max_files=MAX_IMAGES) as form:
                uploads = [value for value in form.getlist("images") if not isinstance(value, str)]
                if not uploads:
                    raise ApiError(422, "images: give one or more image files (field images)")
                rows = await asyncio.gather(
                    *(service.image_features(upload, f"image {n}") for n, upload in enumerate(uploads, 1))
                )
            features = torch.cat(rows)
        else:
            raise ApiError(415, 'send JSON {"texts": [...]} or multipart/form-data with images')
        return {"model": service.model_name, "dim": service.dim, "embeddings": features.tolist()}

    @app.get("/v1/search", response_model=Found, summary="The collection's items closest to a text")
    async def search_text(
        q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="what to look for"),
        k: int = Query(10, ge=1, le=MAX_K, description="how many results"),
    ) -> Dict[str, Any]:
        if service.collection is None:
            raise ApiError(404, NO_COLLECTION)
        query = (await service.text_features([q], "the query", cache=True))[0]
        return {"results": await run_in_threadpool(service.search, query, k)}

    @app.post("/v1/search", response_model=Found, summary="The collection's items closest to an image")
    async def search_image(
        image: UploadFile = File(..., description="the query image"),
        k: int = Form(10, ge=1, le=MAX_K, description="how many results"),
    ) -> Dict[str, Any]:
        if service.collection is None:
            raise ApiError(404, NO_COLLECTION)
        query = (await service.image_features(image, "the image"))[0]
        return {"results": await run_in_threadpool(service.search, query, k)}

    @app.get(
        "/v1/thumb/{row}",
        summary="A small JPEG of a collection item",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def thumb(row: int = PathParam(..., description="the row, as /v1/search gives it")) -> Response:
        data = await run_in_threadpool(service.thumbnail, row)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def _texts_of(request: Request) -> List[str]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(422, 'the body is not valid JSON; send {"texts": ["...", ...]}') from None
    texts = body.get("texts") if isinstance(body, dict) else None
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise ApiError(422, 'texts: send {"texts": ["...", ...]}, a non-empty list of strings')
    if len(texts) > MAX_TEXTS:
        raise ApiError(422, f"texts: at most {MAX_TEXTS} per request, got {len(texts)}")
    return texts
