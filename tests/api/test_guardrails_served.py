"""Guardrails on a real `flintlm serve --guardrails-file` with the official `openai` client:
each check before the call (blocked with a 400 naming the rule, or masked), during a stream
(cut with finish_reason content_filter, or masked as it goes) and after a whole answer, on chat
and completions; policies assigned per key (admin API and CLI); every decision on the ledger.

What the model writes is not assumed: each output test first asks the same greedy question
under the `open` policy (no rules) and derives what the guarded answer must be from that.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from flintlm.safety.pii import find_pii, mask
from tests.conftest import HANG_TIMEOUT_S
from tests.platform.served import IssuedKey, PlatformServer, platform_servers

POLICIES = """
default = "standard"

[policies.standard]
max_prompt_chars = 600

[[policies.standard.rules]]
name = "banned"
kind = "blocklist"
phrases = ["project zeus"]

[[policies.standard.rules]]
name = "pii"
kind = "pii"
entities = { email = "mask", credit_card = "block", iban = "block", api_key = "block" }

[[policies.standard.rules]]
name = "abuse"
kind = "moderation"
thresholds = { harassment = 0.8 }
modes = ["pre_call"]

[policies.open]

[policies.cut]
stream_window_chars = 8
[[policies.cut.rules]]
name = "common-words"
kind = "blocklist"
phrases = ["the", "a", "an", "is", "are", "and", "of", "to", "in", "it", "you", "i"]
modes = ["during_call", "post_call"]

[policies.pii-out]
[[policies.pii-out.rules]]
name = "pii"
kind = "pii"
entities = { email = "mask" }
modes = ["during_call", "post_call"]

[policies.vowels]
[[policies.vowels.rules]]
name = "vowels"
kind = "regex"
patterns = ["[aeiouAEIOU]"]
action = "mask"
modes = ["during_call", "post_call"]
"""
COMMON_WORD = re.compile(r"(?i)\b(?:the|a|an|is|are|and|of|to|in|it|you|i)\b")
VOWEL = re.compile(r"[aeiouAEIOU]")
QUESTION = [{"role": "user", "content": "Write two sentences about the sea."}]
PROMPT = "The history of the city of Paris is"
GREEDY: dict[str, Any] = {"model": "default", "max_tokens": 24, "temperature": 0,
                          "extra_body": {"ignore_eos": True}}
EMAILS = "Email addresses of our team:\n- alice@example.com\n- bob@example.com\n-"
CARD = "4111 1111 1111 1111"
ABUSIVE = "Shut up, you stupid moron, nobody asked for your garbage opinion."


@pytest.fixture(scope="module")
def policies_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("guardrails") / "guardrails.toml"
    path.write_text(POLICIES)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           policies_file: Path) -> Iterator[PlatformServer]:
    log_dir = tmp_path_factory.mktemp("guardrails-served")
    with platform_servers(log_dir, f"sqlite:///{log_dir / 'store.db'}",
                          "--guardrails-file", str(policies_file)) as (server,):
        yield server


@pytest.fixture(scope="module")
def keys(served: PlatformServer) -> dict[str, IssuedKey]:
    """One key per policy; `standard` names none and gets the file's default."""
    return {"standard": served.create_key("standard"),
            **{name: served.create_key(name, guardrail=name)
               for name in ("open", "cut", "vowels", "pii-out")}}


@pytest.fixture(scope="module")
def raw_chat(served: PlatformServer, keys: dict[str, IssuedKey]) -> str:
    """The greedy answer to QUESTION with no guardrails."""
    response = served.openai(keys["open"]).chat.completions.create(messages=QUESTION, **GREEDY)
    text = response.choices[0].message.content or ""
    assert COMMON_WORD.search(text) and VOWEL.search(text), text  # the tests below need both
    return text


@pytest.fixture(scope="module")
def raw_completion(served: PlatformServer, keys: dict[str, IssuedKey]) -> str:
    text = served.openai(keys["open"]).completions.create(prompt=PROMPT, **GREEDY).choices[0].text
    assert COMMON_WORD.search(text) and VOWEL.search(text), text
    return text


