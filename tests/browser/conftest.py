"""Browser tests: Playwright drives the system Chromium (never a downloaded one).

Playwright's sync API runs an asyncio loop on the main thread while it is open, so it is
opened per module and closed after it: a session-long one (as pytest-playwright keeps)
would make every later ``asyncio.run()`` in the same pytest process fail."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from .lab import launch_args


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(**launch_args())
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context: Any = browser.new_context(viewport={"width": 1300, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()
