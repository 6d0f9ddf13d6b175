"""The contract between the API's authentication and a browser session (the web console signs
in and holds sessions; the API only reads them): the cookie, the header that must come with it,
and what a session store has to answer. Declared here so flintlm/api never imports the console.
"""

from __future__ import annotations

from typing import Protocol

COOKIE_NAME = "flintlm_console"
# The request header without which the session cookie is ignored: a custom header makes a
# cross-site request preflighted, which this server never approves, so another site's form or
# fetch cannot ride on the cookie.
CONSOLE_HEADER = "x-flintlm-console"


class SignedInSession(Protocol):
    @property
    def secret(self) -> str: ...


class SessionLookup(Protocol):
    """A store of live sessions by the id in the cookie (`console.session.ConsoleSessions`)."""

    def get(self, session_id: str | None) -> SignedInSession | None: ...
