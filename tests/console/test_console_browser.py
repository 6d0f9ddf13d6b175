"""The console in a real headless Chromium against a real server: sign in with a key and stream
an answer in the playground (its "View code" Python run for real), create and revoke a key as
the admin and see the API refuse it, and model output and user text containing HTML rendered
inert. Screenshots of these pages go to docs/console/ with FLINTLM_CONSOLE_SCREENSHOTS=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import openai
import pytest

from tests.conftest import HANG_TIMEOUT_S

from .conftest import ConsoleServer, PageEvents, shot, sign_in

if TYPE_CHECKING:
    from playwright.sync_api import Page

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
# An answer the model must write: grammar-constrained decoding leaves it one string to choose.
HOSTILE_SCHEMA = {"type": "object", "properties": {"html": {"type": "string", "enum": [HOSTILE]}},
                  "required": ["html"], "additionalProperties": False}


def _settings(page: Page, *, max_tokens: int, system: str = "", schema: str = "") -> None:
    page.get_by_test_id("pg-temperature").fill("0")
    page.get_by_test_id("pg-max-tokens").fill(str(max_tokens))
    page.get_by_test_id("pg-system").fill(system)
    page.get_by_test_id("pg-schema").fill(schema)


def _ask(page: Page, text: str) -> None:
    """Send `text` and wait until the answer's figures are shown (the stream has ended)."""
    num_answers = page.get_by_test_id("msg-stats").count()
    page.get_by_test_id("pg-input").fill(text)
    page.get_by_test_id("pg-send").click()
    page.get_by_test_id("msg-stats").nth(num_answers).wait_for()


