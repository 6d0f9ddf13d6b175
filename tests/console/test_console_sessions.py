"""`ConsoleSessions` on its own: ids are random and unguessable, sessions end on logout, when
idle too long, and when too many newer ones push them out."""

from __future__ import annotations

from flintlm.console.session import ConsoleSessions, Role, Session
from tests.platform.conftest import FakeClock

KEY = Session("flint-sk-secret", Role.KEY, key_id="key_1")


def test_a_session_lives_until_logout() -> None:
    sessions = ConsoleSessions()
    session_id = sessions.start(KEY)
    assert len(session_id) >= 40 and "secret" not in session_id
    assert sessions.start(KEY) != session_id  # each sign-in its own id
    assert sessions.get(session_id) == KEY
    assert sessions.get("forged") is None and sessions.get(None) is None
    sessions.end(session_id)
    assert sessions.get(session_id) is None


def test_an_idle_session_ends_and_use_keeps_one_alive() -> None:
    clock = FakeClock()
    sessions = ConsoleSessions(clock=clock, idle_timeout_s=100)
    used, idle = sessions.start(KEY), sessions.start(KEY)
    for _ in range(3):
        clock.advance(60)
        assert sessions.get(used) == KEY
    assert sessions.get(idle) is None  # 180 s without use
    clock.advance(101)
    assert sessions.get(used) is None


def test_the_least_recently_used_session_goes_first_beyond_the_cap() -> None:
    sessions = ConsoleSessions(max_sessions=2)
    first, second = sessions.start(KEY), sessions.start(KEY)
    assert sessions.get(first) == KEY  # now `second` is the least recently used
    third = sessions.start(KEY)
    assert sessions.get(second) is None
    assert sessions.get(first) == KEY and sessions.get(third) == KEY
