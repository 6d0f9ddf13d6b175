"""POST /v1/responses (OpenAI's Responses API) and the stored responses it keeps when asked:
GET and DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items.

A response is generated as a chat completion is (same template, constraints, tool calls,
admission, ledger row); only the envelope differs. With `store` (OpenAI's default) the finished
response and its context go to the platform's `ResponseStore`, off the event loop, before the
client hears it is done, so a `previous_response_id` right after it finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from flintlm.api.bounds import checked_params
from flintlm.api.deps import (
    AdmissionDep,
    AuthedKey,
    Credentials,
    EngineDep,
    Serving,
    check_model,
)
from flintlm.api.errors import ClientDisconnected, InvalidParam, NotFound, to_api_error
from flintlm.api.generation import Generation, raise_if_failed
from flintlm.api.guarding import guard_chat
from flintlm.api.prompts import render_chat
from flintlm.api.responses_input import chat_request, normalize_items, responses_param
from flintlm.api.responses_output import Event, ResponseBuilder
from flintlm.api.responses_protocol import (
    DeletedResponse,
    InputItemList,
    ResponseObject,
    ResponsesRequest,
)
from flintlm.api.streaming import SSEResponse
from flintlm.engine.request import InvalidRequestError
from flintlm.platform.capture import CaptureMode, effective_mode
from flintlm.platform.keys import KeyRecord
from flintlm.platform.response_store import ResponseStore, StoredResponse

logger = logging.getLogger("flintlm.api")
router = APIRouter()

def get_response_store(serving: Serving) -> ResponseStore:
    return ResponseStore.from_config(serving.platform.db, serving.config.platform)


ResponseStoreDep = Annotated[ResponseStore, Depends(get_response_store)]


@router.post("/v1/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request, serving: Serving,
                          engine: EngineDep, secret: Credentials, admission: AdmissionDep,
                          store: ResponseStoreDep) -> Response:
    # The edge as on chat: validate -> authenticate -> render off the event loop -> admit.
    # NOTE: the parameters do not depend on a previous response's items, which need the key.
    items = normalize_items(body.input)
    chat = chat_request(body, [], items)
    with _named_for_responses():
        params = await checked_params(chat, serving.config.limits, engine.tokenizer.vocab_size)
    key = await serving.admission.authenticate(secret)
    check_model(body.model, engine)
    is_stored = _is_stored(serving, key, body)
    context = await _previous_context(serving, store, key, body.previous_response_id)
    if context:
        chat = chat_request(body, context, items)
    response_id = f"resp_{uuid.uuid4().hex}"
    chat, guard = await guard_chat(serving, key, response_id, chat, param="input")
    prompt_ids = await asyncio.to_thread(render_chat, engine.tokenizer, chat.messages,
                                         tools=chat.active_tools)
    with _named_for_responses():
        ticket = await admission.admit(key, response_id, [prompt_ids], params, body.end_user,
                                       cache_salt=chat.cache_salt, prompt_param="input",
                                       guard=guard)
    generation = await Generation.start(
        engine, serving.metrics, ticket, request.receive, [prompt_ids], ticket.admitted_params,
        priority=chat.priority, cache_salt=ticket.cache_salt, guard=guard)
    skeleton = _skeleton(response_id, engine.model_name, body)
    skeleton.store = is_stored
    builder = ResponseBuilder(skeleton,
                              parses_tool_calls=bool(chat.active_tools))

    async def keep(response: ResponseObject) -> None:
        if is_stored:
            await serving.admission.run(store.save, key.id, response.id,
                                        response.model_dump(mode="json"),
                                        context + items)

    if body.stream:
        return SSEResponse(generation, _events(generation, builder, keep))
    try:
        results = await generation.collect()
    finally:
        await generation.close()
    builder.feed(results[0].text)
    builder.close(results[0].finish_reason, generation.usage)
    await keep(builder.response)
    return Response(builder.response.model_dump_json(), media_type="application/json")


@contextlib.contextmanager
def _named_for_responses() -> Iterator[None]:
    """Chat's checks raise with chat's parameter names; the client wrote Responses' ones."""
    try:
        yield
    except (InvalidParam, InvalidRequestError) as exc:
        exc.param = exc.param and responses_param(exc.param)
        raise


