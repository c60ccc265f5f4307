"""`clip serve`'s model worker (clip/_serve/batching.py) in-process: what forms one forward pass, the
batch limit, waiting only for clients seen at once, the bounded queue (503 with Retry-After through the
app) and stopping. A stand-in model records the batches it is given and can be held mid-pass."""

import threading
import time
from typing import Any, Iterator, List, Tuple

import pytest
import torch
from _checkpoints import TINY_DIMS, tiny_model
from starlette.testclient import TestClient

from clip._serve.app import ServeSettings, create_app
from clip._serve.batching import IMAGE, TEXT, Busy, ModelWorker
from clip.clip import _transform

WAIT = 30.0  # seconds any test waits for the worker before failing (never reached when it works)
WIDE_WINDOW = 30.0  # a window no test waits out: the worker only waits while a request is arriving


class RecordingModel(torch.nn.Module):
    """encode_image / encode_text return a few values of each row; `passes` records (kind, rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.passes: List[Tuple[str, int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def _encode(self, kind: str, rows: torch.Tensor) -> torch.Tensor:
        self.passes.append((kind, rows.shape[0]))
        self.entered.set()
        assert self.release.wait(WAIT)
        return rows.reshape(rows.shape[0], -1)[:, :4].float() + 1.0

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._encode(IMAGE, pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._encode(TEXT, tokens)


def _rows(seed: int, n: int = 1) -> torch.Tensor:
    return torch.arange(seed * 10, seed * 10 + 4 * n, dtype=torch.float32).reshape(n, 4)


def _expected(rows: torch.Tensor) -> torch.Tensor:
    features = rows + 1.0
    return features / features.norm(dim=-1, keepdim=True)


@pytest.fixture
def model() -> RecordingModel:
    return RecordingModel()


@pytest.fixture
def worker(model: RecordingModel) -> Iterator[ModelWorker]:
    made = ModelWorker(model, max_batch=8, window=WIDE_WINDOW, queue_size=16)
    yield made
    model.release.set()
    made.stop()


def test_queued_requests_share_one_forward_pass_per_kind(worker: ModelWorker, model: RecordingModel) -> None:
    images = [worker.submit(IMAGE, _rows(seed)) for seed in range(5)]
    texts = [worker.submit(TEXT, _rows(seed, 2)) for seed in (7, 8)]
    worker.start()
    for seed, future in enumerate(images):
        torch.testing.assert_close(future.result(WAIT), _expected(_rows(seed)))
    for seed, future in zip((7, 8), texts):
        torch.testing.assert_close(future.result(WAIT), _expected(_rows(seed, 2)))
    assert model.passes == [(IMAGE, 5), (TEXT, 4)]
    assert worker.batches == 2 and worker.rows == 9


def test_a_batch_holds_at_most_max_batch_rows(model: RecordingModel) -> None:
    worker = ModelWorker(model, max_batch=3, window=0.0, queue_size=16)
    futures = [worker.submit(IMAGE, _rows(seed)) for seed in range(4)]
    futures.append(worker.submit(IMAGE, _rows(9, 5)))  # one request larger than a batch: split
    worker.start()
    try:
        for future in futures:
            future.result(WAIT)
    finally:
        worker.stop()
    sizes = [rows for _, rows in model.passes]
    assert max(sizes) <= 3 and sum(sizes) == 9
    torch.testing.assert_close(futures[-1].result(), _expected(_rows(9, 5)))


def test_the_worker_waits_only_for_clients_it_has_seen_at_once(
    worker: ModelWorker, model: RecordingModel
) -> None:
    worker.start()
    with worker.serving():
        alone = worker.submit(IMAGE, _rows(0))
        alone.result(WAIT)  # one client: served at once, not after the 30 s window
    assert model.passes == [(IMAGE, 1)]

    # Two clients at once: the first one's request waits for the second's, which comes a bit later.
    both = threading.Barrier(2)
    futures: List[Any] = []

    def client(seed: int, delay: float) -> None:
        with worker.serving():
            both.wait(WAIT)
            time.sleep(delay)
            futures.append(worker.submit(IMAGE, _rows(seed)))
            futures[-1].result(WAIT)

    threads = [threading.Thread(target=client, args=(seed, 0.2 * seed)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert model.passes[1:] == [(IMAGE, 2)]


def test_a_full_queue_refuses_work_at_once(model: RecordingModel) -> None:
    worker = ModelWorker(model, max_batch=1, window=0.0, queue_size=2)
    model.release.clear()
    worker.start()
    running = worker.submit(IMAGE, _rows(0))
    assert model.entered.wait(WAIT)  # the worker is busy with the first request
    queued = [worker.submit(IMAGE, _rows(seed)) for seed in (1, 2)]
    with pytest.raises(Busy) as refused:
        worker.submit(IMAGE, _rows(3))
    assert refused.value.retry_after >= 1
    model.release.set()
    for future in (running, *queued):
        future.result(WAIT)
    worker.stop()


def test_stop_fails_what_is_queued_and_ends_the_thread(model: RecordingModel) -> None:
    worker = ModelWorker(model, max_batch=1, window=0.0, queue_size=1)
    model.release.clear()
    worker.start()
    running = worker.submit(IMAGE, _rows(0))
    assert model.entered.wait(WAIT)
    queued = worker.submit(IMAGE, _rows(1))
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    with pytest.raises(RuntimeError, match="shutting down"):
        queued.result(WAIT)
    model.release.set()
    stopper.join(WAIT)
    running.result(WAIT)  # the batch in progress is finished
    assert not stopper.is_alive() and not worker._thread.is_alive()


def test_the_app_answers_503_with_retry_after_when_the_queue_is_full() -> None:
    model = tiny_model("vit").float().eval()
    settings = ServeSettings(queue_size=2, window=0.0)
    app = create_app(
        model, _transform(TINY_DIMS["vit"]["image_resolution"]), model_name="tiny", settings=settings
    )
    gate = threading.Event()
    with TestClient(app) as client:
        worker = app.state.service.worker
        entered = threading.Event()
        blocking: List[Any] = [worker.call(lambda: (entered.set(), gate.wait(WAIT)))]
        assert entered.wait(WAIT)
        blocking += [worker.call(lambda: None) for _ in range(2)]  # the queue is full
        answer = client.post("/v1/embed", json={"texts": ["a cat"]})
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert "busy" in answer.json()["error"]
        gate.set()
        for future in blocking:
            future.result(WAIT)
        answer = client.post("/v1/embed", json={"texts": ["a cat"]})
        assert (
            answer.status_code == 200 and len(answer.json()["embeddings"][0]) == TINY_DIMS["vit"]["embed_dim"]
        )
