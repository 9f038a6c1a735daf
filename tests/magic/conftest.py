"""Fixtures for the %%llm / %llm tests: a fresh in-process IPython shell, a fault server,
and a providers.yaml written into tmp_path and selected with TIMMY_PROVIDERS."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.faultserver import FaultServer

FAST_CASCADE = {
    "timeout_seconds": 15, "connect_timeout_seconds": 1, "first_token_timeout_seconds": 5,
    "idle_timeout_seconds": 5, "health_timeout_seconds": 1, "health_interval_seconds": 60,
    "max_retries_per_provider": 0, "retry_delay_seconds": 0,
}
WriteProviders = Callable[..., Path]


@pytest.fixture(scope="module")
def fault() -> Iterator[FaultServer]:
    with FaultServer(cap=20) as srv:
        yield srv


@pytest.fixture
def write_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WriteProviders:
    """``write_providers([{name, type, base_url, ...}], **top_level)`` -> path, selected
    through TIMMY_PROVIDERS."""

    def write(providers: list[dict[str, Any]], name: str = "providers.yaml",
              **top: Any) -> Path:
        doc = {"cascade": {**FAST_CASCADE, **top.pop("cascade", {})}, **top,
               "providers": providers}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        monkeypatch.setenv("TIMMY_PROVIDERS", str(path))
        return path

    return write


def local(name: str, url: str, priority: int = 1, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "llama_cpp", "base_url": url, "priority": priority, **kw}


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


def run_shown(shell: Any, source: str) -> tuple[Any, str]:
    """Run a cell as a kernel would (kept in history): its result, and everything it
    showed (stdout, stderr, every display's data) as one string."""
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        res = shell.run_cell(source, store_history=True)
    return res, cap.stdout + cap.stderr + "".join(repr(o.data) for o in cap.outputs)


def sent(srv: FaultServer) -> list[dict[str, Any]]:
    """The JSON bodies of the chat requests ``srv`` received, oldest first."""
    return [r.json for r in srv.requests if r.path.endswith("chat/completions")]

