"""A real `flintlm serve` on the platform: an admin key, a store of its own (SQLite or
PostgreSQL), keys issued through the admin API, and the ledger read straight from the store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import sqlalchemy as sa

from flintlm.platform.db import Database
from tests.conftest import HANG_TIMEOUT_S, LiveServer, launch_server, wait_until_ready

ADMIN_KEY = "test-admin-key-7f3a9c1e5b"
MESSAGES = [{"role": "user", "content": "Say hi."}]
NUM_COMPLETION = 8
# The tests' usual request: a short prompt and exactly NUM_COMPLETION tokens.
CHAT: dict[str, Any] = {"model": "default", "messages": MESSAGES, "max_tokens": NUM_COMPLETION,
                        "temperature": 0, "extra_body": {"ignore_eos": True}}
# Ledger rows reach the store within a flush (0.2 s) of their request's end; this only bounds a
# wait for rows that never come.
LEDGER_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class IssuedKey:
    id: str
    secret: str
    tenant_id: str


@dataclass
class PlatformServer:
    live: LiveServer
    store_url: str
    issued: list[IssuedKey] = field(default_factory=list)  # every secret this server handed out
    _store: sa.Engine | None = None

    @property
    def url(self) -> str:
        return self.live.url

    def admin(self, key: str = ADMIN_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"},
                            timeout=HANG_TIMEOUT_S)

    def create_key(self, name: str = "test", **body: Any) -> IssuedKey:
        with self.admin() as admin:
            response = admin.post("/admin/keys", json={"name": name, **body})
        assert response.status_code == 201, response.text
        created = response.json()
        key = IssuedKey(created["id"], created["secret"], created["tenant_id"])
        self.issued.append(key)
        return key

    def openai(self, key: IssuedKey | str) -> openai.OpenAI:
        secret = key.secret if isinstance(key, IssuedKey) else key
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=secret, max_retries=0,
                             timeout=HANG_TIMEOUT_S)

    def async_openai(self, key: IssuedKey, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key.secret, max_retries=0,
                                  timeout=HANG_TIMEOUT_S, **kwargs)

    def http(self, key: IssuedKey) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key.secret}"},
                            timeout=HANG_TIMEOUT_S)

    def count_tokens(self, key: IssuedKey, **body: Any) -> int:
        with self.http(key) as http:
            response = http.post("/tokenize", json=body)
        assert response.status_code == 200, response.text
        return int(response.json()["count"])

    def ledger(self, key_id: str | None = None) -> list[dict[str, Any]]:
        """Ledger rows as the store holds them now (the server flushes every 0.2 s)."""
        if self._store is None:
            self._store = sa.create_engine(self.store_url)
        query = "SELECT * FROM usage_events" + (" WHERE key_id = :key_id" if key_id else "")
        with self._store.connect() as connection:
            rows = connection.execute(sa.text(query), {"key_id": key_id})
            return [dict(row._mapping) for row in rows]

    def wait_for_ledger(self, key_id: str, num_rows: int, timeout_s: float = LEDGER_TIMEOUT_S
                        ) -> list[dict[str, Any]]:
        """The key's rows once there are `num_rows` of them (fails if more ever show up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.ledger(key_id)
            if len(rows) >= num_rows or time.monotonic() > deadline:
                assert len(rows) == num_rows, (len(rows), num_rows)
                return rows
            time.sleep(0.1)

    def close(self) -> None:
        if self._store is not None:
            self._store.dispose()


def seconds_per_chat(client: openai.OpenAI, num_requests: int = 3) -> float:
    """The median time one CHAT takes, end to end, on this machine as loaded now.

    Tests size what must outlast their requests (rate windows, drains) from it, so that their
    assertions hold on a machine of any speed instead of one as fast as the author's.
    """
    timings = []
    for _ in range(num_requests):
        start = time.monotonic()
        client.chat.completions.create(**CHAT)
        timings.append(time.monotonic() - start)
    return sorted(timings)[num_requests // 2]


def platform_args(store_url: str, *extra: str) -> tuple[str, ...]:
    return ("--database-url", store_url, "--admin-key", ADMIN_KEY,
            "--ledger-flush-interval-s", "0.2", *extra)


@contextmanager
def platform_servers(log_dir: Path, store_url: str, *extra: str, count: int = 1,
                     env: dict[str, str] | None = None) -> Iterator[list[PlatformServer]]:
    """`count` servers on one store, started in parallel, stopped (SIGTERM) at the end; `env`
    as `launch_server` takes it."""
    if count > 1:  # NOTE: servers migrating one fresh SQLite file at once may collide
        db = Database(store_url)
        db.migrate()
        db.close()
    lives = [launch_server(log_dir, *platform_args(store_url, *extra), api_key=None, env=env)
             for _ in range(count)]
    servers = []
    try:
        for live in lives:
            servers.append(PlatformServer(wait_until_ready(live), store_url))
        yield servers
    finally:
        for live in lives:
            live.stop()
        for server in servers:
            server.close()
