"""The console of a server in open mode (no key configured anywhere): no sign-in, no admin
pages, no logout; the playground works as the API does, keyless."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.conftest import LiveServer, start_server

from .conftest import PageEvents

if TYPE_CHECKING:
    from playwright.sync_api import Page


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("open"), api_key=None)
    yield live
    live.stop()


def test_open_mode_needs_no_sign_in_and_hides_admin_pages(open_server: LiveServer, page: Page,
                                                          page_events: PageEvents) -> None:
    page.goto(f"{open_server.url}/console")
    page.get_by_test_id("page-playground").wait_for()
    assert page.get_by_test_id("signin").is_hidden()
    assert page.get_by_test_id("logout").is_hidden()
    assert page.get_by_test_id("nav-keys").count() == 0
    assert "open mode" in page.get_by_test_id("whoami").inner_text()
    page.get_by_test_id("pg-max-tokens").fill("4")
    page.get_by_test_id("pg-input").fill("Hi")
    page.get_by_test_id("pg-send").click()
    page.get_by_test_id("msg-stats").wait_for()
    assert page.get_by_test_id("msg-tokens").inner_text().endswith("completion tokens")
    assert page_events.page_errors == []


def test_tools_and_a_bad_schema_reach_the_request_or_the_user(open_server: LiveServer,
                                                              page: Page) -> None:
    page.goto(f"{open_server.url}/console#playground")
    page.get_by_test_id("page-playground").wait_for()
    page.get_by_test_id("pg-schema").fill("{not json")
    page.get_by_test_id("pg-input").fill("Hi")
    page.get_by_test_id("pg-send").click()
    assert "JSON schema is not valid JSON" in page.get_by_test_id("pg-settings-error").inner_text()
    assert page.get_by_test_id("msg-user").count() == 0  # nothing was sent
    page.get_by_test_id("pg-schema").fill("")
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    page.get_by_test_id("pg-tools").fill(json.dumps([tool]))
    page.get_by_test_id("pg-view-code").click()
    page.get_by_test_id("pg-code-tab-javascript").click()
    code = page.get_by_test_id("pg-code").inner_text()
    body = json.loads(code.split("create(", 1)[1].split(");\nfor await", 1)[0])
    assert body["tools"] == [tool]
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
