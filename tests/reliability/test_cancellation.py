"""Cancellation at every await point of one request, and the lifecycle faults of issue 11.

``CancelAt`` runs a request's coroutine and cancels its task exactly at its k-th
suspension (the task is cancelled while it runs, so the cancel lands at the await that
suspends next, as a kernel interrupt would). Swept over every k of a full request, with
the breaker half-open (the state where a leaked probe slot shows), then the router's
state must be what it was: no probe slot held, nothing in flight, no outstanding request,
and the next request answers.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Coroutine, Generator, Iterator
from typing import Any

import pytest

from timmy_magic.config import parse_config
from timmy_magic.model.chat import ChatRequest, Delta, Done
from timmy_magic.model.errors import ProviderError, RoutingError
from timmy_magic.providers import base as base_mod
from timmy_magic.routing.breaker import CircuitBreaker
from timmy_magic.routing.router import Router

from ..support.faultserver import Blackhole, FaultServer, closed_port
from ..support.scriptserver import ScriptServer, sse
from .conftest import Figures


class CancelAt:
    """Await ``coro``; cancel the running task at its ``k``-th suspension (0: never)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], k: int) -> None:
        self.coro, self.k, self.suspensions = coro, k, 0

    def __await__(self) -> Generator[Any, Any, Any]:
        it = self.coro.__await__()
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                out = it.throw(throw) if throw is not None else it.send(send)
            except StopIteration as stop:
                return stop.value
            self.suspensions += 1
            if self.suspensions == self.k:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
            try:
                send, throw = (yield out), None
            except BaseException as exc:
                send, throw = None, exc


async def _consume(r: Router, req: ChatRequest) -> str:
    text = ""
    async for ev in r.astream(req):
        if isinstance(ev, Delta):
            text += ev.text
        if isinstance(ev, Done):
            return ev.result.text
    return text


def _run_cancelled(r: Router, req: ChatRequest, k: int) -> tuple[str, int]:
    async def main() -> tuple[str, int]:
        gate = CancelAt(_consume(r, req), k)

        async def wrapped() -> Any:
            return await gate

        task = asyncio.ensure_future(wrapped())
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled", gate.suspensions
        except RoutingError:
            pass
        return "finished", gate.suspensions

    return r.runner.run(main(), timeout=20)


def _half_open(r: Router) -> CircuitBreaker:
    br = r.provider("p").endpoints[0].breaker
    br.opened_at = time.monotonic() - br.recovery_timeout - 1
    br.half_open_in_flight = 0
    return br


def _assert_clean(r: Router) -> None:
    st = r.provider("p")
    ep = st.endpoints[0]
    assert ep.breaker.half_open_in_flight == 0, "a probe slot leaked"
    assert ep.outstanding == 0
    assert r.metrics()["p"].in_flight == 0
    if ep.launcher is not None:
        assert ep.launcher.state != "starting" or ep.launcher.running()


def _sweep(r: Router, figures: Figures, label: str, half_open: bool = True) -> int:
    req = ChatRequest.of("hi", max_tokens=4)
    br = _half_open(r) if half_open else r.provider("p").endpoints[0].breaker
    outcome, total = _run_cancelled(r, req, 0)
    assert outcome == "finished"
    points = 0
    for k in range(1, total + 3):
        if half_open:
            br = _half_open(r)
        outcome, _ = _run_cancelled(r, req, k)
        _assert_clean(r)
        points += outcome == "cancelled"
        assert br.available(time.monotonic()), f"{label}: circuit unusable after cancel at {k}"
    assert points >= total - 2, (points, total)  # nearly every point was really hit
    if half_open:
        _half_open(r)
        assert r.complete("again", max_tokens=4).ok
    figures.part("cancellation", "cancel points").add("cancel points", points)
    return points


def _yaml(url: str, extra: str = "", type_: str = "openai_compatible") -> str:
    return ("cascade: {max_retries_per_provider: 1, retry_delay_seconds: 0.01,"
            " health_timeout_seconds: 2}\n"
            f"providers:\n  - {{name: p, type: {type_}, base_url: '{url}',"
            f" models: [{{name: m}}]{extra}}}\n")


@pytest.fixture
def script() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        srv.script([sse({"model": "m", "choices": [{"delta": {"content": w}}]})
                    for w in ("a", "b", "c")]
                   + [sse({"choices": [], "usage": {"prompt_tokens": 1,
                                                    "completion_tokens": 3}}),
                      b"data: [DONE]\n\n"], pause=0.002)
        yield srv


