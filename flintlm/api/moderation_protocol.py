"""POST /v1/moderations in OpenAI's wire format (`CreateModerationRequest` / `...Response`).

`input` is a string, a list of strings (one result each) or a list of content parts; text parts
are moderated together as one input (one result, as OpenAI does), image parts are refused with
a 400 naming them, since every backend here reads text only. Unknown fields are a 400.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flintlm.api.protocol import invalid

MAX_INPUTS = 2048
"""Most strings one request may moderate (OpenAI's embeddings cap; moderation states none)."""


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] | list[dict[str, Any]]
    model: str | None = None

    @model_validator(mode="after")
    def _check_input(self) -> ModerationRequest:
        if isinstance(self.input, list):
            if not self.input:
                raise invalid("input", "input must be a string or a non-empty list")
            if len(self.input) > MAX_INPUTS:
                raise invalid("input", f"input has {len(self.input)} items; at most "
                                       f"{MAX_INPUTS} are accepted per request")
            if isinstance(self.input[0], dict):
                _check_parts(self.input)
        return self

    def texts(self) -> list[str]:
        """The texts to classify, one per result."""
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], dict):
            return ["\n".join(part["text"] for part in self.input)]
        return list(self.input)


def _check_parts(parts: list[dict[str, Any]]) -> None:
    for index, part in enumerate(parts):
        kind = part.get("type")
        if kind == "image_url":
            raise invalid(f"input[{index}]", f"input[{index}] is an image_url part; this server "
                          "moderates text only (send text parts or strings)")
        if kind != "text" or not isinstance(part.get("text"), str) or set(part) - {"type",
                                                                                   "text"}:
            raise invalid(f"input[{index}]", f"input[{index}] must be {{'type': 'text', "
                          "'text': '...'}} (or an image_url part, which is not supported)")


class ModerationResultBody(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]] = Field(
        description="Per category, the input types it was applied to: ['text'] for the "
                    "categories the backend judges, [] for those it cannot judge.")


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResultBody]
