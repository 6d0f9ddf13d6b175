"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the right
HTTP status.

Routes raise `APIError` subclasses (or let the engine's `InvalidRequestError` /
`EngineOverloadedError` through); the handlers here turn every failure, FastAPI's own validation
errors included, into that shape. A 500 carries a generic message, never a stack trace.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from flintlm.engine.request import EngineDeadError, EngineOverloadedError, InvalidRequestError

RETRY_AFTER_S = 1


class APIError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers


class InvalidParam(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(APIError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(APIError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "model_not_allowed"


class NotAdmin(APIError):
    """A valid key that is not the admin key, on the admin API: known, just not allowed."""

    status_code = 403
    error_type = "permission_error"
    default_code = "admin_key_required"


class ContentPolicyViolation(InvalidParam):
    """An input a guardrail rule blocks; the message names the rule, never the matched text."""

    default_code = "content_policy_violation"


class ModelNotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class NotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class RateLimited(APIError):
    """A per-minute limit; OpenAI's `type` names it ("requests" or "tokens")."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class QuotaExceeded(APIError):
    """A token quota or budget is spent; retrying before it resets cannot succeed."""

    status_code = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class ServiceUnavailable(APIError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"


class ClientDisconnected(Exception):
    """The client went away before the response; nothing is sent (the request was aborted)."""


def error_body(message: str, error_type: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def to_api_error(exc: BaseException) -> APIError:
    """Map any failure to the APIError the client sees; unknown ones become a generic 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return InvalidParam(exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, EngineOverloadedError):
        return ServiceUnavailable(
            "the server is overloaded; retry shortly", code="engine_overloaded",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if isinstance(exc, EngineDeadError):
        return ServiceUnavailable("the engine stopped after an internal error; this server "
                                  "cannot serve requests until it restarts", code="engine_dead")
    return APIError("internal server error; the request was not completed")


def _json(error: APIError) -> JSONResponse:
    headers = dict(error.headers or {})
    is_final = any(k.lower() == "x-should-retry" and v == "false" for k, v in headers.items())
    has_retry_after = any(k.lower() == "retry-after" for k in headers)
    if error.status_code in (429, 503) and not (is_final or has_retry_after):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    body = error_body(error.message, error.error_type, error.param, error.code)
    return JSONResponse(body, status_code=error.status_code, headers=headers)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _error_loc(errors: list[Any]) -> tuple[Any, ...]:
    """Where the first error is. When every error sits under one field, that field: pydantic
    reports a value no member of a union accepts once per member, with the member's name in
    the location (`stop.str`, `stop.list[str]`), and the client sent `stop`."""
    locs = [tuple(error.get("loc", ())) for error in errors]
    if len(locs) < 2:
        return locs[0] if locs else ()
    common: list[Any] = []
    for parts in zip(*locs, strict=False):
        if len(set(map(repr, parts))) != 1:
            break
        common.append(parts[0])
    return tuple(common) if _param_from_loc(tuple(common)) else locs[0]


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return InvalidParam(f"could not parse the JSON body: {detail}".rstrip(": "))
    ctx = first.get("ctx") or {}
    param = ctx.get("param") or _param_from_loc(_error_loc(list(exc.errors())))
    if first.get("type") == "missing":
        return InvalidParam(f"missing required parameter: {param!r}", param=param)
    message = str(first.get("msg", "invalid request"))
    if param and first.get("type") != "invalid_param":
        message = f"invalid value for {param!r}: {message}"
    return InvalidParam(message, param=param)


_HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path. NOTE: Starlette's own `Allow`
    names the first matching route's only, and one path may have several (GET and POST
    /v1/chat/completions live in different routers); each method is asked of the router."""
    routes = request.app.router.routes
    allowed = [method for method in _HTTP_METHODS
               if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                      for route in routes)]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> Response:
        return _json(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> Response:
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "not_found" if exc.status_code == 404 else None
        # NOTE: the exception's headers go out too: a 405 names the allowed methods in `Allow`.
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        error = APIError(str(exc.detail), code=code, headers=headers)
        error.status_code, error.error_type = exc.status_code, error_type
        return _json(error)

    @app.exception_handler(ClientDisconnected)
    async def _on_disconnect(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)  # never seen: the client is gone

    async def _on_known(_: Request, exc: Exception) -> Response:
        return _json(to_api_error(exc))

    for known in (APIError, InvalidRequestError, EngineOverloadedError, EngineDeadError):
        app.add_exception_handler(known, _on_known)

    # NOTE: Starlette sends this from its outermost middleware and re-raises, so uvicorn logs the
    # traceback on the server while the client only sees the generic message.
    app.add_exception_handler(Exception, _on_known)
