"""ASGI middleware: a request body larger than `max_body_bytes` gets a 413 in OpenAI's error
shape, before the app reads it whole.

Checked twice: from `Content-Length` before a byte of the body is read, and by counting the
bytes as the app receives them (chunked bodies, or a length that lies). At most one chunk past
the limit is ever held, so memory stays flat whatever the client sends.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flintlm.api.errors import error_body


class BodyTooLarge:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(send)
            return
        num_received = 0
        is_refused = False
        has_started = False

        async def limited_receive() -> Message:
            nonlocal num_received, is_refused
            if is_refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                num_received += len(message.get("body", b""))
                if num_received > self.max_body_bytes:
                    is_refused = True
                    if not has_started:
                        await self._refuse(send)
                    # NOTE: the app sees the client gone and stops; whatever it answers is
                    # dropped below, since the 413 is already sent.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal has_started
            if is_refused:
                return
            if message["type"] == "http.response.start":
                has_started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body(
            f"the request body is larger than this server's limit of {self.max_body_bytes} "
            "bytes", "invalid_request_error", None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the rest of the body is never read
        ]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None
