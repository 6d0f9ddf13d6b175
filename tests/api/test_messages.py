"""Anthropic's Messages API on a real server (embedded model, float32, greedy) with an admin key,
issued keys and a SQLite ledger, driven by the official `anthropic` SDK, unmodified; the
in-band stream error on the fake-engine server.

The SDK of 2026 has no `temperature` argument; it goes in `extra_body`, as the wire field it is.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
import sqlalchemy as sa

from tests.conftest import HANG_TIMEOUT_S
from tests.platform.served import IssuedKey, PlatformServer, platform_servers

from .conftest import FAKE_KEY, FakeServer
from .fakes import FAIL_AT_ONCE, FAIL_LATER

GREEDY = {"extra_body": {"temperature": 0}}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {"name": "get_weather", "description": "The current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}
ADD = {"name": "add", "description": "Add two integers",
       "input_schema": {"type": "object", "required": ["a", "b"], "properties": {
           "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
           "b": {"type": "integer", "minimum": -1000, "maximum": 1000}}}}
SCHEMAS = {tool["name"]: tool["input_schema"] for tool in (WEATHER, ADD)}
# The served context window: room for every request here, and small, so that a message that runs
# to the window's end (as a client asking past it gets) is a short prefill.
MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformServer]:
    path = tmp_path_factory.mktemp("store") / "flintlm.db"
    store_url = sa.URL.create("sqlite+pysqlite", database=str(path)).render_as_string()
    with platform_servers(tmp_path_factory.mktemp("messages"), store_url,
                          "--max-model-len", str(MAX_MODEL_LEN)) as [server]:
        yield server


@pytest.fixture(scope="module")
def key(served: PlatformServer) -> IssuedKey:
    return served.create_key("messages")


def _client(served: PlatformServer, secret: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.url, api_key=secret, max_retries=0,
                               timeout=HANG_TIMEOUT_S)


def _create(served: PlatformServer, key: IssuedKey, **kwargs: Any) -> Any:
    kwargs = {"model": "default", "max_tokens": 40, "messages": QUESTION, **GREEDY, **kwargs}
    return _client(served, key.secret).messages.create(**kwargs)


def _total_input(usage: Any) -> int:
    """Anthropic counts cached prompt tokens apart from `input_tokens`."""
    return int(usage.input_tokens + usage.cache_read_input_tokens)


def _count(served: PlatformServer, key: IssuedKey, **kwargs: Any) -> int:
    kwargs = {"model": "default", "messages": QUESTION, **kwargs}
    return _client(served, key.secret).messages.count_tokens(**kwargs).input_tokens


def test_create_returns_a_message(served: PlatformServer, key: IssuedKey) -> None:
    message = _create(served, key)
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "default"
    [block] = message.content
    assert block.type == "text" and "Paris" in block.text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens > 0 and message.usage.cache_creation_input_tokens == 0
    assert _total_input(message.usage) == _count(served, key)
    # Claude Code's ANTHROPIC_AUTH_TOKEN is sent as `Authorization: Bearer`.
    bearer = anthropic.Anthropic(base_url=served.url, auth_token=key.secret, max_retries=0,
                                 timeout=HANG_TIMEOUT_S)
    again = bearer.messages.create(model="default", max_tokens=40, messages=QUESTION, **GREEDY,
                                   extra_headers={"anthropic-version": "2023-06-01"})
    assert again.content == message.content


def test_max_tokens_and_stop_sequences_end_the_message(served: PlatformServer,
                                                       key: IssuedKey) -> None:
    cut = _create(served, key, max_tokens=3)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    stopped = _create(served, key, stop_sequences=["Paris"])
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "Paris")
    assert "Paris" not in "".join(block.text for block in stopped.content)


EVENT_ORDER = re.compile(r"message_start ping (content_block_start (content_block_delta )+"
                         r"content_block_stop )*message_delta message_stop")


def _event_names(served: PlatformServer, key: IssuedKey, body: dict[str, Any]) -> list[str]:
    with httpx.Client(base_url=served.url, timeout=HANG_TIMEOUT_S) as http, http.stream(
            "POST", "/v1/messages", json={**body, "stream": True},
            headers={"x-api-key": key.secret, "anthropic-version": "2023-06-01"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        names = []
        for line in response.iter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
            elif line.startswith("data: "):
                assert json.loads(line.removeprefix("data: "))["type"] == names[-1]
        return names


def _same_message(streamed: Any, created: Any) -> None:
    """Equal but for ids and what the prefix cache changed between the two runs."""
    def blocks(message: Any) -> list[tuple[Any, ...]]:
        return [(b.type, b.text) if b.type == "text" else (b.type, b.name, b.input)
                for b in message.content]

    assert blocks(streamed) == blocks(created)
    assert (streamed.stop_reason, streamed.stop_sequence) == (created.stop_reason,
                                                              created.stop_sequence)
    assert streamed.usage.output_tokens == created.usage.output_tokens
    assert _total_input(streamed.usage) == _total_input(created.usage)


def test_stream_events_in_order_and_final_message_equals_create(served: PlatformServer,
                                                                key: IssuedKey) -> None:
    names = _event_names(served, key, {"model": "default", "max_tokens": 40,
                                       "messages": QUESTION, "temperature": 0})
    assert EVENT_ORDER.fullmatch(" ".join(names)), names
    created = _create(served, key)
    with _client(served, key.secret).messages.stream(
            model="default", max_tokens=40, messages=QUESTION, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        streamed = stream.get_final_message()
    _same_message(streamed, created)
    assert text == created.content[0].text


def _tool_uses(message: Any) -> list[tuple[str, dict[str, Any]]]:
    assert message.stop_reason == "tool_use", message
    uses = [block for block in message.content if block.type == "tool_use"]
    assert uses
    for use in uses:
        assert use.id.startswith("toolu_") and isinstance(use.input, dict)
        jsonschema.validate(use.input, SCHEMAS[use.name])
    return [(use.name, use.input) for use in uses]


@pytest.mark.parametrize("prompt", ["What's the weather in Oslo?", "Add 17 and 25."])
def test_tool_choice_any_yields_valid_tool_use(served: PlatformServer, key: IssuedKey,
                                               prompt: str) -> None:
    kwargs = {"tools": [WEATHER, ADD], "tool_choice": {"type": "any"}, "max_tokens": 60,
              "messages": [{"role": "user", "content": prompt}]}
    created = _create(served, key, **kwargs)
    _tool_uses(created)
    with _client(served, key.secret).messages.stream(model="default", **kwargs,
                                                     **GREEDY) as stream:
        streamed = stream.get_final_message()
    _same_message(streamed, created)
    names = _event_names(served, key, {"model": "default", "temperature": 0, **kwargs})
    assert EVENT_ORDER.fullmatch(" ".join(names)), names
    single = _create(served, key, **{**kwargs, "tool_choice": {
        "type": "any", "disable_parallel_tool_use": True}})
    assert len(_tool_uses(single)) == 1


def test_named_tool_and_a_tool_result_round_trip(served: PlatformServer, key: IssuedKey) -> None:
    question = {"role": "user", "content": "Add 17 and 25."}
    first = _create(served, key, tools=[WEATHER, ADD], messages=[question],
                    tool_choice={"type": "tool", "name": "add"})
    [(name, arguments)] = _tool_uses(first)
    assert name == "add"
    use = first.content[-1]
    history = [question, {"role": "assistant", "content": [use.model_dump(
        include={"type", "id", "name", "input"})]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": str(arguments["a"] + arguments["b"])}]}]
    follow_up = _create(served, key, tools=[ADD], messages=history, max_tokens=24,
                        tool_choice={"type": "none"})
    assert follow_up.content and follow_up.content[0].type == "text"
    assert follow_up.stop_reason in ("end_turn", "max_tokens")
    assert _total_input(follow_up.usage) == _count(served, key, tools=[ADD], messages=history,
                                                   tool_choice={"type": "none"})


def test_a_final_assistant_message_is_continued(served: PlatformServer, key: IssuedKey) -> None:
    prefill = [*QUESTION, {"role": "assistant", "content": "The capital of France is"}]
    message = _create(served, key, messages=prefill)
    text = message.content[0].text
    assert "Paris" in text and not text.startswith("The capital")  # only the continuation
    assert _total_input(message.usage) == _count(served, key, messages=prefill)
    assert _count(served, key, messages=prefill) > _count(served, key)


def test_count_tokens_equals_input_tokens(served: PlatformServer, key: IssuedKey) -> None:
    fresh = [{"role": "user", "content": f"Spell {uuid.uuid4().hex[:8]} backwards."}]
    system = f"You are terse. Session {uuid.uuid4().hex}."  # nothing of it is cached yet
    counted = _count(served, key, messages=fresh, system=system, tools=[WEATHER])
    message = _create(served, key, messages=fresh, system=system, tools=[WEATHER], max_tokens=4)
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.input_tokens == counted
    assert _count(served, key, messages=fresh, system=system) < counted  # the tools count


def test_a_wrong_key_is_a_401_in_anthropics_envelope(served: PlatformServer) -> None:
    for secret in ("flint-sk-not-a-key", "wrong"):
        with pytest.raises(anthropic.AuthenticationError) as error:
            _client(served, secret).messages.create(model="default", max_tokens=4,
                                                    messages=QUESTION)
        assert error.value.status_code == 401
        assert error.value.body["type"] == "error"  # type: ignore[index]
        assert error.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        _client(served, "wrong").messages.count_tokens(model="default", messages=QUESTION)


def test_bad_requests_are_400s_naming_what(served: PlatformServer, key: IssuedKey) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as error:
        _create(served, key, messages=[{"role": "user", "content": [image]}])
    assert error.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "'image'" in error.value.message and "messages[0].content[0]" in error.value.message
    with httpx.Client(base_url=served.url, headers={"x-api-key": key.secret},
                      timeout=HANG_TIMEOUT_S) as http:
        for body, where in [
            ({"model": "default", "messages": QUESTION}, "max_tokens"),
            ({"model": "default", "max_tokens": 4, "messages": QUESTION, "temperature": 1.5},
             "temperature"),
            ({"model": "default", "max_tokens": 4, "messages": QUESTION,
              "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
            ({"model": "default", "max_tokens": 4, "messages": QUESTION, "tools": -97252},
             "tools"),  # not a list: was a 500 (schemathesis)
            ({"model": "default", "max_tokens": 4, "messages": QUESTION,
              "thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
            ({"model": "default", "max_tokens": 4, "messages": QUESTION, "tools": [WEATHER],
              "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
            ({"model": "default", "max_tokens": 4, "messages": [
                *QUESTION, {"role": "assistant", "content": "The capital is "}]},
             "messages[1].content"),
            ({"model": "default", "max_tokens": 4, "messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                              "content": [image]}]}]},
             "messages[0].content[0].content[0].type"),
        ]:
            response = http.post("/v1/messages", json=body)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["type"] == "invalid_request_error"
            assert response.json()["error"]["message"].startswith(where), response.text
    with pytest.raises(anthropic.NotFoundError) as missing:
        _create(served, key, model="claude-sonnet-4-5")
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_model_scoping_and_rate_limits_answer_in_anthropics_shape(
        served: PlatformServer) -> None:
    scoped = served.create_key("scoped", models=["another-model"])
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        _create(served, scoped)
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    limited = served.create_key("limited", rpm=1)
    _create(served, limited, max_tokens=2)
    with pytest.raises(anthropic.RateLimitError) as limit:
        _create(served, limited, max_tokens=2)
    assert limit.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert limit.value.response.headers.get("retry-after")
    rows = served.wait_for_ledger(limited.id, 2)
    assert sorted(row["status"] for row in rows) == ["finished", "rejected"]


def _generated_tokens(served: PlatformServer) -> float:
    text = httpx.get(f"{served.url}/metrics", timeout=HANG_TIMEOUT_S).text
    match = re.search(r'^flintlm_generation_tokens_total\{model="default"\} (\S+)$', text,
                      re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_one_ledger_row_per_request_matching_usage(served: PlatformServer) -> None:
    billed = served.create_key("billed")
    generated_before = _generated_tokens(served)
    messages = [_create(served, billed, max_tokens=5),
                _create(served, billed, tools=[ADD], tool_choice={"type": "any"}, max_tokens=60,
                        messages=[{"role": "user", "content": "Add 2 and 3."}])]
    with _client(served, billed.secret).messages.stream(
            model="default", max_tokens=6, messages=QUESTION, **GREEDY) as stream:
        messages.append(stream.get_final_message())
    _count(served, billed)  # counting is free: no row
    rows = {row["request_id"]: row for row in served.wait_for_ledger(billed.id, len(messages))}
    for message in messages:
        row = rows[message.id]
        assert row["status"] == "finished" and row["model"] == "default"
        assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (
            _total_input(message.usage), message.usage.cache_read_input_tokens,
            message.usage.output_tokens)
    # The metrics saw them too (observed as each request closes, around its ledger row).
    num_output = sum(message.usage.output_tokens for message in messages)
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while _generated_tokens(served) - generated_before < num_output:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _generated_tokens(served) - generated_before == num_output


def test_a_request_shaped_as_claude_code_sends_it(served: PlatformServer, key: IssuedKey) -> None:
    """The fields Claude Code (2.1, `--bare`) sends with every request, on its `?beta=true` URL."""
    body = {
        "model": "default", "max_tokens": 32000, "stream": True, "temperature": 0,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1;"},
                   {"type": "text", "text": "You are a helpful assistant.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?",
                                          "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": "Answer with one number."}],
        "tools": [{**WEATHER, "cache_control": {"type": "ephemeral"}}],
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
    }
    with httpx.Client(base_url=served.url, timeout=HANG_TIMEOUT_S) as http:
        counted = http.post("/v1/messages/count_tokens?beta=true", headers={
            "x-api-key": key.secret}, json={k: v for k, v in body.items()
                                            if k not in ("max_tokens", "stream")})
        assert counted.status_code == 200, counted.text
    names = _event_names(served, key, body)
    assert EVENT_ORDER.fullmatch(" ".join(names)), names


def test_max_tokens_past_the_context_window_runs_to_the_window(served: PlatformServer,
                                                               key: IssuedKey) -> None:
    """Clients ask for more than a small model's window (Claude Code: 32,000 tokens)."""
    def prompt(num_words: int) -> list[dict[str, Any]]:
        # Continued from the assistant's own start, a repetition greedy decoding keeps going.
        return [{"role": "user", "content": "Repeat: " + " ".join(["stone"] * num_words)},
                {"role": "assistant", "content": "stone stone stone"}]

    num_room = 4
    low, high = 1, 2 * MAX_MODEL_LEN  # the longest prompt that leaves num_room tokens or more
    while low < high:
        middle = (low + high + 1) // 2
        if _count(served, key, messages=prompt(middle)) + num_room <= MAX_MODEL_LEN:
            low = middle
        else:
            high = middle - 1
    num_prompt = _count(served, key, messages=prompt(low))
    message = _create(served, key, messages=prompt(low), max_tokens=32000)
    assert message.stop_reason == "model_context_window_exceeded", message
    assert _total_input(message.usage) == num_prompt
    assert num_prompt + message.usage.output_tokens == MAX_MODEL_LEN
    with pytest.raises(anthropic.BadRequestError):  # a prompt that fills the window
        _create(served, key, messages=prompt(2 * MAX_MODEL_LEN))


