"""Server-sent events in OpenAI's framing: `data: <json>` frames, a usage chunk with empty
`choices` when asked for, then `data: [DONE]`.

Errors after the 200 went out travel in-band as `data: {"error": {...}}` followed by `[DONE]`.
`SSEResponse` closes its `Generation` whatever ends the stream (finished, failed, or the client
gone), which aborts what still runs and settles usage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flintlm.api.errors import ClientDisconnected, error_body, to_api_error
from flintlm.api.generation import raise_if_failed
from flintlm.engine.request import RequestOutput, Usage

if TYPE_CHECKING:
    from flintlm.api.generation import Generation

logger = logging.getLogger("flintlm.api")

DONE_FRAME = "data: [DONE]\n\n"


def sse_frame(payload: BaseModel | dict) -> str:
    text = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {text}\n\n"


class StreamEncoder(Protocol):
    """Turns engine outputs into one endpoint's chunk objects."""

    def opening(self) -> Iterable[BaseModel]: ...

    def chunks(self, index: int, output: RequestOutput) -> Iterable[BaseModel]: ...

    def usage_chunk(self, usage: Usage) -> BaseModel: ...


async def sse_frames(
    generation: Generation, encoder: StreamEncoder, *, include_usage: bool
) -> AsyncIterator[str]:
    try:
        for chunk in encoder.opening():
            yield sse_frame(chunk)
        async for index, output in generation.outputs():
            raise_if_failed(output, generation.is_disconnected)
            for chunk in encoder.chunks(index, output):
                yield sse_frame(chunk)
        if include_usage:
            yield sse_frame(encoder.usage_chunk(generation.usage))
    except ClientDisconnected:
        return  # nobody to tell
    except Exception as exc:
        error = to_api_error(exc)
        if error is not exc:
            logger.exception("stream of %s failed", generation.request_id)
        yield sse_frame(error_body(error.message, error.error_type, error.param, error.code))
    yield DONE_FRAME


class SSEResponse(Response):
    """A text/event-stream response that owns its generation until the last frame."""

    media_type = "text/event-stream"

    def __init__(self, generation: Generation, frames: AsyncIterator[str]):
        self.generation = generation
        self.frames = frames
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for frame in self.frames:
                await send({"type": "http.response.body", "body": frame.encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-stream (uvicorn's ClientDisconnected)
            pass
        finally:
            await self.frames.aclose()  # type: ignore[attr-defined]
            await self.generation.close()


def sse_response(
    generation: Generation, encoder: StreamEncoder, *, include_usage: bool
) -> SSEResponse:
    return SSEResponse(generation, sse_frames(generation, encoder, include_usage=include_usage))


async def respond(generation: Generation, encoder: StreamEncoder, *, stream: bool,
                  include_usage: bool) -> Response:
    """The one way a generation becomes an HTTP response: an SSE stream, or one JSON body."""
    if stream:
        return sse_response(generation, encoder, include_usage=include_usage)
    try:
        choices = await generation.collect()
    finally:
        await generation.close()
    response = encoder.response(choices, generation.usage)  # type: ignore[attr-defined]
    return Response(response.model_dump_json(), media_type="application/json")
