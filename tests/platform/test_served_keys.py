"""Keys, limits, quotas, usage views and tenant-isolated prefix caching through a real server and
the openai client, on SQLite and on PostgreSQL. Keys come from the admin API or the CLI; the
ledger is read from the store itself.

The server's rate window is a few seconds instead of a minute (`window_s`), so a test can watch a
limit recover; prices are high (PRICES) so a budget runs out in one request.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import openai
import pytest

from tests.conftest import HANG_TIMEOUT_S
from tests.platform.served import (
    ADMIN_KEY,
    CHAT,
    MESSAGES,
    NUM_COMPLETION,
    IssuedKey,
    PlatformServer,
    platform_servers,
)

# USD per 1M tokens: an uncached prompt token costs 1e6 nano-USD, a completion token 2e6.
PRICES = '[models."*"]\ninput = 1000\ncached_input = 500\noutput = 2000\n'
MIN_WINDOW_S = 8
# The limit tests below allow 2 requests per window, so one refills every half window; their
# refusals must all come before that, a span of about two requests (a concurrent burst, then
# one more). 20 requests' time per window leaves that span a margin of 5 at any machine speed.
CHATS_PER_WINDOW = 20
_T = TypeVar("_T")


@pytest.fixture(scope="module")
def window_s(chat_seconds: float) -> int:
    """The server's rate window: short to keep recovery waits short, long enough for the
    requests of one refill to finish first on this machine."""
    return max(MIN_WINDOW_S, math.ceil(CHATS_PER_WINDOW * chat_seconds))


@pytest.fixture(scope="module")
def served(store_url: str, window_s: int, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[PlatformServer]:
    log_dir = tmp_path_factory.mktemp("served")
    prices = log_dir / "prices.toml"
    prices.write_text(PRICES)
    with platform_servers(log_dir, store_url, "--rate-window-s", str(window_s),
                          "--prices-file", str(prices)) as [server]:
        yield server


@pytest.fixture(scope="module")
def num_prompt(served: PlatformServer) -> int:
    """Prompt tokens of CHAT, as the server counts them."""
    return served.count_tokens(served.create_key("tokenizer"), messages=MESSAGES)


def concurrently(num_calls: int, call: Callable[[], _T]) -> list[_T]:
    """Run `call` on `num_calls` threads released together, so admissions race."""
    start = threading.Barrier(num_calls)

    def released() -> _T:
        start.wait()
        return call()

    with ThreadPoolExecutor(num_calls) as pool:
        return list(pool.map(lambda _: released(), range(num_calls)))


def raw_chat(client: openai.OpenAI, **overrides: Any) -> httpx.Response:
    """One chat request's HTTP response, success or refusal; its body is read."""
    try:
        return client.chat.completions.with_raw_response.create(**{**CHAT, **overrides}
                                                                ).http_response
    except openai.APIStatusError as exc:
        return exc.response


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def test_key_lifecycle_create_use_revoke_expire(served: PlatformServer,
                                                chat_seconds: float) -> None:
    key = served.create_key("lifecycle")
    assert served.openai(key).chat.completions.create(**CHAT).usage.completion_tokens == 8

    with served.admin() as admin:
        revoked = admin.delete(f"/admin/keys/{key.id}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError) as refused:
        served.openai(key).chat.completions.create(**CHAT)
    assert refused.value.code == "invalid_api_key" and "revoked" in refused.value.body["message"]

    # Long enough to create the key and get one request past authentication on this machine.
    expires_at = datetime.now(UTC) + timedelta(seconds=max(3.0, 3 * chat_seconds))
    short_lived = served.create_key("short-lived", expires_at=expires_at.isoformat())
    assert served.openai(short_lived).chat.completions.create(**CHAT).choices
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.2)
    with pytest.raises(openai.AuthenticationError) as expired:
        served.openai(short_lived).chat.completions.create(**CHAT)
    assert "expired" in expired.value.body["message"]

    with pytest.raises(openai.AuthenticationError):
        served.openai("flint-sk-" + "A" * 43).chat.completions.create(**CHAT)
    missing = httpx.post(f"{served.url}/v1/chat/completions", json=CHAT, timeout=HANG_TIMEOUT_S)
    assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
    # Only the request that got through has a row; a 401 has no key to charge.
    assert [row["status"] for row in served.wait_for_ledger(key.id, 1)] == ["finished"]


