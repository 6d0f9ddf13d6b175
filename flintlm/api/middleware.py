"""ASGI middleware: the `x-ratelimit-*` headers of an admitted request go on its response.

Admission leaves them on `request.state` (`deps.RATE_LIMIT_HEADERS_STATE`); this adds them to
whatever response starts, JSON, SSE (before the first byte) or an error raised after admission,
unless the response already names the header (a 429 carries its own).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flintlm.api.deps import RATE_LIMIT_HEADERS_STATE


class RateLimitHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = (scope.get("state") or {}).get(RATE_LIMIT_HEADERS_STATE)
                if extra:
                    headers = list(message.get("headers", []))
                    present = {name.lower() for name, _ in headers}
                    headers += [(name.encode(), value.encode()) for name, value in extra.items()
                                if name.encode() not in present]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
