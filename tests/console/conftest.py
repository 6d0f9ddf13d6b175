"""Fixtures of the web console's tests: one real `flintlm serve` for tests/console and its
subfolders (embedded model, SQLite store, an admin key), and a real headless Chromium (Debian's
/usr/bin/chromium) driven by Playwright. Nothing is downloaded: Playwright only launches the
system browser.

The server is shared (a start costs more than most of these tests): each test issues keys of
its own and reads only their data, or compares what two views show at the same moment.

Browser tests skip, with the reason, when Playwright or Chromium is missing; with
FLINTLM_REQUIRE_BROWSER=1 (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from tests.platform.served import ADMIN_KEY, IssuedKey, PlatformServer, platform_servers

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "docs" / "console"
# Browser waits end as soon as their condition holds; the limit only bounds a hang on a slow,
# busy machine (a streamed answer of the tiny model takes a second or two on a quiet one).
BROWSER_TIMEOUT_MS = 120_000


@dataclass
class ConsoleServer:
    """A live server with the console on, and the means to issue keys on it."""

    platform: PlatformServer
    admin_key: str = ADMIN_KEY
    keys: list[IssuedKey] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.platform.url

    def create_key(self, name: str = "console-test", **body: Any) -> IssuedKey:
        """A new `flint-sk-` key, issued through the admin API (`body`: its limits, models)."""
        key = self.platform.create_key(name, **body)
        self.keys.append(key)
        return key

    def log(self) -> str:
        return self.platform.live.log()


def start_console_server(log_dir: Path, *extra: str) -> Iterator[ConsoleServer]:
    """A platform server with the console on; small answers keep the browser tests short."""
    store = sa.URL.create("sqlite+pysqlite", database=str(log_dir / "flintlm.db"))
    with platform_servers(log_dir, store.render_as_string(), "--default-max-tokens", "16",
                          *extra) as [server]:
        yield ConsoleServer(server)


@pytest.fixture(scope="package")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    yield from start_console_server(tmp_path_factory.mktemp("console"))


def _missing_browser() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; never " \
               "`playwright install`: the tests use the system Chromium)"
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    return None


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Headless Chromium, one for tests/console and its subfolders. Not the session: Playwright's
    sync API keeps an event loop running on the main thread while it is open, and every later
    test that calls asyncio.run() would fail ("cannot be called from a running event loop")."""
    reason = _missing_browser()
    if reason is not None:
        if os.environ.get("FLINTLM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FLINTLM_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


@dataclass
class PageEvents:
    """What a page did that a test may need to rule out: dialogs (alert() and the like),
    uncaught script errors, CSP violations in the console log, and every URL it requested."""

    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    request_urls: list[str] = field(default_factory=list)


@pytest.fixture
def page_events() -> PageEvents:
    return PageEvents()


@pytest.fixture
def page(browser: Browser, page_events: PageEvents) -> Iterator[Page]:
    """A fresh page in a fresh context (no cookies), its events recorded in `page_events`."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    new_page = context.new_page()

    def on_dialog(dialog: Any) -> None:
        page_events.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    new_page.on("dialog", on_dialog)
    new_page.on("pageerror", lambda error: page_events.page_errors.append(str(error)))
    new_page.on("console", lambda message: page_events.console_errors.append(message.text)
                if message.type == "error" else None)
    new_page.on("request", lambda request: page_events.request_urls.append(request.url))
    yield new_page
    context.close()


def sign_in(page: Page, base_url: str, secret: str) -> None:
    """Sign in through the console's form and wait for the nav."""
    page.goto(f"{base_url}/console")
    page.get_by_test_id("signin-secret").fill(secret)
    page.get_by_test_id("signin-submit").click()
    page.get_by_test_id("nav").wait_for(state="visible")


def shot(page: Page, name: str) -> None:
    """docs/console/<name>.png, only with FLINTLM_CONSOLE_SCREENSHOTS=1 (CI leaves docs alone)."""
    if os.environ.get("FLINTLM_CONSOLE_SCREENSHOTS") != "1":
        return
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"{name}.png"), full_page=True)
