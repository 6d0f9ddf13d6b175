"""API test fixtures: an in-process server around `FakeEngine` (fast, inspectable)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from flintlm.config import FlintConfig, ServerConfig
from flintlm.server import build_app
from .fakes import FakeEngine

FAKE_KEY = "fake-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeServer:
    def __init__(self, engine: FakeEngine, base_url: str):
        self.engine = engine
        self.base_url = base_url

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url,
                            headers={"Authorization": f"Bearer {FAKE_KEY}"}, timeout=30)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeServer]:
    engine = FakeEngine()
    port = free_port()
    config = FlintConfig(server=ServerConfig(port=port, api_key=FAKE_KEY))
    app = build_app(config, engine)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield FakeServer(engine, f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(10)
