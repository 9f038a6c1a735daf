"""A provider's ``max_concurrency`` holds for every caller of the router: concurrent
requests (cells, background jobs, map, evaluate) wait their turn, say so while they wait,
and a wait past the request's deadline fails it with the reason. Against a real loopback
server that counts what it has in flight."""

from __future__ import annotations

import asyncio

from tests.router.test_router_faults import make_router, prov
from tests.support.faultserver import FaultServer
from timmy_magic.model.chat import Done, Status


def test_concurrent_requests_wait_their_turn_at_a_limited_provider():
    with FaultServer() as srv:
        url = srv.base_url("ok", tokens=4, delay=0.05)
        with make_router(prov("a", url, 1, "max_concurrency: 2")) as r:

            async def one(i: int) -> tuple[bool, list[str]]:
                waits, ok = [], False
                async for ev in r.astream(f"q{i}"):
                    if isinstance(ev, Status) and "free slot" in ev.message:
                        waits.append(ev.message)
                    if isinstance(ev, Done):
                        ok = ev.result.ok
                return ok, waits

            async def all_of() -> list[tuple[bool, list[str]]]:
                return await asyncio.gather(*(one(i) for i in range(6)))

            out = asyncio.run(all_of())
        assert all(ok for ok, _ in out)
        assert srv.peak_in_flight == 2  # never more than its limit at the server
        waited = [w for _, w in out if w]
        assert len(waited) >= 3  # the others were told why they wait
        assert "a takes 2 at once: max_concurrency" in waited[0][0]


def test_a_long_wait_fails_over_with_the_reason_and_the_last_provider_waits_longer():
    """Every slot taken (held here on the router's loop, as a request that never ends
    would): with another provider left, the request waits as long as it would for a first
    token, then goes on, and the trace says why; the last provider waits until the
    request's deadline."""
    with FaultServer() as srv:
        a_url = srv.base_url("ok", tokens=2, delay=0.01)
        b_url = srv.base_url("ok", tokens=2, delay=0.01, p="b")
        providers = prov("a", a_url, 1, "max_concurrency: 1") + prov("b", b_url, 2)
        with make_router(providers, "  timeout_seconds: 4\n") as r:
            slots = r._core.providers["a"].slots
            assert slots is not None
            loop = r.runner.loop
            asyncio.run_coroutine_threadsafe(slots.acquire(), loop).result(5)
            try:
                res = r.complete("short")
            finally:
                loop.call_soon_threadsafe(slots.release)
            assert res.ok and res.provider == "b"
            attempts = [str(a) for a in res.trace.attempts]
            assert any("no free slot within 2.0s (max_concurrency: 1)" in a
                       for a in attempts), attempts
            again = r.complete("again")  # the slot is back: a answers
            assert again.provider == "a"
            asyncio.run_coroutine_threadsafe(slots.acquire(), loop).result(5)
            loop.call_soon_threadsafe(loop.call_later, 3.0, slots.release)  # after the share
            pinned = r.complete("pinned", provider="a")  # the last (only) one: it waits
            assert pinned.ok and pinned.provider == "a"
