"""Errors in Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, with Anthropic's
status codes, for the routes of `/v1/messages` only (the rest of the API keeps OpenAI's shape,
api/errors.py).

`AnthropicRoute` is the route class of those routes: whatever their handler, dependencies or
body validation raise becomes this envelope. After the first byte of a stream, `error_event`
gives the same error as an in-band `event: error`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from flintlm.api.errors import APIError, ClientDisconnected, to_api_error
from flintlm.engine.request import EngineOverloadedError, InvalidRequestError

logger = logging.getLogger("flintlm.api")

OVERLOADED_STATUS = 529  # Anthropic's status for "overloaded"; our 503s map to it
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", OVERLOADED_STATUS: "overloaded_error"}


def anthropic_status(error: APIError) -> int:
    return OVERLOADED_STATUS if error.status_code == 503 else error.status_code


def error_payload(error: APIError) -> dict[str, Any]:
    status = anthropic_status(error)
    default = "api_error" if status >= 500 else "invalid_request_error"
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, default),
                                       "message": error.message}}


def error_event(exc: BaseException) -> str:
    """An SSE `error` event for a failure after the stream started."""
    return f"event: error\ndata: {json.dumps(error_payload(_api_error(exc)))}\n\n"


def error_response(exc: BaseException) -> JSONResponse:
    error = _api_error(exc)
    headers = dict(error.headers or {})
    if anthropic_status(error) in (429, OVERLOADED_STATUS) and not any(
            k.lower() in ("retry-after", "x-should-retry") for k in headers):
        headers["retry-after"] = "1"
    return JSONResponse(error_payload(error), status_code=anthropic_status(error),
                        headers=headers)


def _api_error(exc: BaseException) -> APIError:
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, StarletteHTTPException):  # FastAPI's own 4xx, e.g. a body not UTF-8
        error = APIError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status_code = exc.status_code
        return error
    if not isinstance(exc, APIError | InvalidRequestError | EngineOverloadedError):
        logger.error("request failed", exc_info=exc)  # a bug: the client gets a generic 500
    return to_api_error(exc)


def _validation_error(exc: RequestValidationError) -> APIError:
    """Anthropic's style: "<param>: <what is wrong>"."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        message = f"could not parse the JSON body: {first.get('ctx', {}).get('error', '')}"
    else:
        ctx = first.get("ctx") or {}
        loc = [str(p) if not isinstance(p, int) else f"[{p}]" for p in first.get("loc", ())
               if p not in ("body", "header", "query", "path")]
        param = ctx.get("param") or ".".join(loc).replace(".[", "[")
        what = "Field required" if first.get("type") == "missing" else first.get("msg", "")
        message = f"{param}: {what}" if param else str(what)
    error = APIError(message.rstrip(": "), param=None)
    error.status_code = 400
    return error


class AnthropicRoute(APIRoute):
    """A route whose errors, body validation included, answer in Anthropic's envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ClientDisconnected:
                raise  # nobody to answer; the app's handler ends it quietly
            except Exception as exc:  # noqa: BLE001 - every failure is answered in this shape
                return error_response(exc)

        return route
