"""POST /v1/responses through the official `openai` client and the OpenAI Agents SDK, unmodified,
against a real server on the platform (SQLite store, keys issued by the admin API): output items,
stream events, function calls, structured output, stored responses per key, and the ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.conftest import HANG_TIMEOUT_S
from tests.platform.served import IssuedKey, PlatformServer

QUESTION = "What's the weather in Oslo?"
INSTRUCTIONS = "You are a helpful assistant. Answer briefly."
WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False},
}
# Greedy and short; ends by itself well within the limit (the model stops after ~25 tokens).
GREEDY: dict[str, Any] = {"model": "default", "temperature": 0, "max_output_tokens": 64}


@pytest.fixture(scope="module")
def served(platform_server: PlatformServer) -> PlatformServer:
    return platform_server


@pytest.fixture(scope="module")
def key(served: PlatformServer) -> IssuedKey:
    return served.create_key("responses")


@pytest.fixture(scope="module")
def client(served: PlatformServer, key: IssuedKey) -> openai.OpenAI:
    return served.openai(key)


def _collapse(types: list[str]) -> list[str]:
    """Event types with runs of the same delta event collapsed into one."""
    collapsed: list[str] = []
    for kind in types:
        if not (collapsed and kind == collapsed[-1] and kind.endswith(".delta")):
            collapsed.append(kind)
    return collapsed


def test_create_returns_a_message_and_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(input="Say hi.", instructions=INSTRUCTIONS,
                                       metadata={"case": "create"}, **GREEDY)
    assert response.id.startswith("resp_")
    assert response.status == "completed" and response.incomplete_details is None
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed"
    assert [part.type for part in message.content] == ["output_text"]
    assert response.output_text.strip()
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and 0 < usage.output_tokens < 64
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens <= usage.input_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert response.instructions == INSTRUCTIONS and response.metadata == {"case": "create"}


def test_a_response_cut_by_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="default", input="Tell me a long story.",
                                       max_output_tokens=5, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 5
    assert response.output[0].status == "incomplete"


def test_stream_sends_every_event_in_order_and_the_same_text(client: openai.OpenAI) -> None:
    with client.responses.stream(input="Say hi.", instructions=INSTRUCTIONS, **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert _collapse([event.type for event in events]) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas == done.text == final.output_text
    assert events[0].response.status == "in_progress" and final.status == "completed"
    whole = client.responses.create(input="Say hi.", instructions=INSTRUCTIONS, **GREEDY)
    assert final.output_text == whole.output_text
    assert final.usage is not None and whole.usage is not None
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_a_function_call_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(input=QUESTION, tools=[WEATHER_TOOL],
                                    tool_choice="required", parallel_tool_calls=False, **GREEDY)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER_TOOL["parameters"])
    follow_up = client.responses.create(
        input=[{"role": "user", "content": QUESTION}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id,
                "output": "Sunny, 21 C"}],
        tools=[WEATHER_TOOL], tool_choice="none", **GREEDY)
    assert [item.type for item in follow_up.output] == ["message"]
    assert follow_up.output_text.strip()
    alone = client.responses.create(input=QUESTION, tools=[WEATHER_TOOL], tool_choice="none",
                                    model="default", max_output_tokens=1)
    assert follow_up.usage is not None and alone.usage is not None
    assert follow_up.usage.input_tokens > alone.usage.input_tokens  # the call and its output


def test_a_streamed_function_call_matches_the_non_streamed_one(client: openai.OpenAI) -> None:
    request = {"input": QUESTION, "tools": [WEATHER_TOOL],
               "tool_choice": {"type": "function", "name": "get_weather"}, **GREEDY}
    events = list(client.responses.create(stream=True, **request))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert _collapse([event.type for event in events]) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    [streamed] = events[-1].response.output
    [whole] = client.responses.create(**request).output
    assert deltas == done.arguments == streamed.arguments == whole.arguments
    assert streamed.name == whole.name == "get_weather"


def test_text_format_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    response = client.responses.create(
        input="Describe Oslo's weather as JSON.", max_output_tokens=48, model="default",
        temperature=0, text={"format": {"type": "json_schema", "name": "weather",
                                        "schema": schema, "strict": True}})
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


def test_previous_response_id_continues_a_stored_response(client: openai.OpenAI) -> None:
    first = client.responses.create(input="My name is Ada.", store=True, **GREEDY)
    second = client.responses.create(input="What is my name?", previous_response_id=first.id,
                                     **GREEDY)
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # The model saw the first input, the first output, then the new input (newest first here).
    items = list(client.responses.input_items.list(second.id))
    assert [item.type for item in items] == ["message", "message", "message"]
    assert items[1].id == first.output[0].id
    assert items[2].content[0].text == "My name is Ada."
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(input="Again?", previous_response_id=first.id, **GREEDY)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(input="Say hi.", store=False, max_output_tokens=4,
                                       model="default")
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(input="More.", previous_response_id=response.id, **GREEDY)


def test_another_keys_response_is_not_found(served: PlatformServer,
                                            client: openai.OpenAI) -> None:
    mine = client.responses.create(input="Say hi.", max_output_tokens=4, model="default")
    other = served.openai(served.create_key("other"))
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError) as refused:
        other.responses.create(input="More.", previous_response_id=mine.id, **GREEDY)
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert client.responses.retrieve(mine.id).id == mine.id


@pytest.mark.parametrize(("request_fields", "param", "named"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "input[0].content[0].type", "input_image"),
    ({"tool_choice": "required"}, "tool_choice", "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}},
     "text.format.schema", "schema"),
    ({"reasoning": {"effort": "high"}}, "reasoning.effort", "reasoning.effort"),
    ({"include": ["message.output_text.logprobs"]}, "include", "message.output_text.logprobs"),
    ({"max_tokens": 5}, "max_tokens", "max_output_tokens"),
])
def test_what_is_not_supported_is_a_400_naming_it(client: openai.OpenAI,
                                                  request_fields: dict[str, Any], param: str,
                                                  named: str) -> None:
    fields = {"model": "default", "input": "Hi", **request_fields}
    extra = {k: fields.pop(k) for k in ("max_tokens",) if k in fields}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(**fields, extra_body=extra)
    body = refused.value.body
    assert isinstance(body, dict) and body["param"] == param, body
    assert named in body["message"]


def test_one_ledger_row_per_request_with_the_same_counts_as_chat(
        served: PlatformServer) -> None:
    key = served.create_key("ledger")
    client = served.openai(key)
    exact = {"temperature": 0, "extra_body": {"ignore_eos": True}}
    chat = client.chat.completions.create(
        model="default", max_tokens=6, messages=[{"role": "system", "content": INSTRUCTIONS},
                                                 {"role": "user", "content": QUESTION}], **exact)
    response = client.responses.create(model="default", instructions=INSTRUCTIONS,
                                       input=QUESTION, max_output_tokens=6, **exact)
    streamed = list(client.responses.create(model="default", instructions=INSTRUCTIONS,
                                            input=QUESTION, max_output_tokens=6, stream=True,
                                            **exact))
    streamed_id = streamed[-1].response.id
    with pytest.raises(openai.BadRequestError):  # refused before admission: no row
        client.responses.create(model="default", input="Hi", tools=[{"type": "file_search"}])
    rows = {row["request_id"]: row for row in served.wait_for_ledger(key.id, 3)}
    assert set(rows) == {chat.id, response.id, streamed_id}
    assert chat.usage is not None and response.usage is not None
    for request_id, usage in ((response.id, response.usage),
                              (streamed_id, streamed[-1].response.usage)):
        row = rows[request_id]
        assert row["status"] == "finished"
        assert row["prompt_tokens"] == usage.input_tokens == chat.usage.prompt_tokens
        assert row["completion_tokens"] == usage.output_tokens == chat.usage.completion_tokens
        assert row["cached_tokens"] == usage.input_tokens_details.cached_tokens


def test_rate_limits_apply_as_on_chat(served: PlatformServer) -> None:
    key = served.create_key("limited", rpm=1)
    client = served.openai(key)
    client.responses.create(model="default", input="Hi", max_output_tokens=2)
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="default", input="Hi", max_output_tokens=2)
    statuses = sorted(row["status"] for row in served.wait_for_ledger(key.id, 2))
    assert statuses == ["finished", "rejected"]


async def test_the_agents_sdk_runs_a_tool_loop_to_a_final_answer(
        served: PlatformServer, key: IssuedKey) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # no trace export: nothing leaves the machine
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        cities.append(city)
        return f"Sunny, 21 C in {city}"

    client = served.async_openai(key)
    # NOTE: "required" makes the tiny model call the tool first; the SDK then resets the tool
    # choice (reset_tool_choice), so the next turn may answer in text and the loop ends.
    agent = Agent(name="weather", instructions="You answer questions about the weather.",
                  model=OpenAIResponsesModel(model="default", openai_client=client),
                  tools=[get_weather],
                  model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False,
                                               temperature=0, max_tokens=60))
    result = await Runner.run(agent, QUESTION, max_turns=4)
    await client.close()
    assert cities == ["Oslo"]
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert isinstance(result.final_output, str) and result.final_output.strip()


def test_a_request_shaped_as_codex_sends_it_streams_an_answer(served: PlatformServer,
                                                              key: IssuedKey) -> None:
    """The fields Codex CLI sends (captured from codex-cli 0.171 with README's config)."""
    body = {
        "model": "default", "stream": True, "store": False, "tool_choice": "auto",
        "parallel_tool_calls": True, "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "thread-1",
        "client_metadata": {"turn_id": "t1"}, "max_output_tokens": 16,
        "tools": [{"type": "function", "name": "exec_command", "strict": False,
                   "description": "Runs a shell command.",
                   "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                                  "required": ["cmd"], "additionalProperties": False}}],
        "input": [{"type": "message", "role": "developer",
                   "content": [{"type": "input_text", "text": "You are a coding agent."}]},
                  {"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "Say hi."}]}],
    }
    with served.http(key) as http:
        response = http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    frames = [f for f in response.text.split("\n\n") if f.strip()]
    last = json.loads(frames[-1].split("data: ", 1)[1])
    assert last["type"] in ("response.completed", "response.incomplete")
    assert last["response"]["output"] and last["response"]["store"] is False


def test_the_readme_agents_sdk_snippet_runs_as_printed(served: PlatformServer,
                                                       key: IssuedKey) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### Agents: the Responses API"):]
    snippet = section[section.index("```python\n") + len("```python\n"):]
    snippet = snippet[:snippet.index("```")]
    assert 'base_url="http://127.0.0.1:8000/v1", api_key="none"' in snippet
    # Only the address and the key differ: this server has its own port and requires keys.
    snippet = snippet.replace("http://127.0.0.1:8000", served.url).replace(
        'api_key="none"', f'api_key="{key.secret}"')
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
