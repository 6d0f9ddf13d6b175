"""Which chat completions the platform keeps (capture modes), and the one hook every captured
document passes through before it is stored or exported.

Knows no HTTP and no SQL: the API asks `is_captured`, the completion store and the exporter call
`redact`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any


class CaptureMode(enum.StrEnum):
    """A key's (or the server's default) capture mode."""

    REQUEST = "request"  # what the client sends with `store: true`
    ALL = "all"  # every chat completion, `store` or not
    NEVER = "never"  # nothing; `store: true` is refused with a 400


def effective_mode(key_mode: CaptureMode | None, server_mode: CaptureMode) -> CaptureMode:
    """A key's own mode wins; a key without one follows the server's `--capture`."""
    return key_mode if key_mode is not None else server_mode


def is_captured(mode: CaptureMode, store: bool | None) -> bool:
    """Whether a request with this `store` flag is kept. NEVER with `store: true` is the
    caller's to refuse (see `CaptureMode.NEVER`); here it is simply not kept."""
    return mode is CaptureMode.ALL or (mode is CaptureMode.REQUEST and bool(store))


Redactor = Callable[[str, dict[str, Any]], dict[str, Any]]
"""(key_id, document) -> the document as it may be kept: applied to each captured request and
completion before it is stored, and to each exported line before it is written."""


def keep_as_is(key_id: str, document: dict[str, Any]) -> dict[str, Any]:
    """The identity: what `flintlm data export` applies (it has no guardrails file); the server
    stores through `safety.pipeline.Guardrails.redactor` (the key's policy's PII entities)."""
    return document
