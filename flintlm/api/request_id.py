"""ASGI middleware: every HTTP request gets an id, and every response carries it.

A client's `x-request-id` is kept when it is sane (1-128 visible ASCII characters); anything
else is replaced by a fresh `req_<hex>`. The id goes on `request.state.request_id`, into the log
context (every record logged while serving the request shows it) and onto the response's
`x-request-id` header, whatever answers: a route, an error handler, a 404, an SSE stream.
Installed twice (server front and app) it acts once: the outer one's id holds.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flintlm.observability.logging import set_request_id

HEADER = "x-request-id"
REQUEST_ID_STATE = "request_id"  # request.state attribute
MAX_LENGTH = 128
_SANE = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")


def accept_or_make(client_id: str | None) -> str:
    """The client's id if it is sane, else a new one."""
    if client_id is not None and _SANE.fullmatch(client_id):
        return client_id
    return f"req_{uuid.uuid4().hex}"


def _client_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == HEADER.encode():
            return value.decode("latin-1")
    return None


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if REQUEST_ID_STATE in state:  # an outer RequestIds already did the work
            await self.app(scope, receive, send)
            return
        request_id = accept_or_make(_client_id(scope))
        state[REQUEST_ID_STATE] = request_id
        set_request_id(request_id)
        header = (HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)
