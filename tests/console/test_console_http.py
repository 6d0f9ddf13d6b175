"""The console's server side through a real server and httpx: the security headers, the session
cookie's flags, when the API accepts that cookie (only with `x-flintlm-console: 1` and no
Authorization), sign-in, revocation and logout, the prices endpoint, and `--no-console`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from flintlm.api.session_cookie import CONSOLE_HEADER, COOKIE_NAME
from tests.conftest import HANG_TIMEOUT_S, start_server

from .conftest import ConsoleServer

CONSOLE = {CONSOLE_HEADER: "1"}


@contextmanager
def _signed_in(server: ConsoleServer, secret: str) -> Iterator[httpx.Client]:
    """A client holding a console session (the cookie only; it sends no secret again)."""
    with httpx.Client(base_url=server.base_url, timeout=HANG_TIMEOUT_S) as client:
        response = client.post("/console/session", json={"secret": secret}, headers=CONSOLE)
        assert response.status_code == 200, response.text
        assert client.cookies.get(COOKIE_NAME)
        yield client


def test_every_console_response_carries_a_strict_csp(console_server: ConsoleServer) -> None:
    with httpx.Client(base_url=console_server.base_url, timeout=HANG_TIMEOUT_S) as client:
        responses = [client.get("/console"), client.get("/console/static/app.js"),
                     client.get("/console/static/console.css"),
                     client.get("/console/static/nothing.js"),
                     client.get("/console/static/%2e%2e/routes.py"),
                     client.get("/console/session")]  # 400: no console header
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 404, 400]
    assert responses[0].headers["content-type"].startswith("text/html")
    assert responses[1].headers["content-type"].startswith("text/javascript")
    for response in responses:
        csp = response.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["object-src"] == "'none'"
        assert "unsafe" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    with httpx.Client(base_url=console_server.base_url, timeout=HANG_TIMEOUT_S) as client:
        api = client.get("/health")
    assert "content-security-policy" not in api.headers  # the API's responses are left alone


def test_the_console_ships_no_inline_script_or_style(console_server: ConsoleServer) -> None:
    with httpx.Client(base_url=console_server.base_url, timeout=HANG_TIMEOUT_S) as client:
        html = client.get("/console").text
    assert "<script" in html and "src=\"/console/static/app.js\"" in html
    assert "<style" not in html and "style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None  # no inline handlers (onclick=...)
    assert "http://" not in html and "https://" not in html  # nothing from another origin


def test_sign_in_sets_an_httponly_strict_cookie_that_is_not_the_secret(
        console_server: ConsoleServer) -> None:
    key = console_server.create_key("cookie")
    with httpx.Client(base_url=console_server.base_url, timeout=HANG_TIMEOUT_S) as client:
        response = client.post("/console/session", json={"secret": key.secret}, headers=CONSOLE)
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "key" and response.json()["key_id"] == key.id
    assert key.secret not in response.text
    cookie = response.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert "httponly" in flags and flags["samesite"].lower() == "samesite=strict"
    assert flags["path"] == "Path=/"
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert len(session_id) >= 40 and key.secret not in cookie and key.id not in cookie
    assert response.headers["cache-control"] == "no-store"


def test_sign_in_refuses_a_bad_secret_a_missing_header_and_a_secret_in_the_url(
        console_server: ConsoleServer) -> None:
    key = console_server.create_key("refusals")
    with httpx.Client(base_url=console_server.base_url, timeout=HANG_TIMEOUT_S) as client:
        wrong = client.post("/console/session", json={"secret": "flint-sk-" + "x" * 43},
                            headers=CONSOLE)
        no_header = client.post("/console/session", json={"secret": key.secret})
        in_url = client.post("/console/session", params={"secret": key.secret}, headers=CONSOLE)
        as_form = client.post("/console/session", data={"secret": key.secret}, headers=CONSOLE)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert no_header.status_code == 400
    assert no_header.json()["error"]["code"] == "console_header_required"
    # only a JSON body counts: a secret put in the query string (or a form) signs nobody in
    assert in_url.status_code == 400 and as_form.status_code == 400
    for response in (wrong, no_header, in_url, as_form):
        assert "set-cookie" not in response.headers


def test_the_api_takes_the_cookie_only_with_the_console_header(
        console_server: ConsoleServer) -> None:
    key = console_server.create_key("header")
    with _signed_in(console_server, key.secret) as client:
        assert client.get("/v1/usage", headers=CONSOLE).status_code == 200
        prices = client.get("/v1/prices", headers=CONSOLE)
        # a cross-site form or a plain link sends the cookie but cannot add the header
        assert client.get("/v1/usage").status_code == 401
        assert client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).status_code == 401
        # an explicit Authorization header wins over the session, even a wrong one
        wrong = {**CONSOLE, "Authorization": "Bearer flint-sk-" + "y" * 43}
        assert client.get("/v1/usage", headers=wrong).status_code == 401
        assert client.get("/admin/keys", headers=CONSOLE).status_code == 403  # a key, not admin
    assert prices.status_code == 200
    [price] = prices.json()["data"]
    assert price["model"] == "default" and {"input", "cached_input", "output"} <= set(price)


def test_an_admin_session_reaches_the_admin_api(console_server: ConsoleServer) -> None:
    with _signed_in(console_server, console_server.admin_key) as client:
        assert client.get("/console/session", headers=CONSOLE).json()["role"] == "admin"
        assert client.get("/admin/keys", headers=CONSOLE).status_code == 200
        assert client.get("/admin/keys").status_code == 401
        # the admin key is not an API key, through a session neither
        assert client.get("/v1/usage", headers=CONSOLE).status_code == 401


def test_revoking_the_key_ends_its_sessions(console_server: ConsoleServer) -> None:
    key = console_server.create_key("revoked")
    with _signed_in(console_server, key.secret) as client:
        assert client.get("/v1/usage", headers=CONSOLE).status_code == 200
        with console_server.platform.admin() as admin:
            assert admin.delete(f"/admin/keys/{key.id}").status_code == 200
        refused = client.get("/v1/usage", headers=CONSOLE)
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
        who = client.get("/console/session", headers=CONSOLE).json()
        assert who["role"] is None and "revoked" in who["reason"]


def test_logout_ends_the_session(console_server: ConsoleServer) -> None:
    key = console_server.create_key("logout")
    with _signed_in(console_server, key.secret) as client:
        session_id = client.cookies[COOKIE_NAME]
        assert client.delete("/console/session", headers=CONSOLE).status_code == 200
        assert not client.cookies.get(COOKIE_NAME)
        replayed = {"Cookie": f"{COOKIE_NAME}={session_id}", **CONSOLE}
        assert client.get("/v1/usage", headers=replayed).status_code == 401
        assert client.get("/console/session", headers=replayed).json()["role"] is None


@pytest.fixture(scope="module")
def no_console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    live = start_server(tmp_path_factory.mktemp("no-console"), "--no-console", api_key=None)
    yield live.url
    live.stop()


def test_no_console_serves_no_console(no_console_server: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=no_console_server, timeout=HANG_TIMEOUT_S) as client:
        assert client.get("/console").status_code == 404
        assert client.get("/console/static/app.js").status_code == 404
        assert client.post("/console/session", json={"secret": "x"},
                           headers=CONSOLE).status_code in (404, 405)
    # the API itself is unchanged (open mode: no key configured)
    client = openai.OpenAI(base_url=f"{no_console_server}/v1", api_key="none", max_retries=0)
    assert client.models.list().data[0].id == "default"
