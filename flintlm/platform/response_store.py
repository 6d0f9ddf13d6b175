"""Responses kept for `previous_response_id` and `GET /v1/responses/{id}`: one row per response
in `stored_responses`, readable by the key that created it only, bounded in time (`ttl_s`) and
in number per key (`max_per_key`, the oldest go first).

Plain SQLAlchemy; every method does blocking I/O, so call it from a worker thread. Knows nothing
of the Responses wire format: a response and its context are JSON documents to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from flintlm.platform.tables import StoredResponseRow, db_time

if TYPE_CHECKING:
    from flintlm.config import PlatformConfig
    from flintlm.platform.db import Database


@dataclass(frozen=True)
class StoredResponse:
    id: str
    response: dict[str, Any]
    context: list[dict[str, Any]]  # the input items the model saw, instructions aside


class ResponseStore:
    def __init__(self, db: Database, *, ttl_s: float, max_per_key: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.max_per_key = max_per_key
        self.clock = clock

    @classmethod
    def from_config(cls, db: Database, config: PlatformConfig) -> ResponseStore:
        return cls(db, ttl_s=config.response_ttl_s,
                   max_per_key=config.max_stored_responses_per_key)

    def save(self, key_id: str, response_id: str, response: dict[str, Any],
             context: list[dict[str, Any]]) -> None:
        """Keep a response; drops expired rows (of every key) and this key's oldest beyond the
        cap in the same transaction, so the table never outgrows its bounds."""
        now = db_time(self.clock())
        row = StoredResponseRow
        with self.db.session() as session:
            session.execute(sa.delete(row).where(row.expires_at <= now))
            session.add(StoredResponseRow(
                id=response_id, key_id=key_id, response=response, context=context,
                created_at=now, expires_at=now + timedelta(seconds=self.ttl_s)))
            session.flush()
            beyond_cap = (sa.select(row.id).where(row.key_id == key_id)
                          .order_by(row.created_at.desc(), row.id.desc())
                          .offset(self.max_per_key))
            old_ids = list(session.execute(beyond_cap).scalars())
            if old_ids:
                session.execute(sa.delete(row).where(row.id.in_(old_ids)))

    def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        """The key's unexpired response, or None (unknown, expired, or another key's)."""
        with self.db.session() as session:
            row = session.get(StoredResponseRow, response_id)
            if row is None or row.key_id != key_id or row.expires_at <= db_time(self.clock()):
                return None
            return StoredResponse(row.id, row.response, row.context)

    def delete(self, key_id: str, response_id: str) -> bool:
        """Forget the key's response; False when it has none by that id."""
        row = StoredResponseRow
        with self.db.session() as session:
            result = session.execute(sa.delete(row).where(
                row.id == response_id, row.key_id == key_id,
                row.expires_at > db_time(self.clock())))
            return bool(result.rowcount)  # type: ignore[attr-defined]
