"""The request log in headless Chromium: a request just made through the openai SDK is the
first row, under the id the SDK got and with the ledger's numbers; a key sees only its own; the
admin filters by key and status."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.console.conftest import ConsoleServer, shot, sign_in
from tests.console.views.conftest import api_get, chat, goto


def test_a_key_sees_its_request_just_made_first(console_server: ConsoleServer,
                                                page: Page) -> None:
    key, other = console_server.create_key("log-key"), console_server.create_key("log-other")
    chat(console_server, other)
    made = [chat(console_server, key).id for _ in range(2)]
    sign_in(page, console_server.base_url, key.secret)
    goto(page, "requests")
    rows = page.get_by_test_id("request-row")
    expect(rows).to_have_count(2)  # not the other key's
    assert [rows.nth(i).get_attribute("data-id") for i in range(2)] == made[::-1]
    entry = api_get(console_server, key.secret, "/v1/usage/requests", limit=1)["data"][0]
    cells = rows.first.locator("td")
    assert cells.nth(1).text_content() == made[-1]
    assert cells.nth(3).text_content() == entry["model"]
    assert cells.nth(4).text_content() == "finished"
    assert cells.nth(5).text_content() == str(entry["prompt_tokens"])
    assert cells.nth(7).text_content() == str(entry["completion_tokens"]) == "4"
    shot(page, "requests-key")


def test_the_admin_filters_by_key_and_status(console_server: ConsoleServer, page: Page) -> None:
    key = console_server.create_key("log-admin-sees")
    made = chat(console_server, key).id
    sign_in(page, console_server.base_url, console_server.admin_key)
    goto(page, "requests")
    expect(page.get_by_test_id("request-row").first).to_have_attribute("data-id", made)
    page.get_by_test_id("log-key").fill(key.id)
    page.get_by_test_id("log-apply").click()
    expect(page.get_by_test_id("request-row")).to_have_count(1)
    expect(page.get_by_test_id("log-table")).to_contain_text(key.id)
    shot(page, "requests-admin")
    page.get_by_test_id("log-status").select_option("rejected")
    page.get_by_test_id("log-apply").click()
    expect(page.get_by_test_id("log-status-line")).to_have_text("No requests match.")
    expect(page.get_by_test_id("request-row")).to_have_count(0)
