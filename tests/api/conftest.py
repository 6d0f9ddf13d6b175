"""API test fixtures: an in-process server around `FakeEngine` (fast, inspectable), on a real
platform (SQLite in a temporary folder) with the shared `--api-key` FAKE_KEY; one real
platform server for the modules that need no server flags of their own (`platform_server`);
and one real server of short answers and JSON logs (`short_json_server`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from flintlm.api.admission import Admission, Ticket
from flintlm.api.deps import ServingState
from flintlm.config import FlintConfig, PlatformConfig, ServerConfig
from flintlm.engine.request import Usage
from flintlm.platform.ledger import UsageStatus
from flintlm.platform.service import Platform, Timings
from flintlm.server import build_app
from tests.conftest import HANG_TIMEOUT_S, READY_TIMEOUT_S, LiveServer, free_port, start_server
from tests.platform.served import PlatformServer, platform_servers

from .fakes import FakeEngine

FAKE_KEY = "fake-key"
# A day: no rate window refills while the requests of a test run, however slow the machine.
WINDOW_S = 86_400


class RecordingAdmission(Admission):
    """Keeps every settle call, to check that each request settles exactly once."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tickets: list[Ticket] = []
        self.settled: list[tuple[str, Usage, UsageStatus]] = []

    async def settle(self, ticket: Ticket, usage: Usage, *, status: UsageStatus,
                     error_code: str | None = None, timings: Timings | None = None) -> None:
        if not ticket.is_settled:
            self.tickets.append(ticket)
            self.settled.append((ticket.request_id, usage, status))
        await super().settle(ticket, usage, status=status, error_code=error_code,
                             timings=timings)


class FakeServer:
    def __init__(self, engine: FakeEngine, admission: RecordingAdmission, serving: ServingState,
                 base_url: str):
        self.engine = engine
        self.admission = admission
        self.serving = serving
        self.base_url = base_url

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url,
                            headers={"Authorization": f"Bearer {FAKE_KEY}"},
                            timeout=HANG_TIMEOUT_S)


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    engine = FakeEngine()
    port = free_port()
    platform_config = PlatformConfig(data_dir=str(tmp_path_factory.mktemp("platform")))
    config = FlintConfig(server=ServerConfig(port=port, api_key=FAKE_KEY),
                         platform=platform_config)
    admission = RecordingAdmission(Platform.from_config(platform_config),
                                   model_name=engine.model_name,
                                   max_model_len=engine.max_model_len, static_key=FAKE_KEY)
    app = build_app(config, engine, admission)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the in-process server did not start"
    yield FakeServer(engine, admission, app.state.serving, f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="package")
def platform_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformServer]:
    """A real `flintlm serve` on the platform (SQLite store, admin key, a day's rate window),
    shared by the modules of tests/api that need no flags of their own: a server start costs
    more than most of their tests. Each test issues its own keys and reads only their rows."""
    folder = tmp_path_factory.mktemp("platform-server")
    store_url = f"sqlite+pysqlite:///{folder / 'flintlm.db'}"
    with platform_servers(folder, store_url, "--rate-window-s", str(WINDOW_S)) as [server]:
        yield server


@pytest.fixture(scope="package")
def short_json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `flintlm serve` (the shared `--api-key`) whose requests decode 2 tokens unless they
    ask, 8 at most (asking more is a 400), and whose log is JSON. test_schemathesis fuzzes it:
    a generated request that leaves max_tokens out or asks for much would otherwise decode to
    the context's end. test_safe_logs reads its log: every line must be a JSON object."""
    live = start_server(tmp_path_factory.mktemp("short-json"), "--default-max-tokens", "2",
                        "--max-request-completion-tokens", "8", "--log-format", "json")
    yield live
    live.stop()
