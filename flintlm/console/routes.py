"""The console's HTTP surface: GET /console (the HTML shell), /console/static/... (its CSS and
ES modules, packaged with flintlm), and /console/session (sign in, who am I, log out).

Everything else the console shows comes from the real /v1 and /admin APIs, called with the
session cookie (`api/deps.py` accepts it only with `x-flintlm-console: 1`). Every /console
response carries a strict Content-Security-Policy (`ConsoleHeaders`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flintlm.api.deps import Serving, ServingState
from flintlm.api.errors import AuthenticationFailed, InvalidParam, NotFound
from flintlm.api.session_cookie import CONSOLE_HEADER, COOKIE_NAME
from flintlm.console.session import IDLE_TIMEOUT_S, ConsoleSessions, Role, Session
from flintlm.platform.keys import ANONYMOUS_KEY_ID

STATIC_DIR = Path(__file__).parent / "static"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# No inline script or style anywhere, nothing from another origin, no framing; Trusted Types
# make a string assigned to innerHTML (or any other HTML sink) throw, so data cannot become HTML.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "connect-src 'self'", "font-src 'self'", "object-src 'none'", "base-uri 'none'",
    "form-action 'self'", "frame-ancestors 'none'", "require-trusted-types-for 'script'",
    "trusted-types 'none'"))
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}

router = APIRouter(prefix="/console", include_in_schema=False)


class ConsoleHeaders:
    """ASGI middleware: the security headers on every response under /console, errors too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != "/console" and not path.startswith("/console/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.decode().lower() not in SECURITY_HEADERS]
                headers += [(name.encode(), value.encode())
                            for name, value in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@router.get("")
@router.get("/")
async def index() -> FileResponse:
    return _static_file("index.html")


@router.get("/static/{path:path}")
async def static(path: str) -> FileResponse:
    return _static_file(path)


def _static_file(path: str) -> FileResponse:
    file = (STATIC_DIR / path).resolve()
    media_type = _MEDIA_TYPES.get(file.suffix)
    if media_type is None or not file.is_relative_to(STATIC_DIR.resolve()) or not file.is_file():
        raise NotFound(f"no console file {path!r}")
    # no-cache: revalidated (ETag) on every load, so an upgraded server's files are used at once
    return FileResponse(file, media_type=media_type, headers={"cache-control": "no-cache"})


class SignIn(BaseModel):
    """The body of POST /console/session: the secret, in the body, never in a URL."""

    model_config = ConfigDict(extra="forbid")

    secret: str = Field(min_length=1, max_length=512)


class ConsoleIdentity(BaseModel):
    """Who the console is signed in as; `role` None: nobody (show the sign-in form)."""

    role: Literal["admin", "key", "open"] | None
    key_id: str | None = None
    name: str | None = None
    prefix: str | None = None  # the key's display prefix, never its secret
    reason: str | None = None  # why a session that existed no longer counts


ConsoleHeader = Annotated[str | None, Header(alias=CONSOLE_HEADER)]


def _sessions(serving: ServingState, console_header: str | None) -> ConsoleSessions:
    if console_header != "1":  # a cross-site form cannot send it (see api/session_cookie.py)
        raise InvalidParam(f"send the header '{CONSOLE_HEADER}: 1'", param=CONSOLE_HEADER,
                           code="console_header_required")
    sessions = serving.console_sessions
    assert isinstance(sessions, ConsoleSessions), "the console routes exist only with its sessions"
    return sessions


@router.post("/session")
async def sign_in(body: SignIn, request: Request, response: Response, serving: Serving,
                  console_header: ConsoleHeader = None) -> ConsoleIdentity:
    """Check the secret as the API would; on success set the session cookie."""
    sessions = _sessions(serving, console_header)
    if serving.platform.is_admin(body.secret):
        session = Session(body.secret, Role.ADMIN, key_id=None)
        identity = ConsoleIdentity(role="admin")
    else:
        key = await serving.admission.authenticate(body.secret)  # 401 names why it failed
        if key.id == ANONYMOUS_KEY_ID:  # open mode lets any string through: there is no key
            return ConsoleIdentity(role="open")
        session = Session(body.secret, Role.KEY, key_id=key.id)
        identity = ConsoleIdentity(role="key", key_id=key.id, name=key.name, prefix=key.prefix)
    sessions.end(request.cookies.get(COOKIE_NAME))  # a fixed old id never carries on
    response.set_cookie(COOKIE_NAME, sessions.start(session), max_age=int(IDLE_TIMEOUT_S),
                        path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    response.headers["cache-control"] = "no-store"
    return identity


@router.get("/session")
async def who_am_i(request: Request, response: Response, serving: Serving,
                   console_header: ConsoleHeader = None) -> ConsoleIdentity:
    """The signed-in identity, re-checked now: a revoked key's session ends here."""
    sessions = _sessions(serving, console_header)
    response.headers["cache-control"] = "no-store"
    if not await serving.admission.is_key_required():
        return ConsoleIdentity(role="open")
    session_id = request.cookies.get(COOKIE_NAME)
    session = sessions.get(session_id)
    if session is None:
        return ConsoleIdentity(role=None)
    if session.role is Role.ADMIN:
        return ConsoleIdentity(role="admin")
    try:
        key = await serving.admission.authenticate(session.secret)
    except AuthenticationFailed as refusal:
        sessions.end(session_id)
        response.delete_cookie(COOKIE_NAME, path="/")
        return ConsoleIdentity(role=None, reason=refusal.message)
    return ConsoleIdentity(role="key", key_id=key.id, name=key.name, prefix=key.prefix)


@router.delete("/session")
async def log_out(request: Request, response: Response, serving: Serving,
                  console_header: ConsoleHeader = None) -> ConsoleIdentity:
    _sessions(serving, console_header).end(request.cookies.get(COOKIE_NAME))
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    response.headers["cache-control"] = "no-store"
    return ConsoleIdentity(role=None)
