"""The platform's database handle: one SQLAlchemy engine and session factory per store.

Owns the URL default (SQLite at `<data_dir>/flintlm.db`), SQLite's WAL and busy-timeout settings,
dialect-specific statements, and running the Alembic migrations shipped in
`flintlm/platform/migrations` (`Database.migrate()`, called once at start-up). Knows no business
rule. Supported stores: SQLite and PostgreSQL (`postgresql+psycopg://...`).

Public API:
    database_url(config) -> str
    Database(url) / Database.from_config(config); .engine, .session(), .migrate(),
    .insert_ignoring_duplicates(table, unique_columns), .close()
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import Insert

from flintlm.config import PlatformConfig

SQLITE_BUSY_TIMEOUT_MS = 30_000
SUPPORTED_DIALECTS = ("sqlite", "postgresql")
_PACKAGE_DIR = Path(__file__).resolve().parent
# Any fixed 64-bit number: serialises concurrent start-ups migrating one PostgreSQL database.
_MIGRATION_LOCK_ID = 0x666C696E746C6D


def database_url(config: PlatformConfig) -> str:
    """The configured URL, or SQLite in `data_dir` (the user's data dir when that is unset)."""
    if config.database_url:
        return config.database_url
    if config.data_dir:
        data_dir = Path(config.data_dir)
    else:
        import platformdirs

        data_dir = Path(platformdirs.user_data_dir("flintlm"))
    url = sa.URL.create("sqlite+pysqlite", database=str(data_dir / "flintlm.db"))
    return url.render_as_string()


class Database:
    """An engine plus session factory. Thread-safe; share one per process and `close()` it."""

    def __init__(self, url: str) -> None:
        parsed = sa.make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in SUPPORTED_DIALECTS:
            raise ValueError(
                f"database_url {parsed.render_as_string()!r} uses {self.dialect!r}; "
                f"flintlm supports {', '.join(SUPPORTED_DIALECTS)} (e.g. postgresql+psycopg://...)"
            )
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(parsed)
            sa.event.listen(self.engine, "connect", _configure_sqlite)
        else:
            self.engine = sa.create_engine(parsed, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_config(cls, config: PlatformConfig) -> Database:
        return cls(database_url(config))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest migration (`alembic upgrade head`); idempotent.

        NOTE: on PostgreSQL concurrent start-ups queue on an advisory lock; on SQLite (one host,
        usually one server) two processes migrating a fresh file at once may collide.
        """
        from alembic import command
        from alembic.config import Config

        alembic_config = Config(str(_PACKAGE_DIR / "alembic.ini"))
        alembic_config.set_main_option("script_location", str(_PACKAGE_DIR / "migrations"))
        with self.engine.begin() as connection:
            if self.dialect == "postgresql":
                # NOTE: several servers may start at once against one database; the lock makes
                # the second wait and then find the schema already at head.
                connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
            alembic_config.attributes["connection"] = connection
            command.upgrade(alembic_config, "head")

    def insert_ignoring_duplicates(self, table: sa.Table, unique_columns: Sequence[str]) -> Insert:
        """`INSERT ... ON CONFLICT (unique_columns) DO NOTHING` in this store's dialect."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table).on_conflict_do_nothing(index_elements=list(unique_columns))
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(unique_columns))

    def close(self) -> None:
        self.engine.dispose()


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (usage queries) run while the ledger writes; the busy timeout makes a
    # second writer (another thread or process) wait instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