def test_a_key_signs_in_and_streams_an_answer(console_server: ConsoleServer, page: Page,
                                              page_events: PageEvents, tmp_path: Path) -> None:
    key = console_server.create_key("playground")
    page.goto(f"{console_server.base_url}/console")
    page.get_by_test_id("signin").wait_for()
    shot(page, "signin")
    sign_in(page, console_server.base_url, key.secret)
    assert page.get_by_test_id("nav-playground").is_visible()
    assert page.get_by_test_id("nav-keys").count() == 0  # a key sees no admin page
    assert "playground" in page.get_by_test_id("whoami").inner_text()
    assert page.evaluate("document.cookie") == ""  # the session cookie is HttpOnly
    page.get_by_test_id("page-playground").wait_for()
    _settings(page, max_tokens=8)
    # every text the answer shows on its way: more than one means it arrived in pieces
    page.evaluate("""() => {
        window.seenTexts = new Set();
        new MutationObserver(() => {
            const bodies = document.querySelectorAll('[data-testid=msg-assistant] .msg-body');
            if (bodies.length) window.seenTexts.add(bodies[bodies.length - 1].textContent);
        }).observe(document.querySelector('[data-testid=pg-transcript]'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    _ask(page, "Say hi.")
    answer = page.get_by_test_id("msg-assistant").last
    text = answer.get_by_test_id("msg-body").inner_text()
    assert text.strip()
    assert page.evaluate("window.seenTexts.size") >= 2, "the answer did not stream"
    [row] = console_server.platform.wait_for_ledger(key.id, 1)
    tokens = answer.get_by_test_id("msg-tokens").inner_text()
    assert tokens == (f"{row['prompt_tokens']} prompt ({row['cached_tokens']} cached) + "
                      f"{row['completion_tokens']} completion tokens")
    assert answer.get_by_test_id("msg-ttft").inner_text().startswith("TTFT ")
    assert answer.get_by_test_id("msg-tps").inner_text().endswith("tok/s")
    cost_usd = float(answer.get_by_test_id("msg-cost").inner_text().removeprefix("$"))
    assert cost_usd == pytest.approx(row["cost_nano_usd"] / 1e9, abs=1.5e-9)  # as billed
    assert cost_usd > 0
    shot(page, "playground")

    page.get_by_test_id("pg-input").fill("And again.")
    page.get_by_test_id("pg-view-code").click()
    page.get_by_test_id("pg-code-tab-python").click()
    code = page.get_by_test_id("pg-code").inner_text()
    assert key.secret not in code and "FLINTLM_API_KEY" in code
    shot(page, "playground-code")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=HANG_TIMEOUT_S, env={**os.environ, "FLINTLM_API_KEY": key.secret})
    assert run.returncode == 0, run.stderr
    assert "completion_tokens=" in run.stdout  # it streamed and got the usage chunk
    page.get_by_test_id("pg-code-tab-curl").click()
    curl = page.get_by_test_id("pg-code").inner_text()
    assert curl.startswith("curl ") and key.secret not in curl
    if shutil.which("curl"):
        run = subprocess.run(["bash", "-c", curl], capture_output=True, text=True,
                             timeout=HANG_TIMEOUT_S,
                             env={**os.environ, "FLINTLM_API_KEY": key.secret})
        assert run.returncode == 0, run.stderr
        assert '"completion_tokens"' in run.stdout and "data: [DONE]" in run.stdout
    page.get_by_test_id("pg-code-tab-javascript").click()
    javascript = page.get_by_test_id("pg-code").inner_text()
    assert "process.env.FLINTLM_API_KEY" in javascript and key.secret not in javascript
    if shutil.which("node"):  # the `openai` npm package is not here: its syntax, at least
        script = tmp_path / "chat.mjs"
        script.write_text(javascript)
        check = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True,
                               timeout=HANG_TIMEOUT_S)
        assert check.returncode == 0, check.stderr
    assert not any(key.secret in url for url in page_events.request_urls)
    assert page_events.page_errors == [] and page_events.dialogs == []


def test_another_origin_cannot_call_the_api_with_the_session(console_server: ConsoleServer,
                                                             page: Page) -> None:
    key = console_server.create_key("cross-origin")
    sign_in(page, console_server.base_url, key.secret)
    same_origin = page.evaluate("""async () => (await fetch('/v1/usage', {
        credentials: 'same-origin', headers: {'x-flintlm-console': '1'}})).status""")
    assert same_origin == 200
    other = page.context.new_page()  # same browser profile, so the cookie jar is shared
    other.goto("about:blank")
    outcome = other.evaluate("""async (url) => {
        try {
            const response = await fetch(url, {credentials: 'include',
                                               headers: {'x-flintlm-console': '1'}});
            return 'status ' + response.status;
        } catch (error) { return error.name; }
    }""", f"{console_server.base_url}/v1/usage")
    assert outcome == "TypeError"  # the preflight the header forces is never approved
    other.close()


def test_admin_creates_a_key_and_revokes_it(console_server: ConsoleServer, page: Page,
                                            page_events: PageEvents) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, console_server.base_url, console_server.admin_key)
    assert page.get_by_test_id("nav-playground").count() == 0  # the admin key chats with nothing
    page.get_by_test_id("nav-keys").click()
    page.get_by_test_id("key-name").fill("made in the console")
    page.get_by_test_id("key-rpm").fill("30")
    page.get_by_test_id("key-models").fill("default")
    page.get_by_test_id("key-create").click()
    secret = page.get_by_test_id("key-secret").inner_text()
    assert secret.startswith("flint-sk-")
    page.get_by_test_id("key-copy").click()
    page.get_by_test_id("key-copied").get_by_text("Copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    with console_server.platform.admin() as admin:
        [key] = [k for k in admin.get("/admin/keys").json()["data"]
                 if k["name"] == "made in the console"]
    assert key["rpm"] == 30 and key["models"] == ["default"]
    row = page.get_by_test_id(f"key-row-{key['id']}")
    assert "30 rpm" in row.inner_text()
    shot(page, "keys")

    client = openai.OpenAI(base_url=f"{console_server.base_url}/v1", api_key=secret,
                           max_retries=0, timeout=HANG_TIMEOUT_S)
    assert client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=1).usage
    page.get_by_test_id(f"revoke-{key['id']}").click()
    page.get_by_test_id(f"revoke-{key['id']}").click()  # "Confirm revoke"
    page.get_by_test_id(f"status-{key['id']}").get_by_text("revoked").wait_for()
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=1)

    page.get_by_test_id("logout").click()
    page.get_by_test_id("signin").wait_for()
    page.reload()  # the session is gone on the server, not just hidden
    page.get_by_test_id("signin").wait_for()
    assert page.get_by_test_id("nav").is_hidden()
    assert not any(console_server.admin_key in url for url in page_events.request_urls)
    assert page_events.page_errors == [] and page_events.dialogs == []


def test_model_output_and_user_text_are_shown_as_text(console_server: ConsoleServer,
                                                       page: Page,
                                                       page_events: PageEvents) -> None:
    key = console_server.create_key("hostile")
    sign_in(page, console_server.base_url, key.secret)
    page.get_by_test_id("page-playground").wait_for()
    # Trusted Types (from the CSP) make any HTML string sink throw on the console's pages
    assert page.evaluate("""() => {
        try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); return 'inserted'; }
        catch (error) { return error.name; }
    }""") == "TypeError"
    _settings(page, max_tokens=64, system=f"Reply {HOSTILE}", schema=json.dumps(HOSTILE_SCHEMA))
    _ask(page, f"Echo this: <img src=x onerror=alert(3)> {HOSTILE}")
    user = page.get_by_test_id("msg-user").last.get_by_test_id("msg-body")
    assert user.inner_text() == f"Echo this: <img src=x onerror=alert(3)> {HOSTILE}"
    answer = page.get_by_test_id("msg-assistant").last.get_by_test_id("msg-body")
    assert json.loads(answer.inner_text()) == {"html": HOSTILE}  # the model wrote the markup
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 1  # the console's own module, nothing more
    assert page.locator("main b, main i, main a").count() == 0
    assert page_events.dialogs == [] and page_events.page_errors == []
