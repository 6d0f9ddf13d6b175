"""The data page in headless Chromium: a stored completion made through the openai SDK is
listed, rated (metadata `rating`, the other pairs kept, as `flintlm data rate` does) and
exported; a prompt and metadata full of markup are shown as text and run nothing."""

from __future__ import annotations

import json

from playwright.sync_api import Page, expect

from tests.console.conftest import ConsoleServer, PageEvents, shot, sign_in
from tests.console.views.conftest import api_get, chat, goto

ATTACK = ('<script>window.pwned = "script"</script>'
          '<img src=x onerror="window.pwned = \'img\'; alert(1)">')


def test_a_stored_completion_is_listed_rated_and_exported_as_text(
        console_server: ConsoleServer, page: Page, page_events: PageEvents) -> None:
    key = console_server.create_key("data-key")
    # Only finished answers are exported: stop greedy decoding at a text it is known to write.
    text = chat(console_server, key, ATTACK).choices[0].message.content
    assert text and text.strip()
    stored = chat(console_server, key, ATTACK, store=True, stop=[text.strip()[-1]],
                  metadata={"note": ATTACK})
    assert stored.choices[0].finish_reason == "stop"
    sign_in(page, console_server.base_url, key.secret)
    goto(page, "data")
    card = page.locator(f'[data-testid=completion][data-id="{stored.id}"]')
    expect(card.get_by_test_id("answer")).to_have_text(stored.choices[0].message.content or "")
    expect(card.get_by_test_id("metadata")).to_contain_text(ATTACK)
    card.locator("summary").click()
    expect(card.locator(".prompt pre")).to_have_text(ATTACK)
    assert card.locator("img, script").count() == 0  # markup stayed text
    assert page.evaluate("window.pwned") is None and page_events.dialogs == []

    card.get_by_test_id("rate-up").click()
    expect(page.locator(f'[data-testid=completion][data-id="{stored.id}"]')
           .get_by_test_id("rating")).to_have_text("rated 1")
    kept = api_get(console_server, key.secret, f"/v1/chat/completions/{stored.id}")
    assert kept["metadata"] == {"note": ATTACK, "rating": "1"}
    shot(page, "data")

    page.get_by_test_id("export-min-rating").fill("1")
    with page.expect_download() as download:
        page.get_by_test_id("export-jsonl").click()
    lines = [json.loads(line) for line in download.value.path().read_text().splitlines()]
    assert lines == [{"messages": [{"role": "user", "content": ATTACK},
                                   {"role": "assistant",
                                    "content": stored.choices[0].message.content}]}]
    expect(page.get_by_test_id("export-status")).to_contain_text("1 lines exported")
    assert page_events.page_errors == [] and page_events.dialogs == []


def test_the_admin_has_no_data_page(console_server: ConsoleServer, page: Page) -> None:
    sign_in(page, console_server.base_url, console_server.admin_key)
    expect(page.get_by_test_id("nav-usage")).to_be_visible()
    assert page.get_by_test_id("nav-data").count() == 0
