"""Kill tests (issue 7): SIGKILL a real backend (vllm-mlx on the tiny model) before and
during streams, then restart it on the same port.

Extends tests/integration/test_router_real.py::test_sigkill_before_and_during_stream_then_recovery
(one stream killed mid-way, circuit-open skip, pinned failure, half-open close) with:
- a kill while idle, circuit closed and health still "healthy": the next request fails
  over at once (nothing listens: no retry, no timeout), and the health badge says down;
- a failed half-open probe while the server is still dead (the circuit re-opens and its
  timer restarts), then recovery through half-open after the restart, with the background
  health loop running, so the badge comes back to healthy by itself;
- a kill with three requests in flight at once: two streams past their first tokens keep
  their partial text (``Done`` with the error, through ``stream`` and ``complete``), and
  one request the frozen server had accepted but not answered (SIGSTOP, then SIGKILL)
  fails over to the backup before its first token.

The backup is the session mlx-lm server (never killed). Figures: kills, failovers before
the first token, partial answers kept, recoveries through half-open, lost answers.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.reliability.conftest import Figures, run_bounded
from tests.support.servers import ManagedServer
from timmy_magic import Router
from timmy_magic.config import parse_config
from timmy_magic.model.chat import Delta, Done, Result

pytestmark = pytest.mark.integration
PART = "kill tests"
LABELS = ("kills", "failovers before the first token", "partial answers kept",
          "recoveries through half-open", "lost answers")
SLACK = 1.0


@pytest.fixture
def alive(running_vllm_cb: ManagedServer) -> ManagedServer:
    """The suite's private vllm-mlx (never the shared one), running."""
    return running_vllm_cb


def make_router(victim: ManagedServer, backup: ManagedServer, breaker: str) -> Router:
    text = (
        "cascade: {connect_timeout_seconds: 1, first_token_timeout_seconds: 8,"
        " idle_timeout_seconds: 8, health_timeout_seconds: 1, max_retries_per_provider: 1,"
        f" retry_delay_seconds: 0.05, circuit_breaker: {breaker}}}\nproviders:\n"
        f"  - {{name: victim, type: vllm_mlx, priority: 1, base_url: '{victim.base_url}',"
        f" models: [{{name: {victim.model}}}]}}\n"
        f"  - {{name: backup, type: mlx_lm, priority: 2, base_url: '{backup.base_url}'}}\n")
    return Router(parse_config(text, source="kill.yaml", env={}))


def consistent(r: Router) -> None:
    for name, m in r.metrics().items():
        assert m.requests == m.successes + m.failures + m.cancelled, (name, m)
        assert m.in_flight == 0, (name, m)


