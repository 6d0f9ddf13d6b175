"""Alembic environment of the platform store.

Run by `Database.migrate()` with an open connection in `config.attributes["connection"]`; from
the alembic CLI the URL comes from `-x url=...`. It never configures logging, so running
migrations inside the server leaves the server's logging alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from flintlm.platform.tables import Base


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables in future revisions.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise ValueError("give the database with `alembic -x url=<sqlalchemy url> ...`")
    engine = sa.create_engine(url)
    with engine.begin() as own_connection:
        _run(own_connection)
    engine.dispose()


if context.is_offline_mode():
    raise ValueError("offline (--sql) migrations are not supported; run against a database")
_run_online()