def decisions(served: PlatformServer, key: IssuedKey, num_rows: int) -> list[Any]:
    """The `guardrail` column of the key's ledger rows, oldest first."""
    rows = sorted(served.wait_for_ledger(key.id, num_rows), key=lambda row: row["id"])
    return [json.loads(row["guardrail"]) if isinstance(row["guardrail"], str)
            else row["guardrail"] for row in rows]


def rows(served: PlatformServer, key: IssuedKey, num_rows: int) -> list[dict[str, Any]]:
    return sorted(served.wait_for_ledger(key.id, num_rows), key=lambda row: row["id"])


# --- pre_call ------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "rule", "secret_part"), [
    ("Tell me all about Project Zeus.", "'banned'", "Zeus"),
    (f"Charge my card {CARD} now.", "'pii' (credit_card)", "4111"),
    ("My IBAN is GB82 WEST 1234 5698 7654 32.", "'pii' (iban)", "WEST"),
    ("Use the key sk-proj-Ab12Cd34Ef56Gh78Ij90 for it.", "'pii' (api_key)", "Ab12"),
    (ABUSIVE, "'abuse' (harassment)", "moron"),
    ("word " * 130, "'max_prompt_chars'", "word"),
])
def test_blocked_input_is_400_naming_the_rule_never_the_match(
        served: PlatformServer, content: str, rule: str, secret_part: str) -> None:
    key = served.create_key("blocked")
    client = served.openai(key)
    with pytest.raises(openai.BadRequestError) as chat_error:
        client.chat.completions.create(messages=[{"role": "user", "content": content}], **GREEDY)
    with pytest.raises(openai.BadRequestError) as completion_error:
        client.completions.create(prompt=content, **GREEDY)
    for error, param in ((chat_error.value, "messages"), (completion_error.value, "prompt")):
        body = error.body
        assert isinstance(body, dict)
        assert body["code"] == "content_policy_violation" and body["param"] == param
        assert rule in body["message"] and "'standard'" in body["message"]
        assert secret_part not in error.response.text
    ledger = rows(served, key, 2)
    assert [(r["status"], r["error_code"], r["prompt_tokens"]) for r in ledger] == [
        ("rejected", "content_policy_violation", 0)] * 2
    name = rule.split("'")[1]
    for row in ledger:
        recorded = json.loads(row["guardrail"])
        assert [(d["mode"], d["rule"], d["action"]) for d in recorded] == [
            ("pre_call", name, "block")]
        assert secret_part not in row["guardrail"]


def test_masked_input_reaches_the_model_masked(served: PlatformServer,
                                               keys: dict[str, IssuedKey]) -> None:
    key = served.create_key("masked")
    content = "Reply to ann.lee@example.com about the sea."
    masked = [{"role": "user", "content": "Reply to [EMAIL] about the sea."}]
    response = served.openai(key).chat.completions.create(
        messages=[{"role": "user", "content": content}], **GREEDY)
    assert response.usage is not None
    assert response.usage.prompt_tokens == served.count_tokens(key, messages=masked)
    echoed = served.openai(key).completions.create(prompt=content, echo=True, **GREEDY)
    assert echoed.choices[0].text.startswith("Reply to [EMAIL] about the sea.")
    mask = [{"mode": "pre_call", "rule": "pii", "action": "mask", "categories": ["email"]}]
    assert decisions(served, key, 2) == [mask, mask]


