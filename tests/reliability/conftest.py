"""Shared pieces of the reliability suite (issue 7): the figures every part prints, and a
bounded runner that turns a hang into a counted, reported failure instead of a stuck run.

Each test module records its counts in ``figures`` under its part name; at the end of
the session ``pytest_terminal_summary`` writes one line per part (also under ``-q``), so
the numbers land in the CI log and the README's Reliability section.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


@dataclass
class Part:
    """Counts of one part of the suite, printed as ``<title>: <n> <label>, ...``."""

    title: str
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, n: int = 1) -> None:
        self.counts[label] = self.counts.get(label, 0) + n

    def set(self, label: str, n: int) -> None:
        self.counts[label] = n

    def line(self) -> str:
        body = ", ".join(f"{n} {label}" for label, n in self.counts.items())
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{self.title}: {body}{extra}"


class Figures:
    def __init__(self) -> None:
        self.parts: dict[str, Part] = {}
        self.lock = threading.Lock()

    def part(self, title: str, *labels: str) -> Part:
        """The part called ``title``; ``labels`` fix the order of its counts (all 0)."""
        with self.lock:
            if title not in self.parts:
                self.parts[title] = Part(title, dict.fromkeys(labels, 0))
            return self.parts[title]


_KEY = pytest.StashKey[Figures]()


def _figures(config: pytest.Config) -> Figures:
    if _KEY not in config.stash:
        config.stash[_KEY] = Figures()
    return config.stash[_KEY]


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    return _figures(request.config)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    figs = config.stash.get(_KEY, None)
    if figs is None or not figs.parts:
        return
    terminalreporter.section("reliability figures", sep="-")
    for part in figs.parts.values():
        terminalreporter.write_line(part.line())


# ------------------------------------------------------------------ bounded calls


class Hang(AssertionError):
    """The call did not return within its bound: counted as a hang."""


def run_bounded(fn: Callable[[], T], limit: float) -> tuple[T, float]:
    """Run ``fn`` in a daemon thread; return (its value, wall seconds) or raise ``Hang``
    after ``limit`` seconds (the thread is abandoned: a hang must not stop the suite)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=target, name="bounded-call", daemon=True)
    th.start()
    th.join(limit)
    took = time.monotonic() - t0
    if th.is_alive():
        raise Hang(f"no return within {limit:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"], took


# ------------------------------------------------------------------ a real server to kill


@pytest.fixture(scope="session")
def vllm_cb(tiny_model_dir: Any, server_log_dir: Any) -> Iterator[Any]:
    """A private vllm-mlx with continuous batching (its default engine answers concurrent
    requests with an in-stream "busy; retry later" error), shared by the load and kill
    tests. Kill tests leave it dead; ``running_vllm_cb`` restarts it on the same port."""
    import os
    import signal

    from tests.support.servers import start_vllm_mlx

    srv = start_vllm_mlx(tiny_model_dir, extra_args=["--continuous-batching"],
                         log_dir=server_log_dir)
    try:
        yield srv
    finally:
        if srv.pid is not None:
            try:
                os.killpg(srv.pid, signal.SIGCONT)  # a stopped group ignores SIGTERM
            except (ProcessLookupError, PermissionError):
                pass
        srv.stop()


@pytest.fixture
def running_vllm_cb(vllm_cb: Any) -> Any:
    if not vllm_cb.is_running():
        vllm_cb.restart()
    return vllm_cb