def wait_for(cond, limit: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def test_kill_while_idle_then_recover_through_half_open(alive, mlx_lm_server, figures: Figures):
    part = figures.part(PART, *LABELS)
    with make_router(alive, mlx_lm_server,
                     "{failure_threshold: 1, recovery_timeout: 0.6}") as r:
        assert r.check_health()["victim"].state == "healthy"
        assert r.complete("warm up", max_tokens=2).provider == "victim"
        alive.kill()
        part.add("kills")
        # circuit closed and last health "healthy": the request still goes to the victim,
        # finds nothing listening and fails over at once (no retry: a candidate remains)
        events, took = run_bounded(lambda: list(r.stream("hi", max_tokens=2)), 15)
        res = events[-1].result
        part.add("lost answers", res.text != "".join(e.text for e in events
                                                     if isinstance(e, Delta)))
        assert res.provider == "backup" and res.ok
        failed = [a for a in res.trace.attempts if a.provider == "victim"]
        assert len(failed) == 1 and "cannot connect" in failed[0].error
        assert took < 1 + SLACK, f"failover took {took:.2f}s"
        part.add("failovers before the first token")
        assert r.health()["victim"].circuit == "open"
        r.start_health_loop(interval=0.2)  # from now on (it would have seen the kill first)
        assert wait_for(lambda: r.health()["victim"].endpoints[0].state == "down", 2)
        # still dead when the circuit turns half-open: the probe fails, it opens again
        assert wait_for(lambda: r.health()["victim"].circuit == "half_open", 2)
        opened = r.provider("victim").endpoints[0].breaker.times_opened
        res = r.complete("hi", max_tokens=2)
        assert res.provider == "backup"
        assert [a.provider for a in res.trace.attempts] == ["victim", "backup"]
        breaker = r.provider("victim").endpoints[0].breaker
        assert breaker.times_opened == opened + 1 and r.health()["victim"].circuit == "open"
        part.add("failovers before the first token")
        # restart on the same port: the health loop sees it, the half-open probe closes it
        alive.restart()
        assert wait_for(lambda: r.health()["victim"].endpoints[0].state == "healthy", 3)
        assert wait_for(lambda: r.health()["victim"].circuit == "half_open", 2)
        res = r.complete("back again?", max_tokens=2)
        assert res.provider == "victim" and res.ok
        assert r.health()["victim"].circuit == "closed"
        assert r.health()["victim"].state == "healthy"
        part.add("recoveries through half-open")
        consistent(r)
        m = r.metrics()["victim"]
        assert (m.requests, m.successes, m.failures) == (4, 2, 2)


class Stream:
    """One request consumed on its own thread: its deltas and its final result."""

    def __init__(self, r: Router, prompt: str, *, complete: bool = False,
                 max_tokens: int = 3000) -> None:
        self.max_tokens = max_tokens
        self.deltas: list[str] = []
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.complete = complete
        self._thread = threading.Thread(target=self._run, args=(r, prompt), daemon=True)
        self._thread.start()

    def _run(self, r: Router, prompt: str) -> None:
        try:
            if self.complete:
                self.result = r.complete(prompt, max_tokens=self.max_tokens)
                return
            for ev in r.stream(prompt, max_tokens=self.max_tokens):
                if isinstance(ev, Delta):
                    self.deltas.append(ev.text)
                elif isinstance(ev, Done):
                    self.result = ev.result
        except BaseException as exc:
            self.error = exc

    def join(self, limit: float) -> None:
        self._thread.join(limit)
        assert not self._thread.is_alive(), "request did not end: a hang"


def test_kill_with_requests_in_flight_before_and_after_first_token(alive, mlx_lm_server,
                                                                   figures: Figures):
    part = figures.part(PART, *LABELS)
    with make_router(alive, mlx_lm_server,
                     "{failure_threshold: 5, recovery_timeout: 30}") as r:
        assert r.complete("warm up", max_tokens=2).provider == "victim"
        streams = [Stream(r, "Tell me a very long story"), Stream(r, "Count to a thousand")]
        whole = Stream(r, "Write a long essay", complete=True)
        assert wait_for(lambda: all(len(s.deltas) >= 3 for s in streams), 15), \
            [len(s.deltas) for s in streams]
        time.sleep(0.2)  # the complete() request has had its first tokens too
        os.killpg(alive.pid, signal.SIGSTOP)  # frozen: accepts, never answers
        try:
            seen = [len(s.deltas) for s in streams]
            late = Stream(r, "hello?", max_tokens=8)  # sent to the frozen victim: no first token
            time.sleep(0.5)
            assert late.result is None and late.error is None
        finally:
            alive.kill()  # SIGKILL the group (a stopped process dies at once)
        part.add("kills")
        for s in (*streams, whole, late):
            s.join(15)
            assert s.error is None, repr(s.error)
        kept = [s for s in (*streams, late) if s.result is not None]
        part.add("lost answers", sum(s.result.text != "".join(s.deltas) for s in kept))
        for s, before in zip(streams, seen):
            res = s.result
            assert res.provider == "victim" and res.error and "connection" in res.error
            assert res.text == "".join(s.deltas) and len(s.deltas) >= before >= 3
            assert res.trace.attempts[-1].outcome == "broken"
            part.add("partial answers kept")
        res = whole.result
        assert res.provider == "victim" and res.error and res.text, res
        part.add("partial answers kept")
        res = late.result
        assert res.provider == "backup" and res.ok
        assert [a.outcome for a in res.trace.attempts] == ["failed", "answered"]
        assert "connection" in res.trace.attempts[0].error
        part.add("failovers before the first token")
        consistent(r)
        m = r.metrics()["victim"]
        assert (m.requests, m.successes, m.failures) == (5, 1, 4)
        assert r.health()["victim"].circuit == "closed", "4 failures < threshold 5"
