"""The store handle: default location, SQLite settings, migrations that match the tables."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import platformdirs
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from flintlm.config import PlatformConfig
from flintlm.platform.db import Database, database_url
from flintlm.platform.tables import Base, parse_db_time


def test_default_store_is_sqlite_in_the_user_data_dir() -> None:
    expected = Path(platformdirs.user_data_dir("flintlm")) / "flintlm.db"
    assert sa.make_url(database_url(PlatformConfig())).database == str(expected)


def test_sqlite_store_in_data_dir_uses_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    db = Database.from_config(PlatformConfig(data_dir=str(tmp_path / "new" / "dir")))
    db.migrate()
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    db.close()
    assert (tmp_path / "new" / "dir" / "flintlm.db").is_file()


def test_database_url_wins_over_data_dir(tmp_path: Path) -> None:
    url = "postgresql+psycopg://user@db.example/flintlm"
    assert database_url(PlatformConfig(data_dir=str(tmp_path), database_url=url)) == url


def test_unsupported_store_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="supports sqlite, postgresql"):
        Database("mysql://user@localhost/flintlm")


def test_migrations_are_idempotent_and_match_the_tables(db: Database) -> None:
    db.migrate()  # already at head: a no-op
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(sa.inspect(connection).get_table_names())
    assert {"api_keys", "usage_events", "alembic_version"} <= tables


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-01-31", datetime(2025, 1, 31)),
    ("2025-01-31T12:30:00Z", datetime(2025, 1, 31, 12, 30)),
    ("2025-01-31T14:30:00+02:00", datetime(2025, 1, 31, 12, 30)),
    ("1738326600", datetime(2025, 1, 31, 12, 30)),
])
def test_times_people_write_become_naive_utc(text: str, expected: datetime) -> None:
    assert parse_db_time(text) == expected


def test_an_unreadable_time_says_how_to_write_it() -> None:
    with pytest.raises(ValueError, match="2025-01-31T12:00:00Z"):
        parse_db_time("next tuesday")
