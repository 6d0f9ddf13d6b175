"""The request fields chat and completions share, and their conversion to engine
`SamplingParams`. Every field is one of three kinds: honoured (declared here or in the endpoint's
request), known to OpenAI but not honoured (listed in `UNSUPPORTED_*`, a 400 naming it unless it
carries its no-op value), or unknown to both (accepted, ignored and logged). Structured-output
specs are compiled to check them in `sampling_params()`, not at parse time, so that the edge can
run it off the event loop.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from flintlm.api import constraints
from flintlm.api.protocol.common import check_extra_fields, invalid
from flintlm.engine.request import InvalidRequestError, SamplingParams

# OpenAI fields we do not honour yet -> the values that mean "not used" (accepted as no-ops).
UNSUPPORTED_COMMON: dict[str, tuple[Any, ...]] = {
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "metadata": (None, {}),
    "prompt_cache_key": (None,),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # NOTE: constrained decoding enforces the schema either way


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` object: exactly one of its fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    json_: str | dict[str, Any] | None = Field(default=None, alias="json")
    regex: str | None = None
    grammar: str | None = None
    choice: list[str] | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None


class _GenerationRequest(BaseModel):
    """Fields shared by chat and completions: OpenAI's sampling knobs plus our extensions."""

    model_config = ConfigDict(extra="allow")
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED_COMMON

    model: str | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # NOTE: OpenAI's range, a signed 64-bit integer; torch's generators take no more.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    # Extensions (vLLM's names).
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: int = 0
    cache_salt: str | None = None
    # Structured output: OpenAI's field, then vLLM's (older guided_* and newer object).
    response_format: ResponseFormat | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    guided_choice: list[str] | None = None
    structured_outputs: StructuredOutputs | None = None
    _constraint: constraints.Constraint | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_fields(self) -> _GenerationRequest:
        check_extra_fields(self.model_extra, self.unsupported)
        for token_id in self.logit_bias or {}:
            if not token_id.lstrip("-").isdigit():
                raise invalid("logit_bias", f"logit_bias keys must be token ids, got {token_id!r}")
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options", "stream_options is only allowed when stream is true")
        if self.cache_salt is not None and not self.cache_salt:
            raise invalid("cache_salt", "cache_salt must not be empty; leave it out instead")
        return self

    @property
    def has_constraint(self) -> bool:
        """Whether the request asks for structured output (its check compiles a grammar)."""
        return bool(self.response_format is not None or self.structured_outputs is not None
                    or any(getattr(self, name) is not None for name in constraints.GUIDED_FIELDS)
                    or self._has_tools())

    def _has_tools(self) -> bool:
        return False

    @property
    def num_prompts(self) -> int:
        return 1

    def _checked_constraint(self) -> constraints.Constraint | None:
        """The one structured-output constraint, checked (xgrammar compiles it: call this off
        the event loop when `has_constraint`); InvalidRequestError names the param."""
        if self._constraint is not None or not self.has_constraint:
            return self._constraint
        guided = {name: getattr(self, name) for name in constraints.GUIDED_FIELDS
                  if getattr(self, name) is not None}
        try:
            constraint = constraints.from_request(self.response_format, guided,
                                                  self.structured_outputs)
        except InvalidRequestError as exc:
            raise InvalidRequestError(exc.message, exc.param or "response_format") from exc
        tool_constraint = self._tool_constraint()
        if constraint is not None and tool_constraint is not None:
            raise InvalidRequestError(f"{constraint.param} cannot be combined with tools unless "
                                      "tool_choice is 'none'", constraint.param)
        self._constraint = constraint or tool_constraint
        return self._constraint

    def _tool_constraint(self) -> constraints.Constraint | None:
        """Chat: the constraint its tools put on the output (completions have none)."""
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def end_user(self) -> str | None:
        """Who the caller says the end user is; logged with the request for abuse tracing."""
        return self.safety_identifier or self.user

    def _logit_bias(self) -> dict[int, float] | None:
        if self.logit_bias is None:
            return None
        return {int(token_id): bias for token_id, bias in self.logit_bias.items()}

    def _common_params(self, max_tokens: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        constraint = self._checked_constraint()
        return SamplingParams(
            n=self.n,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=self._logit_bias(),
            seed=self.seed,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            skip_special_tokens=self.skip_special_tokens,
            **(constraint.fields if constraint is not None else {}),
        )