def test_output_config_format_is_a_json_schema_constraint(served: PlatformServer,
                                                          key: IssuedKey) -> None:
    schema = {"type": "object", "required": ["name", "age"], "additionalProperties": False,
              "properties": {"name": {"type": "string", "maxLength": 16},
                             "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
    message = _create(served, key, max_tokens=60, extra_body={
        "temperature": 0, "output_config": {"format": {"type": "json_schema", "schema": schema}}},
        messages=[{"role": "user", "content": "A person as JSON."}])
    assert message.stop_reason == "end_turn"
    jsonschema.validate(json.loads(message.content[0].text), schema)


# --- the fake engine: failures -------------------------------------------------------------


def _fake_post(fake_server: FakeServer, content: str, **body: Any) -> httpx.Response:
    with fake_server.client() as http:
        return http.post("/v1/messages", json={
            "model": fake_server.engine.model_name, "max_tokens": 8,
            "messages": [{"role": "user", "content": content}], **body})


def test_a_failure_after_the_first_byte_is_an_in_band_error_event(
        fake_server: FakeServer) -> None:
    response = _fake_post(fake_server, f"x {FAIL_LATER.decode()}", stream=True)
    assert response.status_code == 200
    events = [line.removeprefix("event: ") for line in response.text.splitlines()
              if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "error"
    assert "message_stop" not in events
    error = json.loads(response.text.rstrip().splitlines()[-1].removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "Traceback" not in response.text
    failed = _fake_post(fake_server, f"x {FAIL_AT_ONCE.decode()}")
    assert failed.status_code == 500
    assert failed.json() == {"type": "error", "error": {
        "type": "api_error", "message": failed.json()["error"]["message"]}}
    settled = [request_id for request_id, _, _ in fake_server.admission.settled]
    assert len(settled) == len(set(settled))


def test_a_draining_server_is_overloaded_in_anthropics_terms(fake_server: FakeServer) -> None:
    client = anthropic.Anthropic(base_url=fake_server.base_url, api_key=FAKE_KEY,
                                 max_retries=0, timeout=HANG_TIMEOUT_S)
    fake_server.serving.is_draining = True
    try:
        with pytest.raises(anthropic.OverloadedError) as error:
            client.messages.create(model=fake_server.engine.model_name, max_tokens=4,
                                   messages=QUESTION)
    finally:
        fake_server.serving.is_draining = False
    assert error.value.status_code == 529
    assert error.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert error.value.response.headers.get("retry-after")


def test_a_body_that_is_not_utf8_is_a_400_in_anthropics_envelope(fake_server: FakeServer
                                                                 ) -> None:
    """schemathesis found these answered 500: FastAPI's own 400 escaped the envelope."""
    with fake_server.client() as client:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            response = client.post(path, content=b'\xd5\xbb\x11\xff"\xfeR',
                                   headers={"content-type": "application/json"})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["type"] == "invalid_request_error"
