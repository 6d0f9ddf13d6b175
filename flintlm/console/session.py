"""Console sessions: an opaque random id (the cookie) -> the secret it signed in with, held in
this process's memory only.

NOTE: the session keeps the secret itself, not a verdict about it: every API call made through a
session re-authenticates that secret exactly as an `Authorization` header would be, so a key
revoked (or expired) after sign-in stops working for its sessions at once. The secret never
leaves the server again; the browser holds only the id, in an HttpOnly cookie (its name and
the header that must come with it: api/session_cookie.py).
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

IDLE_TIMEOUT_S = 12 * 3600.0
MAX_SESSIONS = 10_000  # beyond this the least recently used session ends


class Role(enum.StrEnum):
    ADMIN = "admin"  # signed in with the admin key: sees every key's world
    KEY = "key"  # signed in with an API key: sees its own
    OPEN = "open"  # no key is configured (dev mode): no sign-in, no admin pages


@dataclass(frozen=True)
class Session:
    secret: str
    role: Role
    key_id: str | None  # the API key's id; None for the admin


class ConsoleSessions:
    """The live sessions of this server; thread-safe. Sessions end on logout, after
    IDLE_TIMEOUT_S without use, or when MAX_SESSIONS newer ones push them out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, max_sessions: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self._idle_timeout_s = idle_timeout_s
        self._max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, tuple[Session, float]] = OrderedDict()  # LRU first

    def start(self, session: Session) -> str:
        """Store `session`; returns its new id, 256 random bits, for the cookie."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session_id] = (session, self._clock())
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        """The live session of `session_id` (its idle clock restarts), or None."""
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            found = self._sessions.get(session_id)
            if found is None:
                return None
            session, last_used = found
            if now - last_used > self._idle_timeout_s:
                del self._sessions[session_id]
                return None
            self._sessions[session_id] = (session, now)
            self._sessions.move_to_end(session_id)
            return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(session_id, None)
