"""API test fixtures: an in-process server around `FakeEngine` (fast, inspectable)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from flintlm.api.deps import Admission, KeyInfo, ServingState, Ticket
from flintlm.config import FlintConfig, ServerConfig
from flintlm.engine.request import SamplingParams, Usage
from flintlm.server import build_app

from .fakes import FakeEngine

FAKE_KEY = "fake-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RecordingAdmission(Admission):
    """Admits everything and keeps every ticket, to check that each settles exactly once."""

    def __init__(self) -> None:
        self.tickets: list[Ticket] = []
        self.settled: list[tuple[str, Usage]] = []

    async def admit(self, key: KeyInfo, request_id: str, prompts: list[list[int]],
                    params: SamplingParams, end_user: str | None = None) -> Ticket:
        ticket = await super().admit(key, request_id, prompts, params, end_user)
        original = ticket.settle

        def settle(usage: Usage) -> None:
            if not ticket.is_settled:
                self.settled.append((request_id, usage))
            original(usage)

        ticket.settle = settle  # type: ignore[method-assign]
        self.tickets.append(ticket)
        return ticket


class FakeServer:
    def __init__(self, engine: FakeEngine, admission: RecordingAdmission, serving: ServingState,
                 base_url: str):
        self.engine = engine
        self.admission = admission
        self.serving = serving
        self.base_url = base_url

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url,
                            headers={"Authorization": f"Bearer {FAKE_KEY}"}, timeout=30)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeServer]:
    engine = FakeEngine()
    port = free_port()
    config = FlintConfig(server=ServerConfig(port=port, api_key=FAKE_KEY))
    admission = RecordingAdmission()
    app = build_app(config, engine, admission)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield FakeServer(engine, admission, app.state.serving, f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(10)
