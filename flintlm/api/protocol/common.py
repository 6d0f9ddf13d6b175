"""What every OpenAI endpoint shares: the `invalid` 400 helper, the response envelope, usage and
the error body. It imports no other protocol module, so every one of them can import it.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field
from pydantic_core import PydanticCustomError

from flintlm.engine.request import Usage


def invalid(param: str, message: str) -> PydanticCustomError:
    """A validation error that the error handler reports as a 400 naming `param`."""
    return PydanticCustomError("invalid_param", message, {"param": param})


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
