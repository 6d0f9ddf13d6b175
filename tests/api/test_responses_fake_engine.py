"""/v1/responses against `FakeEngine`: what reaches the engine, and a fault after the first byte
(`error`, then `response.failed`), with its one settled ledger entry."""

from __future__ import annotations

import json

import httpx

from tests.api.conftest import FakeServer
from tests.api.fakes import SECRET


def _events(response: httpx.Response) -> list[dict]:
    events = []
    for frame in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "data" in lines:
            event = json.loads(lines["data"])
            assert lines.get("event") == event["type"]  # SSE's event name is the event's type
            events.append(event)
    return events


def test_every_honoured_param_reaches_the_engine(fake_server: FakeServer) -> None:
    body = {"model": "fake", "input": "hi", "instructions": "be brief", "max_output_tokens": 7,
            "temperature": 0.5, "top_p": 0.9, "stop": ["\n\n"], "top_k": 3, "seed": 11,
            "min_tokens": 1, "store": False, "metadata": {"a": "b"}, "user": "u1",
            "tool_choice": "auto", "tools": []}
    with fake_server.client() as client:
        response = client.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    submitted = fake_server.engine.submitted[-1]
    params = submitted.params
    assert (params.max_tokens, params.temperature, params.top_p) == (7, 0.5, 0.9)
    assert (params.stop, params.top_k, params.seed, params.min_tokens) == (["\n\n"], 3, 11, 1)
    prompt = bytes(t for t in submitted.prompt_token_ids if t < 256).decode()
    assert prompt == "<system>be brief\n<user>hi\n<assistant>"
    assert response.json()["metadata"] == {"a": "b"}


def test_a_fault_after_the_first_byte_ends_the_stream_with_failed(
        fake_server: FakeServer) -> None:
    settled_before = len(fake_server.admission.settled)
    with fake_server.client() as client:
        response = client.post("/v1/responses", json={"input": "fail-later", "stream": True})
    assert response.status_code == 200
    events = _events(response)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:3]] == [
        "response.created", "response.in_progress", "response.output_item.added"]
    error, failed = events[-2:]
    assert error["type"] == "error" and SECRET not in error["message"]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == error["code"]
    [(request_id, _, status)] = fake_server.admission.settled[settled_before:]
    assert request_id == failed["response"]["id"] and status.value == "failed"
