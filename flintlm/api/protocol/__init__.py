"""OpenAI's wire format as pydantic models: requests, responses, stream chunks, errors.

Request models validate shapes and cross-field rules at parse time and turn into engine
`SamplingParams` with `sampling_params()`. Range checks live in `SamplingParams.validate` so the
API and the offline `LLM` share them; `api/bounds.py` runs them, with the server's caps, once per
request. One module per job, each importing only those above it:
- `common.py`: the `invalid` 400 helper, usage, the response envelope, the error body.
- `generation_request.py`: the fields chat and completions share, `UNSUPPORTED_COMMON`, the
  structured-output specs, and the conversion to `SamplingParams`.
- `messages.py`: chat messages and tool definitions, with their per-message rules.
- `chat.py`, `completions.py`, `models.py`, `tokenize.py`: one endpoint's shapes each.
Import from this package; its names are the ones the single module `protocol.py` had.
"""

from __future__ import annotations

from flintlm.api.protocol.chat import (
    UNSUPPORTED_CHAT,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatResponseMessage,
    ChatTokenLogprob,
    FunctionDelta,
    ToolCallDelta,
    TopLogprob,
)
from flintlm.api.protocol.chat import _OmitNone as _OmitNone
from flintlm.api.protocol.common import (
    ErrorInfo,
    ErrorResponse,
    PromptTokensDetails,
    UsageInfo,
    check_extra_fields,
    invalid,
    usage_info,
)
from flintlm.api.protocol.common import _Response as _Response
from flintlm.api.protocol.completions import (
    UNSUPPORTED_COMPLETION,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from flintlm.api.protocol.generation_request import (
    UNSUPPORTED_COMMON,
    JsonSchemaSpec,
    ResponseFormat,
    StreamOptions,
    StructuredOutputs,
)
from flintlm.api.protocol.generation_request import _GenerationRequest as _GenerationRequest
from flintlm.api.protocol.messages import (
    ChatMessage,
    ContentPart,
    FunctionCall,
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
    ToolCall,
    ToolDefinition,
)
from flintlm.api.protocol.messages import _check_message as _check_message
from flintlm.api.protocol.models import ModelCard, ModelList
from flintlm.api.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

__all__ = [
    # common
    "invalid", "check_extra_fields", "usage_info", "PromptTokensDetails", "UsageInfo",
    "ErrorInfo", "ErrorResponse",
    # generation_request
    "UNSUPPORTED_COMMON", "StreamOptions", "JsonSchemaSpec", "ResponseFormat",
    "StructuredOutputs",
    # messages
    "ContentPart", "FunctionCall", "ToolCall", "ChatMessage", "FunctionDefinition",
    "ToolDefinition", "NamedFunction", "NamedToolChoice",
    # chat
    "UNSUPPORTED_CHAT", "ChatCompletionRequest", "FunctionDelta", "ToolCallDelta", "ChatDelta",
    "TopLogprob", "ChatTokenLogprob", "ChatLogprobs", "ChatResponseMessage", "ChatChoice",
    "ChatChunkChoice", "ChatCompletionResponse", "ChatCompletionChunk",
    # completions
    "UNSUPPORTED_COMPLETION", "CompletionRequest", "CompletionLogprobs", "CompletionChoice",
    "CompletionResponse",
    # models
    "ModelCard", "ModelList",
    # tokenize
    "TokenizeRequest", "TokenizeResponse", "DetokenizeRequest", "DetokenizeResponse",
]
