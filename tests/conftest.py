"""Shared fixtures: a real `flintlm serve` subprocess on a free loopback port, on the embedded
default model in float32 on CPU so greedy decoding is deterministic.

`server` is session-scoped: one process shared by every module that asks for it, so its tests
must not depend on a fresh server (compare counters before and after, find their own requests by
id). `start_server()` gives tests that must own their process (signals, restarts, other flags) one
of their own.

`make test` runs the suite in two pytest-xdist workers, a module to a worker (`--dist
loadscope`): "session" fixtures then exist once per worker, and two test servers may compute at
once on a 2-core machine.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    import openai

# With two workers, two engines' OpenMP teams share 2 cores: a thread that spins at a barrier
# while its partner waits for a core only delays that partner, so threads sleep there instead.
# Set before anything imports torch (its OpenMP reads it once); test servers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SERVER_KEY = "test-key"
# Waits that only guard against a hang: they end as soon as the awaited thing happens, so a long
# limit costs nothing on a fast machine and lets a slow one (10x and more) finish. pytest-timeout
# (600 s per test) still ends a real hang.
HANG_TIMEOUT_S = 600.0
# Start-up takes ~5 s on the machines we know; a test's fixtures and body share the 600 s above.
READY_TIMEOUT_S = 300.0
# Absolute time budgets hold on the reference machine only; FLINTLM_TEST_TIME_BUDGETS=1 checks
# them there (a suite that fails on a slower machine for being slower tells nothing).
needs_reference_speed = pytest.mark.skipif(
    os.environ.get("FLINTLM_TEST_TIME_BUDGETS") != "1",
    reason="an absolute time budget of the reference machine; set FLINTLM_TEST_TIME_BUDGETS=1")
# Small KV budget and context: quick to allocate, and a few requests visibly move the block count.
# The reference numerics (exact products, the same paths at every step size on every machine):
# tests of what the model writes must not change with the machine's measured dispatch table.
SERVER_ARGS = ("--model", "default", "--dtype", "float32", "--device", "cpu",
               "--kv-cache-memory", "96MiB", "--max-model-len", "2048",
               "--quantized-max-tokens", "64", "--quantized-activations", "exact")

# FLINTLM_* variables a test server keeps from the suite's environment: they describe the machine
# (a forced CPU tier, and which torch caps flintlm itself set for it), not a test's settings.
MACHINE_VARIABLES = frozenset({"FLINTLM_CPU_ISA", "FLINTLM_TORCH_CAPS_APPLIED"})


# Test servers' ports: 1,000 for each pytest-xdist worker, below Linux's ephemeral range (32768
# up), so between the check in `free_port` and the server's own bind neither the other worker nor
# an outgoing connection can take the port.
PORTS_PER_WORKER = 1000
FIRST_TEST_PORT = 20_000
FIRST_EPHEMERAL_PORT = 32_768
WORKER_RANGES = (FIRST_EPHEMERAL_PORT - FIRST_TEST_PORT) // PORTS_PER_WORKER
_handed_out: set[int] = set()


def _worker_index() -> int:
    number = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")  # unset: no xdist
    return int(number) if number.isdigit() else 0


def free_port() -> int:
    """A loopback port of this worker's range that nothing listens on and this process has not
    handed out before (servers launched together have not bound theirs yet)."""
    first = FIRST_TEST_PORT + (_worker_index() % WORKER_RANGES) * PORTS_PER_WORKER
    candidates = list(range(first, first + PORTS_PER_WORKER))
    random.shuffle(candidates)
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {first}-{first + PORTS_PER_WORKER - 1}")


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    port: int
    api_key: str | None
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=HANG_TIMEOUT_S,
                            **kwargs)  # type: ignore[arg-type]

    def openai(self, api_key: str | None = None) -> openai.OpenAI:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key or self.api_key or "none",
                             max_retries=0, timeout=HANG_TIMEOUT_S)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = HANG_TIMEOUT_S) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def launch_server(log_dir: Path, *extra_args: str, api_key: str | None = SERVER_KEY,
                  env: dict[str, str] | None = None) -> LiveServer:
    """Start `python -m flintlm serve` without waiting for it (see `wait_until_ready`).

    Its platform store is SQLite in `log_dir` unless `extra_args` name one. The caller's FLINTLM_*
    variables are dropped, except the forced CPU tier (a suite run with FLINTLM_CPU_ISA=avx2
    stands in for an AVX2 machine, servers included); `env` adds variables of the test's own
    (FLINTLM_FAULT_INJECT, FLINTLM_TEST_HOLD_LOADING_UNTIL).
    """
    port = free_port()
    args = [sys.executable, "-m", "flintlm", "serve", *SERVER_ARGS, "--port", str(port),
            *extra_args]
    if api_key:
        args += ["--api-key", api_key]
    if "--data-dir" not in extra_args and "--database-url" not in extra_args:
        args += ["--data-dir", str(log_dir / f"data-{port}")]
    log_path = log_dir / f"server-{port}.log"
    process_env = {k: v for k, v in os.environ.items()
                   if not k.startswith("FLINTLM_") or k in MACHINE_VARIABLES}
    process_env.update(env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=process_env)
    return LiveServer(process, port, api_key, log_path)


def database_path(server: LiveServer) -> Path:
    """The SQLite store of a server started without --data-dir or --database-url."""
    return server.log_path.parent / f"data-{server.port}" / "flintlm.db"


def wait_until_ready(server: LiveServer) -> LiveServer:
    """Return once /health answers 200; fail with the server's log if it never does."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S}s:\n{server.log()}")


def start_server(log_dir: Path, *extra_args: str, api_key: str | None = SERVER_KEY) -> LiveServer:
    """Start `python -m flintlm serve` and return once /health answers 200."""
    return wait_until_ready(launch_server(log_dir, *extra_args, api_key=api_key))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("server"))
    yield live
    live.stop()


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """A string parameter's id without "::" (grammars hold "::="): pytest-xdist's `loadscope`
    finds a test's module by the last "::" of its id, and would send such a test away from its
    module's worker, which then starts that module's server a second time."""
    if isinstance(val, str) and "::" in val:
        return val.replace("::", ":").encode("unicode_escape").decode("ascii")
    return None