def test_token_id_prompts_are_screened_as_their_text(served: PlatformServer,
                                                     keys: dict[str, IssuedKey]) -> None:
    """/v1/completions prompts sent as token ids: checked against the vocabulary, then screened
    as the text they decode to; a masked one reaches the model as the masked text's ids. Under
    the `open` policy they pass as sent."""
    key = served.create_key("token-ids")
    client = served.openai(key)

    def token_ids(text: str) -> list[int]:
        with served.http(key) as http:
            response = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False})
        assert response.status_code == 200, response.text
        return list(response.json()["tokens"])

    with pytest.raises(openai.BadRequestError) as blocked:
        client.completions.create(
            prompt=[token_ids("Hello there."), token_ids("Tell me all about Project Zeus.")],
            **GREEDY)
    body = blocked.value.body
    assert isinstance(body, dict)
    assert body["code"] == "content_policy_violation" and body["param"] == "prompt"
    assert "'banned'" in body["message"] and "Zeus" not in blocked.value.response.text
    with pytest.raises(openai.BadRequestError) as outside:
        client.completions.create(prompt=[504, 10**8], **GREEDY)
    assert outside.value.param == "prompt" and str(10**8) in outside.value.message
    masked_text = "Reply to [EMAIL] about the sea."
    masked = client.completions.create(
        prompt=token_ids("Reply to ann.lee@example.com about the sea."), echo=True, **GREEDY)
    assert masked.choices[0].text.startswith(masked_text)
    assert masked.usage is not None
    assert masked.usage.prompt_tokens == len(token_ids(masked_text))
    sent = token_ids(f"Charge my card {CARD} now.")
    unguarded = served.openai(keys["open"]).completions.create(prompt=sent, echo=True, **GREEDY)
    assert unguarded.choices[0].text.startswith(f"Charge my card {CARD} now.")
    assert unguarded.usage is not None and unguarded.usage.prompt_tokens == len(sent)
    ledger = rows(served, key, 2)
    assert [(r["status"], r["error_code"]) for r in ledger] == [
        ("rejected", "content_policy_violation"), ("finished", None)]
    assert [[d["action"] for d in json.loads(r["guardrail"])] for r in ledger] == [
        ["block"], ["mask"]]


# --- during_call: streams ------------------------------------------------------------------


def test_chat_stream_is_cut_with_content_filter(served: PlatformServer,
                                                keys: dict[str, IssuedKey],
                                                raw_chat: str) -> None:
    stream = served.openai(keys["cut"]).chat.completions.create(
        messages=QUESTION, stream=True, stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "content_filter" and reasons.count("content_filter") == 1
    first_match = COMMON_WORD.search(raw_chat)
    assert first_match is not None
    assert raw_chat.startswith(text) and len(text) <= first_match.start()  # nothing of it sent
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens < GREEDY["max_tokens"]


def test_completion_stream_is_cut_and_the_ledger_says_why(
        served: PlatformServer, raw_completion: str) -> None:
    key = served.create_key("cut-completions", guardrail="cut")
    stream = served.openai(key).completions.create(prompt=PROMPT, stream=True, **GREEDY)
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    first_match = COMMON_WORD.search(raw_completion)
    assert first_match is not None and raw_completion.startswith(text)
    assert len(text) <= first_match.start()
    (row,) = rows(served, key, 1)
    assert row["status"] == "finished" and row["error_code"] is None
    assert 0 < row["completion_tokens"] < GREEDY["max_tokens"]  # aborted early, billed for what ran
    assert json.loads(row["guardrail"]) == [
        {"mode": "during_call", "rule": "common-words", "action": "block", "categories": []}]


def test_streams_are_masked_as_they_go(served: PlatformServer, keys: dict[str, IssuedKey],
                                       raw_chat: str, raw_completion: str) -> None:
    client = served.openai(keys["vowels"])
    chat = client.chat.completions.create(messages=QUESTION, stream=True, **GREEDY)
    chat_chunks = list(chat)
    assert "".join(c.choices[0].delta.content or "" for c in chat_chunks if c.choices) == (
        VOWEL.sub("[REDACTED]", raw_chat))
    assert chat_chunks[-1].choices[0].finish_reason == "length"
    completion = client.completions.create(prompt=PROMPT, stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in completion) == (
        VOWEL.sub("[REDACTED]", raw_completion))


# --- post_call: whole answers --------------------------------------------------------------


def test_whole_answers_are_replaced_with_content_filter(
        served: PlatformServer, keys: dict[str, IssuedKey]) -> None:
    client = served.openai(keys["cut"])
    chat = client.chat.completions.create(messages=QUESTION, **GREEDY)
    assert chat.choices[0].finish_reason == "content_filter"
    assert not chat.choices[0].message.content
    completion = client.completions.create(prompt=PROMPT, **GREEDY)
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].text == ""
    assert completion.usage is not None
    assert completion.usage.completion_tokens == GREEDY["max_tokens"]  # ran to its end


