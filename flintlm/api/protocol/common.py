"""What every OpenAI endpoint shares: the `invalid` 400 helper, the check of a request's extra
fields (the Anthropic request takes it too), the response envelope, usage and the error body.
It imports no other protocol module, so every one of them can import it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, Field
from pydantic_core import PydanticCustomError

from flintlm.engine.request import Usage

logger = logging.getLogger("flintlm.api")


def invalid(param: str, message: str) -> PydanticCustomError:
    """A validation error that the error handler reports as a 400 naming `param`."""
    return PydanticCustomError("invalid_param", message, {"param": param})


def check_extra_fields(extra: dict[str, Any] | None,
                       unsupported: dict[str, tuple[Any, ...]]) -> None:
    """A request's fields beyond the model: one this server does not support is a 400 naming it,
    unless its value is one of those that change nothing; unknown ones are logged and ignored."""
    extra = extra or {}
    for name, value in extra.items():
        if name in unsupported and value not in unsupported[name]:
            raise invalid(name, f"{name!r} is not supported by this server")
    ignored = sorted(set(extra) - set(unsupported))
    if ignored:
        logger.info("ignoring unknown request fields: %s", ", ".join(ignored))


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


def usage_info(usage: Usage) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


class _Response(BaseModel):
    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
