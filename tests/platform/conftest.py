"""Fixtures of the platform tests: real SQLite and PostgreSQL stores, real Redis, a fake clock,
and how long a request takes on this machine (`chat_seconds`).

PostgreSQL tests run in a schema of their own, dropped at the end, so runs are repeatable and
never touch other data; Redis tests use a key prefix of their own, deleted at the end. Both are
skipped, with the reason, only when the server cannot be reached.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from flintlm.platform.db import Database
from flintlm.platform.limit_store import LimitStore, MemoryLimitStore, RedisLimitStore
from flintlm.platform.tables import Base
from tests.conftest import LiveServer
from tests.platform.served import seconds_per_chat

POSTGRES_URLS = [
    os.environ.get("FLINTLM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "postgresql+psycopg://root@127.0.0.1:5432/test",
]
REDIS_URL = os.environ.get("FLINTLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# 2025-01-15 12:00:00 UTC: mid-day, mid-month, so day and month periods are easy to reason about.
T0 = datetime(2025, 1, 15, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """An injectable `time.time` that moves only when told to."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _reachable_postgres_url() -> str | None:
    for url in POSTGRES_URLS:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect():
                return url
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
    return None


@contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A URL whose connections see only a new schema, dropped afterwards (skips without PG)."""
    base_url = _reachable_postgres_url()
    if base_url is None:
        pytest.skip(f"PostgreSQL is unreachable at {POSTGRES_URLS}; set FLINTLM_TEST_POSTGRES_URL")
    schema = f"flintlm_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A URL whose connections see only a fresh schema of this test session."""
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    """An empty store of each kind for one test module's servers (they migrate it)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("store") / "flintlm.db"
        yield sa.URL.create("sqlite+pysqlite", database=str(path)).render_as_string()
        return
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def migrated_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "flintlm.db"
        url = sa.URL.create("sqlite+pysqlite", database=str(path)).render_as_string()
    else:
        url = request.getfixturevalue("postgres_url")
    db = Database(url)
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def db(migrated_db: Database) -> Database:
    """A migrated store of each kind, emptied before each test."""
    with migrated_db.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    return migrated_db


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis is unreachable at {REDIS_URL} ({error}); set FLINTLM_TEST_REDIS_URL")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test only; its keys are deleted afterwards."""
    import redis

    prefix = f"flintlm-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for name in client.scan_iter(f"{prefix}:*"):
        client.delete(name)
    client.close()


@pytest.fixture
def make_redis_store(redis_url: str, redis_prefix: str) -> Callable[[], RedisLimitStore]:
    """Stores sharing this test's prefix, each with its own connection like separate servers."""
    import redis

    def make() -> RedisLimitStore:
        return RedisLimitStore(redis.Redis.from_url(redis_url, decode_responses=True), redis_prefix)

    return make


@pytest.fixture(params=["memory", "redis"])
def limit_store(request: pytest.FixtureRequest) -> LimitStore:
    if request.param == "memory":
        return MemoryLimitStore()
    return request.getfixturevalue("make_redis_store")()


@pytest.fixture(scope="session")
def chat_seconds(server: LiveServer) -> float:
    """How long one short chat (`served.CHAT`) takes here, timed on the session's idle plain
    server (no start of its own) before the served tests start theirs, which size their rate
    windows and drains from it."""
    return seconds_per_chat(server.openai())