@pytest.mark.parametrize("type_", ["openai_compatible", "ollama"])
def test_cancel_at_every_await_point_of_one_request(script: ScriptServer, type_: str,
                                                   figures: Figures) -> None:
    if type_ == "ollama":
        import json
        script.script([json.dumps({"model": "m", "message": {"content": w},
                                   "done": False}).encode() + b"\n" for w in "abc"]
                      + [b'{"done": true, "eval_count": 3}\n'],
                      content_type="application/x-ndjson", pause=0.002)
    with Router(parse_config(_yaml(script.url, type_=type_), source="t.yaml", env={})) as r:
        assert _sweep(r, figures, type_) >= 5


def test_cancel_at_every_await_point_with_a_retry(figures: Figures) -> None:
    """The retry's sleep and the failed first attempt are await points too."""
    with FaultServer() as fs:
        url = fs.base_url("status", code=503)
        yaml = _yaml(url).replace("health_timeout_seconds: 2}",
                                  "health_timeout_seconds: 2,"
                                  " circuit_breaker: {failure_threshold: 100000}}")
        with Router(parse_config(yaml, source="t.yaml", env={})) as r:
            assert _sweep(r, figures, "retry", half_open=False) >= 3


def test_cancel_while_a_managed_server_starts_releases_the_probe_slot(
        tmp_path: Any, figures: Figures) -> None:
    """Reproduced: interrupting a cell while a managed server started left the provider
    "circuit open, retry in 0s" forever. Now the permit is given back and the half-started
    process is stopped."""
    port = closed_port()  # nothing answers there
    cmd = f"['{sys.executable}', -c, 'import time; time.sleep(60)']"
    extra = f", launch: {{command: {cmd}, ready_timeout: 30}}"
    with Router(parse_config(_yaml(f"http://127.0.0.1:{port}", extra),
                             source="t.yaml", env={})) as r:
        br = _half_open(r)
        launcher = r.provider("p").endpoints[0].launcher
        assert launcher is not None
        events = r.stream("hi", max_tokens=4)
        for ev in events:
            if getattr(ev, "message", "").startswith("starting"):
                break
        pid = launcher.pid
        assert pid is not None and launcher.state == "starting"
        events.close()  # what a kernel interrupt does to the stream
        assert br.half_open_in_flight == 0 and br.available(time.monotonic())
        assert launcher.state == "stopped" and "interrupted" in launcher.message
        assert r.metrics()["p"].in_flight == 0
        figures.part("cancellation", "cancel points").add("cancel points", 1)


def test_a_broken_backend_factory_fails_over_and_leaks_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from timmy_magic.config import provider_types
    from timmy_magic.providers import registry as registry

    kind = registry.ProviderKind("broken_kind", cloud=False, default_url="http://127.0.0.1:1",
                                 needs_key=False, factory="nowhere.at.all:make")
    monkeypatch.setitem(provider_types._TYPES, "broken_kind", kind)
    with FaultServer() as fs:
        yaml = ("cascade: {max_retries_per_provider: 0}\nproviders:\n"
                "  - {name: p, type: broken_kind, priority: 1}\n"
                f"  - {{name: ok, type: openai_compatible, priority: 2,"
                f" base_url: '{fs.base_url('ok')}', models: [{{name: m}}]}}\n")
        with Router(parse_config(yaml, source="t.yaml", env={})) as r:
            br = _half_open(r)
            res = r.complete("hi")
            assert res.provider == "ok"
            assert "backend could not be built" in (res.trace.attempts[0].error or "")
            assert br.half_open_in_flight == 0 and r.metrics()["p"].in_flight == 0


# ---------------------------------------------------------------- lifecycle


def test_a_reload_lets_a_running_stream_finish_on_its_old_backend(tmp_path: Any) -> None:
    """Reproduced: a reload that only changed a priority cut a stream at 9 of 30
    characters with "connection dropped". Now the stream ends whole; the old backend
    closes after it."""
    with ScriptServer() as srv:
        srv.script([sse({"model": "m", "choices": [{"delta": {"content": "x"}}]})
                    for _ in range(30)] + [b"data: [DONE]\n\n"], pause=0.03)
        path = tmp_path / "providers.yaml"
        path.write_text(_yaml(srv.url))
        with Router.from_config(str(path)) as r:
            old_ep = r.provider("p").endpoints[0]
            text = ""
            for ev in r.stream("hi"):
                if isinstance(ev, Delta):
                    text += ev.text
                    if len(text) == 5:
                        path.write_text(_yaml(srv.url).replace("name: p,",
                                                               "name: p, priority: 7,"))
                        r.reload(str(path))
                        assert r.provider("p").cfg.priority == 7
                if isinstance(ev, Done):
                    assert ev.result.ok, ev.result.error
            assert text == "x" * 30
            deadline = time.monotonic() + 5
            while old_ep.backend is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert old_ep.retired and old_ep.backend is None
            assert r.complete("again").text == "x" * 30


