"""Shared pytest fixtures. Keep each section small and self-contained; add new ones below."""

from typing import Iterator

import pytest
import torch
from _http_server import FileServer

# ----------------------------------------------------------------------------------------------
# HTTP file server (tests/support/_http_server.py): a threaded server on 127.0.0.1 serving in-memory
# routes with configurable misbehaviour, and a request log to assert on.


@pytest.fixture
def http_server() -> Iterator[FileServer]:
    """A started `FileServer`, stopped after the test."""
    with FileServer() as server:
        yield server


# ----------------------------------------------------------------------------------------------
# Weight sources (clip/_weights/sources.py): no test reaches the real Hugging Face hub or reads the
# developer's own hub cache, except the real-weight tests (marker real_weights), which may use
# them like clip.load does for users. Tests of those sources set the variables again themselves.


@pytest.fixture(autouse=True)
def _isolated_weight_sources(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("real_weights") is not None:
        return
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf-cache")))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.delenv("CLIP_WEIGHTS_SOURCE", raising=False)


# ----------------------------------------------------------------------------------------------
# One intra-op thread for modules of many small torch ops (results do not depend on it): on shared,
# busy CPUs each small parallel op can stall for tens of milliseconds waiting for its second thread,
# which made such tests many times slower. A module opts in with
# ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
