"""What the browser tests of the usage, live, request-log and data pages share; they run on
tests/console's one server (`console_server`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from tests.conftest import HANG_TIMEOUT_S
from tests.console.conftest import ConsoleServer
from tests.platform.served import IssuedKey

if TYPE_CHECKING:
    from playwright.sync_api import Page

# A short greedy answer: the page tests wait on the browser, not on the model.
CHAT: dict[str, Any] = {"model": "default", "max_tokens": 4, "temperature": 0,
                        "extra_body": {"ignore_eos": True}}


def chat(server: ConsoleServer, key: IssuedKey, text: str = "Say hi.", **body: Any) -> Any:
    """One chat completion through the real openai SDK; the SDK's answer."""
    return server.platform.openai(key).chat.completions.create(
        **(CHAT | body), messages=[{"role": "user", "content": text}])


def api_get(server: ConsoleServer, secret: str, path: str, **params: Any) -> Any:
    """What the API answers `secret` (the numbers a page must show), as JSON."""
    with httpx.Client(base_url=server.base_url, timeout=HANG_TIMEOUT_S,
                      headers={"Authorization": f"Bearer {secret}"}) as client:
        response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def svg_total(page: Page, testid: str, series: str | None = None) -> float:
    """A chart's `data-total`, or one series's."""
    chart = page.get_by_test_id(testid)
    node = chart.locator(f'g[data-series="{series}"]') if series else chart
    return float(node.get_attribute("data-total") or "nan")


def goto(page: Page, page_id: str) -> None:
    """Open a page through its nav link, as a person would, and wait for its section."""
    page.get_by_test_id(f"nav-{page_id}").click()
    page.get_by_test_id(f"page-{page_id}").wait_for()