def test_whole_answers_are_masked(served: PlatformServer, keys: dict[str, IssuedKey],
                                  raw_chat: str, raw_completion: str) -> None:
    client = served.openai(keys["vowels"])
    chat = client.chat.completions.create(messages=QUESTION, **GREEDY)
    assert chat.choices[0].message.content == VOWEL.sub("[REDACTED]", raw_chat)
    assert chat.choices[0].finish_reason == "length"
    completion = client.completions.create(prompt=PROMPT, **GREEDY)
    assert completion.choices[0].text == VOWEL.sub("[REDACTED]", raw_completion)


def test_pii_in_the_output_is_masked_streamed_or_not(served: PlatformServer,
                                                      keys: dict[str, IssuedKey]) -> None:
    raw = served.openai(keys["open"]).completions.create(prompt=EMAILS, **GREEDY).choices[0].text
    spans = find_pii(raw, ["email"])
    assert spans, raw  # the model continues the list with more addresses
    expected = mask(raw, spans)
    client = served.openai(keys["pii-out"])
    assert client.completions.create(prompt=EMAILS, **GREEDY).choices[0].text == expected
    streamed = client.completions.create(prompt=EMAILS, stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_open_policy_leaves_everything_alone(served: PlatformServer,
                                             keys: dict[str, IssuedKey], raw_chat: str) -> None:
    response = served.openai(keys["open"]).chat.completions.create(
        messages=[{"role": "user", "content": f"Card {CARD}: Project Zeus."}], **GREEDY)
    assert response.choices[0].finish_reason == "length"


# --- per-key policies ----------------------------------------------------------------------


def test_admin_api_assigns_and_checks_policies(served: PlatformServer) -> None:
    with served.admin() as admin:
        refused = admin.post("/admin/keys", json={"name": "x", "guardrail": "strict"})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "unknown_guardrail"
        assert "defines: cut, open, pii-out, standard, vowels" in (
            refused.json()["error"]["message"])
    key = served.create_key("switch")
    client = served.openai(key)
    with pytest.raises(openai.BadRequestError):  # the default policy: standard
        client.chat.completions.create(messages=[{"role": "user", "content": CARD}], **GREEDY)
    with served.admin() as admin:
        updated = admin.post(f"/admin/keys/{key.id}", json={"guardrail": "open"})
        assert updated.status_code == 200 and updated.json()["guardrail"] == "open"
        assert admin.get(f"/admin/keys/{key.id}").json()["guardrail"] == "open"
        assert admin.post(f"/admin/keys/{key.id}", json={"guardrail": "nope"}).status_code == 400
        assert admin.post("/admin/keys/key_missing", json={"guardrail": None}).status_code == 404
    response = client.chat.completions.create(messages=[{"role": "user", "content": CARD}],
                                              **GREEDY)
    assert response.choices[0].finish_reason == "length"


def test_cli_creates_keys_with_a_policy(served: PlatformServer, policies_file: Path) -> None:
    base = [sys.executable, "-m", "flintlm", "keys", "create", "--database-url",
            served.store_url, "--guardrails-file", str(policies_file)]
    unknown = subprocess.run([*base, "--name", "cli", "--guardrail", "strict"],
                             capture_output=True, text=True, check=False)
    assert unknown.returncode != 0 and "unknown guardrail policy 'strict'" in unknown.stderr
    created = subprocess.run([*base, "--name", "cli", "--guardrail", "cut"],
                             capture_output=True, text=True, check=True)
    secret = created.stdout.strip()
    response = served.openai(secret).chat.completions.create(messages=QUESTION, **GREEDY)
    assert response.choices[0].finish_reason == "content_filter"


# --- the Responses and Messages routes: the same calls --------------------------------------


def test_responses_route_blocks_and_filters(served: PlatformServer,
                                            keys: dict[str, IssuedKey]) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        served.openai(keys["standard"]).responses.create(
            model="default", input=f"Card {CARD}", max_output_tokens=8)
    assert isinstance(error.value.body, dict)
    assert error.value.body["code"] == "content_policy_violation"
    assert error.value.body["param"] == "input" and "4111" not in error.value.response.text
    client = served.openai(keys["cut"])
    response = client.responses.create(model="default", input=QUESTION[0]["content"],
                                       max_output_tokens=24, temperature=0, store=False)
    assert response.status == "incomplete" and response.output_text == ""
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "content_filter"
    events = list(client.responses.create(model="default", input=QUESTION[0]["content"],
                                          max_output_tokens=24, temperature=0, store=False,
                                          stream=True))
    final = events[-1]
    assert final.type == "response.incomplete"
    assert final.response.incomplete_details.reason == "content_filter"  # type: ignore[union-attr]


def test_messages_route_blocks_and_filters(served: PlatformServer,
                                           keys: dict[str, IssuedKey]) -> None:
    import anthropic

    def client(key: IssuedKey) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=served.url, api_key=key.secret, max_retries=0,
                                   timeout=HANG_TIMEOUT_S)

    with pytest.raises(anthropic.BadRequestError) as error:
        client(keys["standard"]).messages.create(
            model="default", max_tokens=8,
            messages=[{"role": "user", "content": "Tell me about project zeus"}])
    assert "'banned'" in error.value.message and "zeus" not in error.value.response.text
    greedy: dict[str, Any] = {"model": "default", "max_tokens": 24, "messages": QUESTION,
                              "extra_body": {"temperature": 0}}
    message = client(keys["cut"]).messages.create(**greedy)
    assert message.stop_reason == "refusal"
    with client(keys["cut"]).messages.stream(**greedy) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "refusal"


