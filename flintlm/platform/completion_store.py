"""Chat completions kept for their tenant (OpenAI's stored completions): save, read, list with
filters and cursors, update metadata, delete, erase a key's data, and drop what is older than the
retention (`ttl_s`).

Plain SQLAlchemy; every method does blocking I/O, so call it from a worker thread. Knows nothing
of the chat wire format: a request and a completion are JSON documents to it. Every document goes
through the store's `Redactor` before it is written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

from flintlm.platform.capture import Redactor, keep_as_is
from flintlm.platform.tables import StoredCompletionRow, db_time

if TYPE_CHECKING:
    from flintlm.config import PlatformConfig
    from flintlm.platform.db import Database

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
RATING_KEY = "rating"  # feedback: an integer, as a decimal string like every metadata value
COMMENT_KEY = "comment"
_SECONDS_PER_DAY = 86_400.0
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_metadata(metadata: dict[str, Any]) -> None:
    """OpenAI's metadata rules (16 pairs, keys <= 64 and values <= 512 characters, strings), and
    ours: `rating`, when present, is an integer.

    Raises:
        ValueError: naming the pair at fault.
    """
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ValueError(f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS}")
    for name, value in metadata.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_METADATA_KEY_CHARS:
            raise ValueError(f"metadata key {name!r} must be 1 to {MAX_METADATA_KEY_CHARS} "
                             "characters")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS:
            raise ValueError(f"metadata[{name!r}] must be a string of at most "
                             f"{MAX_METADATA_VALUE_CHARS} characters")
    if RATING_KEY in metadata:
        parse_rating(metadata[RATING_KEY])


def parse_rating(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"metadata['rating']={text!r} must be an integer, like '1' or "
                         "'-1'") from None


@dataclass(frozen=True)
class StoredCompletion:
    """One kept completion: the request as sent, the completion as answered, and metadata."""

    id: str
    tenant_id: str
    key_id: str
    model: str
    request: dict[str, Any]
    completion: dict[str, Any]
    metadata: dict[str, str]
    created_at: datetime

    @property
    def rating(self) -> int | None:
        text = self.metadata.get(RATING_KEY)
        return None if text is None else parse_rating(text)


@dataclass(frozen=True)
class CompletionPage:
    items: list[StoredCompletion]
    has_more: bool


@dataclass(frozen=True)
class CompletionFilter:
    """Which completions `CompletionStore.select` yields (export); None means any."""

    key_id: str | None = None
    model: str | None = None
    since: datetime | None = None  # naive UTC, inclusive
    tenant_id: str | None = None


class UnknownCursor(LookupError):
    """`after` names no completion in the listing."""


class CompletionStore:
    def __init__(self, db: Database, *, ttl_s: float, clock: Callable[[], float] = time.time,
                 redact: Redactor = keep_as_is) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.clock = clock
        self.redact = redact

    @classmethod
    def from_config(cls, db: Database, config: PlatformConfig,
                    redact: Redactor = keep_as_is) -> CompletionStore:
        return cls(db, ttl_s=config.capture_ttl_days * _SECONDS_PER_DAY, redact=redact)

    def _cutoff(self) -> datetime:
        """Rows created before this are past the retention."""
        return db_time(self.clock()) - timedelta(seconds=self.ttl_s)

    def _live(self, tenant_id: str | None) -> sa.Select[StoredCompletionRow]:
        row = StoredCompletionRow
        query = sa.select(row).where(row.created_at >= self._cutoff())
        return query if tenant_id is None else query.where(row.tenant_id == tenant_id)

    def save(self, *, completion_id: str, tenant_id: str, key_id: str, model: str,
             request: dict[str, Any], completion: dict[str, Any],
             metadata: dict[str, str]) -> None:
        """Keep a completion (redacted); drops every row past the retention in the same
        transaction, so the table never holds data older than `ttl_s`."""
        row = StoredCompletionRow(
            id=completion_id, tenant_id=tenant_id, key_id=key_id, model=model,
            request=self.redact(key_id, request), completion=self.redact(key_id, completion),
            tags=dict(metadata), created_at=db_time(self.clock()))
        with self.db.session() as session:
            session.execute(sa.delete(StoredCompletionRow)
                            .where(StoredCompletionRow.created_at < self._cutoff()))
            session.add(row)

    def purge_expired(self) -> int:
        """Delete every completion past the retention; returns how many went."""
        with self.db.session() as session:
            result = session.execute(sa.delete(StoredCompletionRow)
                                     .where(StoredCompletionRow.created_at < self._cutoff()))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def get(self, tenant_id: str | None, completion_id: str) -> StoredCompletion | None:
        """The tenant's completion (any tenant's when None), or None: unknown, expired, or
        another tenant's."""
        query = self._live(tenant_id).where(StoredCompletionRow.id == completion_id)
        with self.db.session() as session:
            row = session.scalars(query).one_or_none()
            return None if row is None else _to_record(row)

    def list(self, tenant_id: str, *, metadata: dict[str, str] | None = None,
             model: str | None = None, after: str | None = None, limit: int = 20,
             order: Literal["asc", "desc"] = "asc") -> CompletionPage:
        """A page of the tenant's completions by creation time, `limit` of them after the one
        `after` names, matching every `metadata` pair and the `model`.

        Raises:
            UnknownCursor: `after` is not one of the tenant's completions.
        """
        row = StoredCompletionRow
        metadata = metadata or {}
        query = self._live(tenant_id)
        for name, value in metadata.items():
            # NOTE: a JSON path is exact for plain names only (quotes, backslashes and
            # non-ASCII read differently per dialect); every pair is checked below anyway.
            if _PLAIN_NAME.fullmatch(name):
                query = query.where(row.tags[name].as_string() == value)
        if model is not None:
            query = query.where(row.model == model)
        with self.db.session() as session:
            if after is not None:
                cursor = session.scalars(self._live(tenant_id).where(row.id == after)
                                         ).one_or_none()
                if cursor is None:
                    raise UnknownCursor(after)
                later = sa.tuple_(row.created_at, row.id) > (cursor.created_at, cursor.id)
                earlier = sa.tuple_(row.created_at, row.id) < (cursor.created_at, cursor.id)
                query = query.where(later if order == "asc" else earlier)
            keys = (row.created_at, row.id) if order == "asc" else (row.created_at.desc(),
                                                                   row.id.desc())
            query = query.order_by(*keys)
            if all(_PLAIN_NAME.fullmatch(name) for name in metadata):
                query = query.limit(limit + 1)
            rows: list[StoredCompletionRow] = []
            for found in session.scalars(query.execution_options(yield_per=100)):
                if all(found.tags.get(name) == value for name, value in metadata.items()):
                    rows.append(found)
                    if len(rows) > limit:
                        break
        return CompletionPage([_to_record(r) for r in rows[:limit]], len(rows) > limit)

    def update_metadata(self, tenant_id: str | None, completion_id: str,
                        metadata: dict[str, str], *, merge: bool = False
                        ) -> StoredCompletion | None:
        """Replace (or, with `merge`, add to) a completion's metadata; None when the tenant has
        no such completion. Any tenant's when `tenant_id` is None (the operator's CLI)."""
        query = self._live(tenant_id).where(StoredCompletionRow.id == completion_id)
        with self.db.session() as session:
            row = session.scalars(query).one_or_none()
            if row is None:
                return None
            merged = {**row.tags, **metadata} if merge else dict(metadata)
            check_metadata(merged)
            row.tags = merged
            return _to_record(row)

    def delete(self, tenant_id: str, completion_id: str) -> bool:
        """Forget the tenant's completion; False when it has none by that id."""
        row = StoredCompletionRow
        with self.db.session() as session:
            result = session.execute(sa.delete(row).where(
                row.id == completion_id, row.tenant_id == tenant_id))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def delete_key(self, key_id: str) -> int:
        """Erase everything captured from one key; returns how many completions went."""
        row = StoredCompletionRow
        with self.db.session() as session:
            result = session.execute(sa.delete(row).where(row.key_id == key_id))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def select(self, selection: CompletionFilter, batch_size: int = 500
               ) -> Iterator[StoredCompletion]:
        """Every live completion matching `selection`, oldest first, read in batches."""
        row = StoredCompletionRow
        query = self._live(selection.tenant_id)
        if selection.key_id is not None:
            query = query.where(row.key_id == selection.key_id)
        if selection.model is not None:
            query = query.where(row.model == selection.model)
        if selection.since is not None:
            query = query.where(row.created_at >= selection.since)
        query = query.order_by(row.created_at, row.id).execution_options(yield_per=batch_size)
        with self.db.session() as session:
            for found in session.scalars(query):
                yield _to_record(found)


def _to_record(row: StoredCompletionRow) -> StoredCompletion:
    return StoredCompletion(id=row.id, tenant_id=row.tenant_id, key_id=row.key_id,
                            model=row.model, request=row.request, completion=row.completion,
                            metadata=dict(row.tags), created_at=row.created_at)
