"""Browser tests: pytest-playwright drives the system Chromium (never a downloaded one)."""

from __future__ import annotations

from typing import Any

import pytest

from .lab import launch_args


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, **launch_args()}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1300, "height": 1000}}
