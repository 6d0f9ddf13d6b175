"""Logging setup: one handler for flintlm's and uvicorn's records, each carrying the request id
of the request being served (a contextvar set by `api/request_id.py`), in text or JSON lines.

Every record is made safe to write here, once, whatever its arguments (CWE-117): control
characters in a message become escapes (`\\r`, `\\n`, `\\x1b`), so a client's value can never
start a line of its own; a traceback's lines are indented, so they cannot pass for a record.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

LOG_FORMATS = ("text", "json")
NO_REQUEST_ID = "-"
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_T = TypeVar("_T")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                        default=None)

# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators: each could end a
# line (or rewrite one on a terminal). Common ones get their C escape, the rest \xNN or \uNNNN.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {code: _NAMED_ESCAPES.get(chr(code), f"\\x{code:02x}")
            for code in [*range(0x20), *range(0x7f, 0xa0)]}
_ESCAPES |= {0x2028: "\\u2028", 0x2029: "\\u2029"}
# In JSON text the C0 controls are escaped by json.dumps; these it leaves raw.
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in [0x7f, *range(0x80, 0xa0), 0x2028, 0x2029]}


def escape_controls(text: str) -> str:
    """`text` on one line: every control or line-separator character as a visible escape."""
    return text.translate(_ESCAPES)


def current_request_id() -> str | None:
    """The id of the request this code serves, or None outside a request."""
    return _request_id.get()


def set_request_id(request_id: str) -> None:
    """Mark the current context (one request's task) as serving `request_id`.

    NOTE: not reset when the request ends: each request runs in its own task, and uvicorn logs
    an unhandled error after the app returned, still in that task, where the id should show.
    """
    _request_id.set(request_id)


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Serve `request_id` for the `with` block only (for work outside a request's own task)."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class ContextExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks run in the submitter's context, so the records they log (and
    anything they read from it) carry the request id; `loop.run_in_executor` does not copy it."""

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or NO_REQUEST_ID
        return True


class SafeTextFormatter(logging.Formatter):
    """One line per record; a traceback follows on indented lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # A trailing line break (uvicorn ends some messages with one) would only show as "\n".
        record.message = escape_controls(record.message.rstrip("\r\n"))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, request_id, message, and
    `exception` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", NO_REQUEST_ID),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_JSON_ESCAPES)


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.split("\n"))


def configure(level: str = "info", log_format: str = "text") -> None:
    """Send flintlm's and uvicorn's records (and other libraries' warnings) through one safe
    handler on stderr; uvicorn must be started with `log_config=None` to keep it."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format={log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else SafeTextFormatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("flintlm", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(level.upper())
        logger.propagate = True
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
