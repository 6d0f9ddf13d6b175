"""The live page in headless Chromium: it shows the server's metrics from /console/api/live,
refreshes on its own, counts a request made meanwhile, and stops polling once left."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.console.conftest import ConsoleServer, PageEvents, shot, sign_in
from tests.console.views.conftest import api_get, chat, goto

REFRESH_MS = 1500  # pages/live.js


def polls(page: Page) -> int:
    return int(page.get_by_test_id("live-updated").get_attribute("data-polls") or "0")


def live_requests(events: PageEvents) -> int:
    return sum(url.endswith("/console/api/live") for url in events.request_urls)


def test_the_live_page_refreshes_and_shows_the_metrics(console_server: ConsoleServer, page: Page,
                                                       page_events: PageEvents) -> None:
    key = console_server.create_key("live-key")
    sign_in(page, console_server.base_url, console_server.admin_key)
    goto(page, "live")
    expect(page.get_by_test_id("live-updated")).to_have_attribute("data-polls", "1")
    snapshot = api_get(console_server, console_server.admin_key, "/console/api/live")
    expect(page.get_by_test_id("live-kv")).to_contain_text(
        f"/{snapshot['kv_blocks_total']:,} blocks")
    expect(page.get_by_test_id("live-running")).to_have_text("0")

    chat(console_server, key)  # within the page's windows: counted by the next poll
    expect(page.get_by_test_id("latency-TTFT").locator("td").last).not_to_have_text("0")
    assert "ms" in (page.get_by_test_id("latency-TTFT").locator("td").first.text_content() or "")
    assert polls(page) >= 2  # the page refreshed on its own: one point a poll on the chart
    assert page.get_by_test_id("chart-throughput").locator("circle").count() >= 2
    shot(page, "live")

    goto(page, "usage")  # leaving stops the polling
    page.get_by_test_id("chart-requests").wait_for()
    asked = live_requests(page_events)
    page.wait_for_timeout(3 * REFRESH_MS)  # NOTE: proving an absence takes some waiting
    assert live_requests(page_events) == asked
    assert page_events.page_errors == [] and page_events.dialogs == []
    assert not [error for error in page_events.console_errors if "Refused" in error]  # CSP


def test_a_key_has_no_live_page(console_server: ConsoleServer, page: Page) -> None:
    key = console_server.create_key("live-no")
    sign_in(page, console_server.base_url, key.secret)
    expect(page.get_by_test_id("nav-usage")).to_be_visible()
    assert page.get_by_test_id("nav-live").count() == 0
