"""One model worker thread that gathers concurrent requests into batched forward passes.

Requests put work on a bounded queue and wait on a future. The worker takes the first waiting item,
then whatever else is queued, up to `max_batch` rows. It waits up to `window` seconds for more while
fewer requests are queued than were being served at once in the last second (see
:meth:`ModelWorker.serving`): clients that just got their answers come back together, and join one
batch instead of splitting into two groups that alternate; a lone client never waits. Images and
texts are encoded in one ``encode_image`` / ``encode_text`` call per kind, and every row comes back
L2-normalised (float32, on the CPU). A full queue refuses new work at once with :class:`Busy`, which
the server answers with 503 and Retry-After.
"""

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

__all__ = ["Busy", "ModelWorker", "IMAGE", "TEXT"]

IMAGE = "image"
TEXT = "text"
STOP_TIMEOUT = 10.0  # seconds stop() waits for the batch in progress
RETRY_AFTER = 1  # seconds a refused client is asked to wait
PEAK_MEMORY = 1.0  # seconds over which the most requests served at once is remembered
_STOP = object()

logger = logging.getLogger(__name__)


class Busy(Exception):
    """The work queue is full: try again after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Work:
    kind: str  # IMAGE, TEXT, or "call"
    rows: Optional[torch.Tensor]  # [n, 3, R, R] pixels or [n, 77] tokens; None for a call
    call: Optional[Callable[[], Any]] = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class ModelWorker:
    """The single thread that runs `model`; see the module docstring.

    max_batch: the most rows (images or texts) in one forward pass. window: the most seconds the
    worker waits for more requests. queue_size: work items that may wait; more are refused (Busy).
    """

    def __init__(self, model: torch.nn.Module, *, max_batch: int, window: float, queue_size: int) -> None:
        self.model = model
        self.max_batch = max_batch
        self.window = window
        self.device = next(model.parameters()).device
        self.batches = 0  # forward passes run (for the benchmark and the tests)
        self.rows = 0  # rows encoded
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._serving = 0
        self._history: deque[Tuple[float, int]] = deque()  # (time, requests being served then)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="clip-serve-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in progress, fail what is still queued, and end the thread."""
        if not self._thread.is_alive():
            return
        while True:  # make room for the stop mark: queued work is failed, not run
            try:
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._fail(self._queue.get_nowait(), RuntimeError("the server is shutting down"))
        self._thread.join(STOP_TIMEOUT)

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Hold for the life of a request that uses the model: how many are served at once tells the
        worker how many to wait for."""
        with self._lock:
            self._serving += 1
            self._history.append((time.monotonic(), self._serving))
        try:
            yield
        finally:
            with self._lock:
                self._serving -= 1

    def recent_peak(self) -> int:
        """The most requests served at once in the last PEAK_MEMORY seconds (and now)."""
        with self._lock:
            horizon = time.monotonic() - PEAK_MEMORY
            while self._history and self._history[0][0] < horizon:
                self._history.popleft()
            return max([self._serving, *(count for _, count in self._history)])

    def submit(self, kind: str, rows: torch.Tensor) -> "concurrent.futures.Future[torch.Tensor]":
        """Queue `rows` for encoding; the future gives their unit-length features ``[n, D]``."""
        return self._put(_Work(kind, rows))

    def call(self, function: Callable[[], Any]) -> "concurrent.futures.Future[Any]":
        """Run `function` on the model thread (work that uses the model but is no batch)."""
        return self._put(_Work("call", None, function))

    def _put(self, work: _Work) -> concurrent.futures.Future:
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            raise Busy(RETRY_AFTER) from None
        return work.future

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stopping = self._gather(batch)
            self._run(batch)
            if stopping:
                return

    def _gather(self, batch: List[_Work]) -> bool:
        """Add queued work to `batch` up to max_batch rows, waiting up to `window` while fewer are
        queued than were recently served at once; True when the stop mark was met."""
        deadline = time.monotonic() + self.window
        rows = _count(batch[0])
        expected = min(self.max_batch, self.recent_peak())
        while rows < self.max_batch:
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if len(batch) >= expected or left <= 0:
                    return False
                try:
                    work = self._queue.get(timeout=left)
                except queue.Empty:
                    return False
            if work is _STOP:
                return True
            batch.append(work)
            rows += _count(work)
        return False

    def _run(self, batch: List[_Work]) -> None:
        by_kind: Dict[str, List[_Work]] = {}
        for work in batch:
            by_kind.setdefault(work.kind, []).append(work)
        for kind, works in by_kind.items():
            if kind == "call":
                for work in works:
                    self._call(work)
            else:
                self._encode(kind, [work for work in works if work.future.set_running_or_notify_cancel()])

    def _call(self, work: _Work) -> None:
        if not work.future.set_running_or_notify_cancel():
            return
        try:
            assert work.call is not None
            work.future.set_result(work.call())
        except BaseException as exc:  # handed to the request, which answers 500 and goes on
            work.future.set_exception(exc)

    def _encode(self, kind: str, works: List[_Work]) -> None:
        if not works:
            return
        try:
            rows = torch.cat([work.rows for work in works if work.rows is not None]).to(self.device)
            encode = self.model.encode_image if kind == IMAGE else self.model.encode_text
            features = []
            with torch.no_grad():
                for start in range(0, rows.shape[0], self.max_batch):
                    chunk = encode(rows[start : start + self.max_batch]).float()
                    features.append(chunk / chunk.norm(dim=-1, keepdim=True))
                    self.batches += 1
            out = torch.cat(features).cpu()
            self.rows += out.shape[0]
        except BaseException as exc:
            logger.exception("clip serve: encoding a batch of %d %ss failed", len(works), kind)
            for work in works:
                work.future.set_exception(exc)
            return
        start = 0
        for work in works:
            n = _count(work)
            work.future.set_result(out[start : start + n])
            start += n

    @staticmethod
    def _fail(work: Any, exc: BaseException) -> None:
        if isinstance(work, _Work) and work.future.set_running_or_notify_cancel():
            work.future.set_exception(exc)


def _count(work: _Work) -> int:
    return 1 if work.rows is None else int(work.rows.shape[0])
