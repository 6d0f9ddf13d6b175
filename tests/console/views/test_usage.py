"""The usage page in headless Chromium: a request just made through the openai SDK shows up,
and the charts' totals are the numbers /admin/usage and /v1/usage answer for the range the page
shows; the CSV export carries the same numbers."""

from __future__ import annotations

import csv
import io

from playwright.sync_api import Page, expect

from tests.console.conftest import ConsoleServer, shot, sign_in
from tests.console.views.conftest import api_get, chat, goto, svg_total


def page_range(page: Page) -> dict[str, str]:
    """The report the page asked for: its date inputs, end made exclusive as the page does."""
    start = page.get_by_test_id("usage-start").input_value()
    end = page.get_by_test_id("usage-end").input_value()
    return {"start": start, "end": page.evaluate(
        "day => new Date(Date.parse(day + 'T00:00:00Z') + 86400000).toISOString().slice(0, 10)",
        end)}


def totals(report: dict) -> dict[str, float]:
    rows = report["data"]
    return {"requests": sum(r["num_requests"] for r in rows),
            "tokens": sum(r["total_tokens"] for r in rows),
            "cached": sum(r["cached_tokens"] for r in rows),
            "output": sum(r["completion_tokens"] for r in rows),
            "cost": round(sum(float(r["cost_usd"]) for r in rows), 9)}


def drawn(page: Page) -> dict[str, float]:
    return {"requests": svg_total(page, "chart-requests"),
            "tokens": svg_total(page, "chart-tokens"),
            "cached": svg_total(page, "chart-tokens", "cached"),
            "output": svg_total(page, "chart-tokens", "output"),
            "cost": svg_total(page, "chart-cost")}


def test_a_keys_usage_page_shows_its_own_request_just_made(console_server: ConsoleServer,
                                                           page: Page) -> None:
    key = console_server.create_key("usage-key")
    chat(console_server, key)
    sign_in(page, console_server.base_url, key.secret)
    goto(page, "usage")
    expect(page.get_by_test_id("chart-requests")).to_have_attribute("data-total", "1")
    report = api_get(console_server, key.secret, "/v1/usage", group_by="day", **page_range(page))
    assert drawn(page) == totals(report)
    assert totals(report)["requests"] == 1 and totals(report)["output"] == 4

    chat(console_server, key)  # a second one appears on the next look
    page.get_by_test_id("usage-refresh").click()
    expect(page.get_by_test_id("chart-requests")).to_have_attribute("data-total", "2")
    page.get_by_test_id("usage-group").select_option("model")
    expect(page.get_by_test_id("usage-table")).to_contain_text("default")
    assert page.get_by_test_id("usage-group").locator("option[value=key]").count() == 0
    with page.expect_download() as download:
        page.get_by_test_id("usage-csv").click()
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
    assert [row["group"] for row in rows] == ["default"]
    report = api_get(console_server, key.secret, "/v1/usage", group_by="model", **page_range(page))
    assert int(rows[0]["requests"]) == 2 == report["data"][0]["num_requests"]
    assert int(rows[0]["total_tokens"]) == report["data"][0]["total_tokens"]
    assert rows[0]["cost_usd"] == report["data"][0]["cost_usd"]
    shot(page, "usage-key")


def test_the_admins_charts_total_what_admin_usage_answers(console_server: ConsoleServer,
                                                          page: Page) -> None:
    key = console_server.create_key("usage-admin-sees")
    chat(console_server, key)
    sign_in(page, console_server.base_url, console_server.admin_key)
    goto(page, "usage")
    page.get_by_test_id("usage-group").select_option("key")
    expect(page.get_by_test_id("usage-table")).to_contain_text(key.id)
    report = api_get(console_server, console_server.admin_key, "/admin/usage", group_by="key",
                     **page_range(page))
    assert drawn(page) == totals(report)
    assert totals(report)["requests"] >= 1
    bar = page.get_by_test_id("chart-requests").locator("rect title", has_text=key.id)
    assert bar.count() == 1
    page.get_by_test_id("usage-group").select_option("day")
    expect(page.get_by_test_id("chart-tokens")).to_be_visible()
    report = api_get(console_server, console_server.admin_key, "/admin/usage", group_by="day",
                     **page_range(page))
    assert drawn(page) == totals(report)
    shot(page, "usage-admin")