def _cli(served: PlatformServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLINTLM_")}
    return subprocess.run([sys.executable, "-m", "flintlm", *args, "--database-url",
                           served.store_url], capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S, env=env, check=False)


def test_cli_keys_and_usage_work_on_the_servers_store(served: PlatformServer) -> None:
    created = _cli(served, "keys", "create", "--name", "from-cli", "--rpm", "100",
                   "--models", "default")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    match = re.search(r"created (key_\w+)", created.stderr)
    assert secret.startswith("flint-sk-") and match, created
    key = IssuedKey(match.group(1), secret, match.group(1))
    served.issued.append(key)
    reply = served.openai(key).chat.completions.create(**CHAT)

    listed = _cli(served, "keys", "list")
    assert listed.returncode == 0 and secret not in listed.stdout
    [line] = [line for line in listed.stdout.splitlines() if key.id in line]
    assert "from-cli" in line and "active" in line and " 100 " in line

    [row] = served.wait_for_ledger(key.id, 1)
    usage = _cli(served, "usage", "--key", key.id, "--group-by", "key,model")
    assert usage.returncode == 0, usage.stderr
    cost_usd = f"{Decimal(row['cost_nano_usd']) / 10**9:.9f}"
    assert usage.stdout.splitlines()[1].split() == [
        key.id, "default", "1", str(reply.usage.prompt_tokens),
        str(reply.usage.prompt_tokens_details.cached_tokens), "8",
        str(reply.usage.total_tokens), cost_usd]

    assert _cli(served, "keys", "revoke", key.id).returncode == 0
    with pytest.raises(openai.AuthenticationError):
        served.openai(key).chat.completions.create(**CHAT)
    again = _cli(served, "keys", "revoke", key.id)
    assert again.returncode == 1 and "already revoked" in again.stderr


def test_a_key_uses_only_its_models(served: PlatformServer) -> None:
    scoped = served.create_key("scoped", models=["gpt-*"])
    allowed = served.create_key("allowed", models=["other", "def*"])
    with pytest.raises(openai.PermissionDeniedError) as refused:
        served.openai(scoped).chat.completions.create(**CHAT)
    assert refused.value.status_code == 403 and refused.value.code == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        served.openai(scoped).completions.create(model="default", prompt="Hi", max_tokens=1,
                                                 stream=True)
    assert served.openai(scoped).models.list().data == []
    assert [m.id for m in served.openai(allowed).models.list().data] == ["default"]
    assert served.openai(allowed).chat.completions.create(**CHAT).choices
    rows = served.wait_for_ledger(scoped.id, 2)
    assert {(r["status"], r["error_code"], r["prompt_tokens"], r["completion_tokens"])
            for r in rows} == {("rejected", "model_not_allowed", 0, 0)}


def test_requests_per_minute_limit_and_recovery(served: PlatformServer, window_s: int) -> None:
    key = served.create_key("rpm", rpm=2)
    client = served.openai(key)
    responses = concurrently(3, lambda: raw_chat(client))
    ok = [r for r in responses if r.status_code == 200]
    [refused] = [r for r in responses if r.status_code == 429]
    assert len(ok) == 2
    assert sorted(r.headers["x-ratelimit-remaining-requests"] for r in ok) == ["0", "1"]
    for response in responses:
        assert response.headers["x-ratelimit-limit-requests"] == "2"
        assert re.fullmatch(r"\d+(\.\d+)?(ms|s)", response.headers["x-ratelimit-reset-requests"])
    error = error_of(refused)
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # One request comes back every window_s / rpm seconds.
    assert 1 <= int(refused.headers["retry-after"]) <= math.ceil(window_s / 2)

    # Streamed: refused with the status and headers, before any byte of a stream.
    with pytest.raises(openai.RateLimitError) as streamed:
        client.chat.completions.create(**CHAT, stream=True)
    retry_after = int(streamed.value.response.headers["retry-after"])
    assert streamed.value.response.headers["x-ratelimit-limit-requests"] == "2"

    time.sleep(retry_after)
    recovered = client.chat.completions.with_raw_response.create(**CHAT, stream=True)
    assert recovered.headers["x-ratelimit-limit-requests"] == "2"  # on a stream, too
    assert [chunk for chunk in recovered.parse() if chunk.choices]
    rows = served.wait_for_ledger(key.id, 5)
    assert sorted(r["status"] for r in rows) == ["finished"] * 3 + ["rejected"] * 2


def test_tokens_per_minute_limit_and_recovery(served: PlatformServer, num_prompt: int,
                                              window_s: int) -> None:
    per_request = num_prompt + NUM_COMPLETION  # reserved and (ignore_eos) used
    key = served.create_key("tpm", tpm=2 * per_request)
    client = served.openai(key)
    responses = concurrently(3, lambda: raw_chat(client))
    ok = [r for r in responses if r.status_code == 200]
    [refused] = [r for r in responses if r.status_code == 429]
    assert len(ok) == 2 and all(r.json()["usage"]["total_tokens"] == per_request for r in ok)
    for response in responses:
        assert response.headers["x-ratelimit-limit-tokens"] == str(2 * per_request)
        assert int(response.headers["x-ratelimit-remaining-tokens"]) <= per_request
    error = error_of(refused)
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "tokens")
    assert f"requested {per_request}" in error["message"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= math.ceil(window_s / 2) + 1

    too_large = raw_chat(client, max_tokens=2 * per_request)
    assert too_large.status_code == 429 and too_large.headers["x-should-retry"] == "false"
    assert "retry-after" not in too_large.headers
    assert "Request too large" in error_of(too_large)["message"]

    time.sleep(retry_after)
    assert raw_chat(client).status_code == 200


def test_token_quota_runs_out(served: PlatformServer, num_prompt: int) -> None:
    per_request = num_prompt + NUM_COMPLETION
    key = served.create_key("quota", token_quota=2 * per_request - 1, quota_period="day")
    client = served.openai(key)
    assert raw_chat(client).status_code == 200
    refused = raw_chat(client)
    assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
    error = error_of(refused)
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert "daily token quota" in error["message"] and f"{tomorrow}T00:00:00Z" in error["message"]
    # What is left of the quota still serves a request that fits in it.
    assert raw_chat(client, max_tokens=NUM_COMPLETION - 2).status_code == 200
    rows = served.wait_for_ledger(key.id, 3)
    assert [(r["status"], r["error_code"], r["prompt_tokens"] + r["completion_tokens"])
            for r in sorted(rows, key=lambda r: r["id"])] == [
        ("finished", None, per_request), ("rejected", "insufficient_quota", 0),
        ("finished", None, per_request - 2)]


def test_budget_runs_out_and_twenty_racing_requests_get_one_through(
    served: PlatformServer, num_prompt: int
) -> None:
    worst_case_nanos = num_prompt * 1_000_000 + NUM_COMPLETION * 2_000_000
    budget = Decimal(worst_case_nanos * 3 // 2) / 10**9  # one request, not two
    key = served.create_key("budget", budget_usd=str(budget), quota_period="month")
    client = served.openai(key)
    responses = concurrently(20, lambda: raw_chat(client))
    assert sorted(r.status_code for r in responses) == [200] + [429] * 19
    for refused in (r for r in responses if r.status_code == 429):
        error = error_of(refused)
        assert error["code"] == "insufficient_quota" and "monthly budget" in error["message"]
        assert refused.headers["x-should-retry"] == "false"
    rows = served.wait_for_ledger(key.id, 20)
    [finished] = [r for r in rows if r["status"] == "finished"]
    cached = finished["cached_tokens"]
    assert finished["cost_nano_usd"] == ((finished["prompt_tokens"] - cached) * 1_000_000
                                         + cached * 500_000 + NUM_COMPLETION * 2_000_000)
    assert all(r["cost_nano_usd"] == 0 for r in rows if r["status"] == "rejected")


def test_a_key_reads_only_its_own_usage(served: PlatformServer) -> None:
    first, second = served.create_key("usage-a"), served.create_key("usage-b")
    replies = [served.openai(first).chat.completions.create(**CHAT) for _ in range(2)]
    served.openai(second).chat.completions.create(**CHAT)

    def usage(key: IssuedKey, **params: str) -> httpx.Response:
        with served.http(key) as http:
            return http.get("/v1/usage", params=params)

    [mine] = usage(first).json()["data"]
    assert (mine["model"], mine["num_requests"], mine["completion_tokens"]) == ("default", 2, 16)
    assert mine["prompt_tokens"] == sum(r.usage.prompt_tokens for r in replies)
    assert mine["cached_tokens"] == sum(r.usage.prompt_tokens_details.cached_tokens
                                        for r in replies)
    assert usage(first, key_id=second.id).json()["data"] == [mine]  # no way to name another key
    [theirs] = usage(second).json()["data"]
    assert theirs["num_requests"] == 1
    [today] = usage(first, group_by="day").json()["data"]
    assert today["day"] == datetime.now(UTC).date().isoformat() and today["model"] is None
    assert error_of(usage(first, group_by="key"))["param"] == "group_by"
    assert usage(first, start="yesterday").status_code == 400

    for path in ("/admin/usage", "/admin/keys"):  # a valid key, just not the admin's: 403
        with served.admin(first.secret) as impostor:
            response = impostor.get(path)
        assert response.status_code == 403
        assert error_of(response)["type"] == "permission_error"
    with served.admin() as admin:
        report = admin.get("/admin/usage", params={"key_id": first.id}).json()
    assert report["group_by"] == ["key", "model", "day"]
    [row] = report["data"]
    assert row["key_id"] == first.id and row["total_tokens"] == mine["total_tokens"]


LONG_TEXT = " ".join(f"Item {i}: a flint knapper shapes stone number {i} with care."
                     for i in range(8))


def test_the_prefix_cache_is_shared_within_a_tenant_only(served: PlatformServer) -> None:
    owner = served.create_key("cache-owner")
    colleague = served.create_key("cache-colleague", tenant_id=owner.tenant_id)
    stranger = served.create_key("cache-stranger")
    prompt = f"{uuid.uuid4().hex} {LONG_TEXT}"  # new to this server's cache

    def cached_tokens(key: IssuedKey, salt: str | None = None) -> int:
        extra = {"cache_salt": salt} if salt is not None else {}
        usage = served.openai(key).completions.create(
            model="default", prompt=prompt, max_tokens=1, extra_body=extra).usage
        assert usage.prompt_tokens > 100  # several full KV blocks
        return usage.prompt_tokens_details.cached_tokens

    assert cached_tokens(owner) == 0
    assert cached_tokens(owner) > 0  # the same key hits its long prefix
    assert cached_tokens(colleague) > 0  # a key of the same tenant does too
    assert cached_tokens(stranger) == 0  # another tenant does not...
    assert cached_tokens(stranger) > 0  # ...though its own cache works
    assert cached_tokens(owner, salt="team-1") == 0  # a client salt narrows the tenant's cache
    assert cached_tokens(owner, salt="team-1") > 0
    assert cached_tokens(stranger, salt="team-1") == 0  # copying the salt reaches nothing


def test_secrets_appear_in_no_log_ledger_row_or_listing(served: PlatformServer) -> None:
    """Runs last in the module: every secret the tests above were given is checked."""
    served.create_key("listed")
    with served.admin() as admin:
        listing = admin.get("/admin/keys")
    assert listing.status_code == 200
    listed = {key["id"]: key for key in listing.json()["data"]}
    ledger = repr(served.ledger())
    log = served.live.log()
    assert len(served.issued) > 10 and "POST /admin/keys" in log
    for key in served.issued:
        assert key.secret not in listing.text and key.secret not in ledger
        assert key.secret not in log
        assert key.secret.startswith(listed[key.id]["prefix"]) and "secret" not in listed[key.id]
    assert ADMIN_KEY not in log and ADMIN_KEY not in ledger and ADMIN_KEY not in listing.text
