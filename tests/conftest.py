"""Shared pytest fixtures. Keep each section small and self-contained; add new ones below."""

from typing import Iterator

import pytest
from _http_server import FileServer

# ----------------------------------------------------------------------------------------------
# HTTP file server (tests/_http_server.py): a threaded server on 127.0.0.1 serving in-memory
# routes with configurable misbehaviour, and a request log to assert on.


@pytest.fixture
def http_server() -> Iterator[FileServer]:
    """A started `FileServer`, stopped after the test."""
    with FileServer() as server:
        yield server
