"""Fixtures for the panel tests: a loopback FaultServer, routers built from YAML text, and a
manual timer so coalesced flushes run exactly when a test says so."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from tests.support.faultserver import FaultServer
from timmy_magic import Router
from timmy_magic.config import parse_config

CASCADE = ("cascade:\n  connect_timeout_seconds: 1\n  first_token_timeout_seconds: 3\n"
           "  idle_timeout_seconds: 2\n  health_timeout_seconds: 0.5\n"
           "  max_retries_per_provider: 0\n  retry_delay_seconds: 0.01\n")


def prov(name: str, url: str, prio: int, extra: str = "", type_: str = "vllm_mlx") -> str:
    return (f"  - {{name: {name}, type: {type_}, priority: {prio}, base_url: '{url}', "
            f"models: [{{name: fault-model}}]{', ' + extra if extra else ''}}}\n")


def make_router(providers: str, gate: str = "") -> Router:
    text = f"{CASCADE}{gate}\nproviders:\n{providers or '  []'}"
    return Router(parse_config(text, source="test.yaml", env={}))


class ManualTimers:
    """A ``schedule`` for Panel: records (delay, fn); ``run()`` fires what is due."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending: list[tuple[float, Callable[[], None], list[bool]]] = []
        self.scheduled = 0

    def __call__(self, delay: float, fn: Callable[[], None]) -> Callable[[], None]:
        cancelled = [False]
        with self._lock:
            self.pending.append((delay, fn, cancelled))
            self.scheduled += 1
        return lambda: cancelled.__setitem__(0, True)

    def run(self) -> int:
        with self._lock:
            due, self.pending = self.pending, []
        live = [fn for _d, fn, cancelled in due if not cancelled[0]]
        for fn in live:
            fn()
        return len(live)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    with FaultServer(cap=10) as s:
        yield s


@pytest.fixture
def timers() -> ManualTimers:
    return ManualTimers()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