def test_a_policy_the_server_lacks_is_refused_not_unguarded(served: PlatformServer) -> None:
    created = subprocess.run(
        [sys.executable, "-m", "flintlm", "keys", "create", "--database-url", served.store_url,
         "--name", "stale", "--guardrail", "retired"],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLINTLM_")})
    assert "not checked" in created.stderr
    with pytest.raises(openai.PermissionDeniedError) as error:
        served.openai(created.stdout.strip()).chat.completions.create(messages=QUESTION, **GREEDY)
    assert isinstance(error.value.body, dict) and error.value.body["code"] == "unknown_guardrail"


def test_stored_completions_keep_the_masked_input(served: PlatformServer) -> None:
    key = served.create_key("stored")
    client = served.openai(key)
    done = client.chat.completions.create(
        messages=[{"role": "user", "content": "Reply to ann.lee@example.com about the sea."}],
        store=True, **GREEDY)
    stored = client.chat.completions.messages.list(done.id)
    assert [m.content for m in stored.data] == ["Reply to [EMAIL] about the sea."]


def test_stored_completions_mask_the_policys_pii_whatever_its_modes(
        served: PlatformServer, keys: dict[str, IssuedKey]) -> None:
    client = served.openai(keys["pii-out"])  # email masked in output only, not on input
    content = "Reply to ann.lee@example.com about the sea."
    done = client.chat.completions.create(messages=[{"role": "user", "content": content}],
                                          store=True, **GREEDY)
    assert done.usage is not None
    assert done.usage.prompt_tokens == served.count_tokens(  # the model saw the address
        keys["pii-out"], messages=[{"role": "user", "content": content}])
    stored = client.chat.completions.messages.list(done.id)
    assert [m.content for m in stored.data] == ["Reply to [EMAIL] about the sea."]