def _is_stored(serving: Serving, key: KeyRecord, body: ResponsesRequest) -> bool:
    """Whether the response is kept: `store` (default true, as OpenAI's), except for a key whose
    capture mode is "never", which keeps nothing (an explicit `store: true` is a 400, as on
    chat)."""
    mode = effective_mode(key.capture, CaptureMode(serving.config.platform.capture))
    if mode is not CaptureMode.NEVER:
        return body.store
    if body.store and "store" in body.model_fields_set:
        raise InvalidParam("this API key does not allow storing responses (its capture mode "
                           "is 'never'); send store: false", param="store")
    return False


async def _previous_context(serving: Serving, store: ResponseStore, key: KeyRecord,
                            response_id: str | None) -> list[dict[str, Any]]:
    """What the previous response saw and said, as input items; none without one."""
    if response_id is None:
        return []
    previous = await _stored(serving, store, key, response_id, param="previous_response_id")
    return previous.context + previous.response["output"]


async def _stored(serving: Serving, store: ResponseStore, key: KeyRecord, response_id: str,
                  param: str | None = None) -> StoredResponse:
    stored = await serving.admission.run(store.get, key.id, response_id)
    if stored is None:  # NOTE: another key's response is as absent as an unknown one
        raise NotFound(f"no response with id {response_id!r} (responses are kept only with "
                       "store: true, for a limited time, and for the key that created them)",
                       param=param)
    return stored


def _skeleton(response_id: str, model: str, body: ResponsesRequest) -> ResponseObject:
    """The response object as it is known before any text: echoes the request's settings."""
    text = body.text.model_dump(mode="json", by_alias=True, exclude_none=True) if (
        body.text and body.text.format) else {"format": {"type": "text"}}
    tool_choice = body.tool_choice or ("auto" if body.tools else "none")
    return ResponseObject(
        id=response_id, status="in_progress", model=model, instructions=body.instructions,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        max_output_tokens=body.max_output_tokens, temperature=body.temperature,
        top_p=body.top_p, tool_choice=tool_choice, tools=body.tools or [], text=text,
        metadata=body.metadata or {}, store=body.store, user=body.user)


def _frame(event: Event) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


async def _events(generation: Generation, builder: ResponseBuilder,
                  keep: Callable[[ResponseObject], Awaitable[None]]) -> AsyncIterator[str]:
    """The Responses event stream; a fault after the first byte ends it with `error` and
    `response.failed`."""
    try:
        for event in builder.opening():
            yield _frame(event)
        async for _, output in generation.outputs():
            raise_if_failed(output, generation.is_disconnected)
            for event in builder.feed(output.new_text):
                yield _frame(event)
            if output.finish_reason is not None:
                for event in builder.close(output.finish_reason.value, generation.usage):
                    yield _frame(event)
        await keep(builder.response)
        yield _frame(builder.terminal())
    except ClientDisconnected:
        return  # nobody to tell
    except Exception as exc:
        error = to_api_error(exc)
        if error is not exc:
            logger.exception("stream of %s failed", generation.request_id)
        for event in builder.failure(error.code or error.error_type, error.message, error.param):
            yield _frame(event)


@router.get("/v1/responses/{response_id}", response_model=None)
async def get_response(response_id: str, serving: Serving, key: AuthedKey,
                       store: ResponseStoreDep, stream: bool = False) -> Response:
    if stream:
        raise InvalidParam("streaming a stored response is not supported", param="stream")
    stored = await _stored(serving, store, key, response_id)
    return Response(json.dumps(stored.response), media_type="application/json")


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, serving: Serving, key: AuthedKey,
                          store: ResponseStoreDep) -> DeletedResponse:
    if not await serving.admission.run(store.delete, key.id, response_id):
        raise NotFound(f"no response with id {response_id!r}")
    return DeletedResponse(id=response_id)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str, serving: Serving, key: AuthedKey, store: ResponseStoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc", after: str | None = None,
) -> InputItemList:
    """The items the model saw for this response (a previous response's included), newest
    first unless `order=asc`, `limit` at a time after the item `after`."""
    items = (await _stored(serving, store, key, response_id)).context
    if order == "desc":
        items = items[::-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidParam(f"no input item with id {after!r} in this response",
                               param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return InputItemList(data=page, first_id=page[0].get("id") if page else None,
                         last_id=page[-1].get("id") if page else None,
                         has_more=len(items) > limit)