def test_listeners_hear_pin_and_reload_on_the_loop_thread(tmp_path: Any) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(_yaml("http://127.0.0.1:9"))
    with Router.from_config(str(path)) as r:
        heard: list[tuple[str, bool]] = []
        r.subscribe(lambda kind: heard.append((kind, r.runner.on_loop())))
        r.pin("p")
        r.reload(str(path))
        r.set_local_only(True)
        kinds = {k for k, _ in heard}
        assert {"pin", "config", "gate"} <= kinds
        assert all(on_loop for _, on_loop in heard), heard


def test_an_interrupted_health_check_leaves_no_badge_on_checking() -> None:
    with Blackhole() as bh:
        with Router(parse_config(_yaml(bh.url), source="t.yaml", env={})) as r:
            fut = r.runner.submit(r.acheck_health())
            deadline = time.monotonic() + 3
            while not r.health()["p"].checking and time.monotonic() < deadline:
                time.sleep(0.01)
            assert r.health()["p"].checking
            fut.cancel()
            deadline = time.monotonic() + 3
            while r.health()["p"].checking and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not r.health()["p"].checking


def test_the_quota_command_never_runs_on_the_loop(tmp_path: Any) -> None:
    """Reproduced: a quota command (subprocess.run, up to 2 s) ran inside route planning
    and stalled every stream. Now it runs in a worker thread; the loop stays free."""
    with FaultServer() as fs:
        yaml = ("metabolic: {quota: {command: [sh, -c, 'sleep 1.5; echo active'],"
                " timeout_seconds: 3, ttl_seconds: 0.01}}\n" + _yaml(fs.base_url("ok")))
        with Router(parse_config(yaml, source="t.yaml", env={})) as r:
            r.complete("warm")  # backends built
            box: list[Any] = []
            t = threading.Thread(target=lambda: box.append(r.complete("hi")), daemon=True)
            t.start()
            time.sleep(0.3)  # the request is waiting for the quota command now
            gaps = []
            for _ in range(5):
                t0 = time.monotonic()
                r.runner.run(asyncio.sleep(0), timeout=5)
                gaps.append(time.monotonic() - t0)
                time.sleep(0.1)
            t.join(10)
            assert box and box[0].ok
            assert max(gaps) < 0.75, gaps  # blocked, one of them would take ~1.2 s


def test_a_provider_error_is_never_its_own_cause() -> None:
    err = ProviderError("x", provider="p")
    assert base_mod.map_error(err, "p") is err
    try:
        with base_mod.mapped_errors("p"):
            raise err
    except ProviderError as caught:
        assert caught is err and caught.__cause__ is not caught
    try:
        with base_mod.mapped_errors("p"):
            raise KeyError("k")
    except ProviderError as caught:
        assert isinstance(caught.__cause__, KeyError) and caught.__cause__.__traceback__ is None


def test_a_broken_plugin_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from timmy_magic.config import provider_types

    ep = metadata.EntryPoint("evil", "no_such_module_xyz:kind", provider_types.ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [ep])
    monkeypatch.setattr(provider_types, "_scanned", False)
    with pytest.warns(UserWarning, match="provider plugin 'evil'.*no_such_module_xyz"):
        provider_types._load_entry_points()


def test_a_deadline_that_passes_before_any_try_says_so() -> None:
    """Reproduced: a tiny timeout_seconds gave "no provider could be tried: " and nothing."""
    ticks = iter(range(0, 10_000, 50))
    yaml = ("cascade: {timeout_seconds: 1}\nproviders:\n"
            "  - {name: p, type: openai_compatible, base_url: 'http://127.0.0.1:9'}\n")
    with Router(parse_config(yaml, source="t.yaml", env={}),
                clock=lambda: float(next(ticks))) as r:
        with pytest.raises(RoutingError, match=r"deadline \(timeout_seconds=1\) passed before"):
            r.complete("hi")
