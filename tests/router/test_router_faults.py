"""The router against a loopback fault server the tests control: failover, deadlines,
retries and Retry-After, circuit breaker transitions, traces, pinning, the cloud gate,
replicas and secrets. Wall-clock bounds are deadline checks (never speed claims)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.support.faultserver import Blackhole, FaultServer, closed_port
from timmy_magic import ChatRequest, Done, Router
from timmy_magic.config import parse_config
from timmy_magic.model.chat import Delta, Trying
from timmy_magic.model.errors import NoProviderAvailable, PinnedProviderFailed, UnknownProvider

SLACK = 0.6  # scheduling slack on a shared 2-core machine


@pytest.fixture(scope="module")
def srv():
    with FaultServer() as s:
        yield s


def make_router(providers: str, cascade: str = "", gate: str = "") -> Router:
    text = (f"cascade:\n  connect_timeout_seconds: 1\n  first_token_timeout_seconds: 2\n"
            f"  idle_timeout_seconds: 1\n  health_timeout_seconds: 0.5\n"
            f"  retry_delay_seconds: 0.01\n{cascade}\n{gate}\nproviders:\n{providers}")
    return Router(parse_config(text, source="test.yaml", env={}))


def prov(name: str, url: str, prio: int, extra: str = "", type_: str = "vllm_mlx") -> str:
    return (f"  - {{name: {name}, type: {type_}, priority: {prio}, base_url: '{url}'"
            f"{', ' + extra if extra else ''}}}\n")


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def test_streams_events_in_order_with_usage_and_timings(srv):
    with make_router(prov("a", srv.base_url("ok", tokens=6, delay=0.01), 1)) as r:
        events = list(r.stream("hi"))
    assert isinstance(events[0], Trying) and events[0].provider == "a"
    deltas = [e for e in events if isinstance(e, Delta)]
    assert len(deltas) == 6 and isinstance(events[-1], Done)
    res = events[-1].result
    assert res.ok and res.text == "".join(d.text for d in deltas)
    assert res.provider == "a" and res.model == "fault-model"
    assert res.usage.output_tokens == 6 and not res.usage.estimated
    assert 0 < res.timings.ttft_s <= res.timings.total_s
    assert res.trace.answered_by == "a" and res.trace.attempts[0].outcome == "answered"


def test_failover_before_first_token_refused_then_hang(srv):
    with Blackhole() as bh:
        providers = (prov("refused", f"http://127.0.0.1:{closed_port()}", 1)
                     + prov("hang", srv.base_url("hang_headers"), 2)
                     + prov("blackhole", bh.url, 3)
                     + prov("good", srv.base_url("ok"), 4))
        with make_router(providers, "  max_retries_per_provider: 0") as r:
            res, took = timed(lambda: r.complete("hi"))
    assert res.provider == "good"
    fails = {a.provider: a.error for a in res.trace.attempts if a.outcome == "failed"}
    assert set(fails) == {"refused", "hang", "blackhole"}
    assert "connect" in fails["refused"]
    assert "first token" in fails["hang"]
    assert "no answer to the model lookup" in fails["blackhole"]
    # two first-token deadlines of 2 s, plus slack; never the 120 s request timeout
    assert took < 2 * 2 + SLACK * 2


def test_whole_request_deadline_is_never_exceeded(srv):
    providers = "".join(prov(f"h{i}", srv.base_url("hang_headers", i=i), i) for i in range(5))
    with make_router(providers, "  timeout_seconds: 1.5\n  max_retries_per_provider: 0") as r:
        with pytest.raises(NoProviderAvailable) as ei:
            timed(lambda: r.complete("hi"))
        t0 = time.monotonic()
        with pytest.raises(NoProviderAvailable):
            r.complete("hi")
        assert time.monotonic() - t0 < 1.5 + SLACK
    assert "every provider failed" in str(ei.value)


def test_retry_with_backoff_then_success(srv):
    url = srv.base_url("flaky", fail=2, code=503, key=time.time())
    with make_router(prov("a", url, 1), "  max_retries_per_provider: 2") as r:
        res = r.complete("hi")
    assert res.ok and [a.outcome for a in res.trace.attempts] == ["failed", "failed", "answered"]
    assert "HTTP 503" in res.trace.attempts[0].error


def test_retry_after_is_honoured(srv):
    url = srv.base_url("flaky", fail=1, code=429, retry_after=1, key=time.time())
    with make_router(prov("a", url, 1), "  max_retries_per_provider: 1") as r:
        res, took = timed(lambda: r.complete("hi"))
    assert res.ok and len(res.trace.attempts) == 2
    assert took >= 1.0, "waited for Retry-After"


def test_retry_after_beyond_cap_fails_over_at_once(srv):
    providers = (prov("slowdown", srv.base_url("status", code=429, retry_after=120), 1)
                 + prov("b", srv.base_url("ok"), 2))
    with make_router(providers, "  retry_after_cap_seconds: 5") as r:
        res, took = timed(lambda: r.complete("hi"))
    assert res.provider == "b" and took < 1 + SLACK
    assert len([a for a in res.trace.attempts if a.provider == "slowdown"]) == 1


@pytest.mark.parametrize("code", [400, 404])
def test_no_retry_on_client_errors_and_breaker_untouched(srv, code):
    url = srv.base_url("status", code=code, n=time.time())
    with make_router(prov("a", url, 1), "  max_retries_per_provider: 3") as r:
        with pytest.raises(NoProviderAvailable) as ei:
            r.complete("hi")
        assert r.health()["a"].circuit == "closed"
        assert r.provider("a").endpoints[0].breaker.consecutive_failures == 0
    assert len(ei.value.trace.attempts) == 1 and f"HTTP {code}" in str(ei.value)


def test_auth_failure_marks_misconfigured_and_is_skipped_next_time(srv):
    key = "sk-fake-PLANTED-key-0123456789"
    providers = (prov("cloud", srv.base_url("status", code=401), 1, f"api_key: '{key}'",
                      type_="openai_compatible")
                 + prov("local", srv.base_url("ok"), 2))
    with make_router(providers) as r:
        first = r.complete("hi")
        assert first.provider == "local"
        assert r.health()["cloud"].state == "misconfigured"
        second = r.complete("hi")
        skip = [s for s in second.trace.skipped if s.provider == "cloud"]
        assert skip and skip[0].reason == "misconfigured"
        everything = repr(first) + repr(second) + repr(r.health()) + str(first.trace)
    assert key not in everything
    # the key was really sent to the server, as a bearer token
    sent = [q for q in srv.requests if q.headers.get("authorization", "").endswith(key)]
    assert sent


def test_breaker_opens_then_half_open_probe_closes_it(srv):
    url = srv.base_url("flaky", fail=2, code=500, key=time.time())
    breaker = ("  max_retries_per_provider: 0\n  circuit_breaker: {failure_threshold: 2,"
               " recovery_timeout: 0.5, half_open_max_calls: 1}")
    providers = prov("a", url, 1) + prov("backup", srv.base_url("ok"), 2)
    with make_router(providers, breaker) as r:
        assert r.complete("1").provider == "backup"
        assert r.health()["a"].circuit == "closed"
        assert r.complete("2").provider == "backup"
        assert r.health()["a"].circuit == "open" and r.health()["a"].state == "circuit_open"
        third = r.complete("3")
        assert third.provider == "backup"
        assert [s.reason for s in third.trace.skipped if s.provider == "a"] == ["circuit_open"]
        time.sleep(0.55)
        assert r.health()["a"].circuit == "half_open"
        fourth = r.complete("4")  # the half-open probe; the flaky server now answers
        assert fourth.provider == "a" and r.health()["a"].circuit == "closed"


def test_failed_half_open_probe_reopens(srv):
    breaker = ("  max_retries_per_provider: 0\n  circuit_breaker: {failure_threshold: 1,"
               " recovery_timeout: 0.3}")
    with make_router(prov("a", srv.base_url("status", code=503), 1), breaker) as r:
        with pytest.raises(NoProviderAvailable):
            r.complete("x")
        assert r.health()["a"].circuit == "open"
        time.sleep(0.35)
        with pytest.raises(NoProviderAvailable) as ei:
            r.complete("y")
        assert ei.value.trace.attempts, "the half-open probe was sent"
        assert r.health()["a"].circuit == "open"


@pytest.mark.parametrize("scenario,params,needle", [
    ("hang_mid_stream", {"tokens": 3}, "stalled"),
    ("drop_mid_stream", {"tokens": 3}, "connection"),
])
def test_broken_stream_after_first_token_keeps_partial_text(srv, scenario, params, needle):
    providers = prov("a", srv.base_url(scenario, **params), 1) + prov("b", srv.base_url("ok"), 2)
    with make_router(providers) as r:
        events, took = timed(lambda: list(r.stream("hi")))
        res = events[-1].result
        assert isinstance(events[-1], Done) and res.provider == "a", "no failover after a token"
        assert res.error and needle in res.error and res.text
        assert res.text == "".join(e.text for e in events if isinstance(e, Delta))
        assert res.trace.attempts[-1].outcome == "broken"
        assert r.metrics()["a"].failures == 1 and r.metrics()["a"].successes == 0
    assert took < 2 + 1 + SLACK  # first token + one idle timeout


@pytest.mark.parametrize("scenario", ["malformed_sse", "wrong_content_type", "empty_stream",
                                      "no_done", "malformed_json"])
def test_unreadable_answers_fail_over(srv, scenario):
    providers = prov("bad", srv.base_url(scenario), 1) + prov("b", srv.base_url("ok"), 2)
    with make_router(providers, "  max_retries_per_provider: 0") as r:
        events = list(r.stream("hi"))
    res = events[-1].result
    if scenario == "no_done":  # finish_reason and usage arrived: only [DONE] is missing
        assert res.ok and res.provider == "bad" and res.usage.output_tokens == 5
        return
    if res.provider == "bad":  # a server may send valid text before the garbage
        assert res.error, f"{scenario}: partial answer must carry the error"
    else:
        assert res.provider == "b" and res.trace.attempts[0].outcome == "failed"


def test_pinned_provider_failure_is_never_a_silent_fallback(srv):
    srv.reset()
    other = srv.base_url("ok", tag="pin-other")
    providers = (prov("pinned", f"http://127.0.0.1:{closed_port()}", 1)
                 + prov("other", other, 2))
    with make_router(providers, "  max_retries_per_provider: 0") as r:
        with pytest.raises(PinnedProviderFailed, match="pinned provider 'pinned' failed"):
            r.complete(ChatRequest.of("hi", provider="pinned"))
        r.pin("pinned")
        with pytest.raises(PinnedProviderFailed):
            r.complete("hi")
        assert srv.count(path_suffix="chat/completions") == 0
        with pytest.raises(UnknownProvider, match="no provider named 'nope'"):
            r.pin("nope")
        r.pin(None)
        assert r.complete("hi").provider == "other"


def test_cloud_gate_local_only_and_budget(srv):
    providers = (prov("cloudy", srv.base_url("ok", tokens=10), 1,
                      "cloud: true, models: [{name: fault-model, price_per_1k_output: 100}]")
                 + prov("local", srv.base_url("ok"), 2))
    with make_router(providers, gate="cloud_gate: {local_only: true, daily_budget_usd: 0.5}") as r:
        res = r.complete("hi")
        assert res.provider == "local"
        assert [(s.provider, s.reason, s.detail) for s in res.trace.skipped] == \
            [("cloudy", "cloud_gate", "local-only mode")]
        r.set_local_only(False)
        paid = r.complete("hi")
        assert paid.provider == "cloudy" and paid.cost_usd == pytest.approx(1.0)
        assert r.ledger.spent_today == pytest.approx(1.0)
        over = r.complete("hi")
        assert over.provider == "local"
        assert "daily budget spent" in over.trace.skipped[0].detail


def test_quota_signal_resting_closes_the_gate(srv, tmp_path):
    script = tmp_path / "quota.sh"
    script.write_text("#!/bin/sh\ncat " + str(tmp_path / "tier") + "\n")
    script.chmod(0o755)
    (tmp_path / "tier").write_text("resting\n")
    providers = (prov("cloudy", srv.base_url("ok"), 1, "cloud: true")
                 + prov("local", srv.base_url("ok"), 2))
    gate = f"cloud_gate:\n  quota: {{command: ['{script}'], ttl_seconds: 0}}"
    with make_router(providers, gate=gate) as r:
        res = r.complete("hi")
        assert res.provider == "local" and "quota tier 'resting'" in res.trace.skipped[0].detail
        (tmp_path / "tier").write_text("burst\n")
        assert r.complete("hi").provider == "cloudy"


def test_health_pass_is_concurrent_under_one_deadline(srv):
    bhs = [Blackhole().start() for _ in range(4)]
    try:
        providers = "".join(
            prov(f"refused{i}", f"http://127.0.0.1:{closed_port()}", 10 + i) for i in range(4))
        providers += "".join(prov(f"silent{i}", b.url, 20 + i) for i, b in enumerate(bhs))
        providers += "".join(prov(f"ok{i}", srv.base_url("ok", i=i), 30 + i) for i in range(4))
        with make_router(providers) as r:
            reports, took = timed(r.check_health)
    finally:
        for b in bhs:
            b.stop()
    states = {n: rep.state for n, rep in reports.items()}
    assert len(states) == 12
    assert all(states[f"ok{i}"] == "healthy" for i in range(4))
    assert all(states[f"refused{i}"] == "not_running" for i in range(4))  # never answered
    assert all(states[f"silent{i}"] == "down" for i in range(4))
    assert "timed out after 0.5s" in reports["silent0"].last_error
    assert reports["ok0"].detail["model_loaded"] is True and reports["ok0"].models
    assert took < 0.5 * 1.2 + SLACK, f"sequential would be ~2 s, took {took:.2f}"


def test_down_provider_is_rechecked_on_demand_and_comes_back(srv):
    with FaultServer() as other:
        url = other.base_url("ok")
        with make_router(prov("a", url, 1)) as r:
            assert r.check_health()["a"].state == "healthy"
            other.stop()
            assert r.check_health()["a"].state == "down"
            with pytest.raises(NoProviderAvailable):
                r.complete("hi")
            # the provider is not dropped: the background loop probes it again
            r.start_health_loop(interval=0.2)
            time.sleep(0.5)
            assert r.health()["a"].checked_at is not None


def test_replicas_balance_by_least_outstanding_and_have_own_breakers(srv):
    srv.reset()
    a = srv.base_url("ok", tokens=5, delay=0.05, rep="A")
    b = srv.base_url("ok", tokens=5, delay=0.05, rep="B")
    providers = f"  - {{name: fleet, type: vllm_mlx, replicas: ['{a}', '{b}']}}\n"
    with make_router(providers) as r:
        async def many():
            return await asyncio.gather(*(r.acomplete(f"q{i}") for i in range(8)))

        results = asyncio.run(many())
        endpoints = [res.endpoint for res in results]
        assert endpoints.count(a) == 4 and endpoints.count(b) == 4
        # one replica dies: the other keeps serving, each replica has its own breaker
        dead = f"http://127.0.0.1:{closed_port()}"
        providers2 = (f"  - {{name: fleet, type: vllm_mlx, replicas: ['{dead}', '{b}']}}\n")
    with make_router(providers2, "  max_retries_per_provider: 1\n  circuit_breaker: "
                     "{failure_threshold: 1}") as r2:
        res = r2.complete("x")
        assert res.ok and res.endpoint == b
        rep = r2.health()["fleet"]
        circuits = {e.url: e.circuit for e in rep.endpoints}
        assert circuits == {dead: "open", b: "closed"} and rep.state == "degraded"


def test_sync_and_foreign_loop_async_apis_share_one_router(srv):
    with make_router(prov("a", srv.base_url("ok"), 1)) as r:
        sync = r.complete("hi")

        async def from_other_loop():
            return [e async for e in r.astream("hi")]

        events = asyncio.run(from_other_loop())
        assert sync.ok and events[-1].result.ok
        assert r.metrics()["a"].successes == 2 and r.metrics()["a"].requests == 2


def test_consumer_stopping_early_closes_the_stream(srv):
    srv.reset()
    with make_router(prov("a", srv.base_url("ok", tokens=200, delay=0.02), 1)) as r:
        it = r.stream("hi")
        for ev in it:
            if isinstance(ev, Delta):
                break
        it.close()
        deadline = time.monotonic() + 3
        while srv.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        m = r.metrics()["a"]
        assert m.cancelled == 1 and m.failures == 0 and r.health()["a"].circuit == "closed"
        assert r.complete("again").ok


def test_close_leaves_no_threads():
    before = {t.name for t in threading.enumerate()}
    r = make_router(prov("a", f"http://127.0.0.1:{closed_port()}", 1))
    r.check_health()
    r.close()
    time.sleep(0.1)
    assert {t.name for t in threading.enumerate()} - before == set()


def test_cancelling_a_call_from_before_the_outage_does_not_admit_a_second_probe(srv):
    """Found by the breaker state machine: a call granted while closed, cancelled during
    half-open, must not give back the probe slot it never held."""
    text = (f"  - {{name: a, type: vllm_mlx, models: [{{name: m}}],"
            f" base_url: '{srv.base_url('ok', tokens=40, delay=0.05)}'}}\n")
    breaker_cfg = ("  circuit_breaker: {failure_threshold: 1, recovery_timeout: 0.3,"
                   " half_open_max_calls: 1}")
    with make_router(text, breaker_cfg) as r:
        old = r.stream("granted while closed")
        next(e for e in old if isinstance(e, Delta))
        breaker = r.provider("a").endpoints[0].breaker

        async def another_call_fails() -> None:
            breaker.record_failure(time.monotonic(), probe=False)

        r.runner.run(another_call_fails())  # the circuit opens
        time.sleep(0.35)
        probe = r.stream("the half-open probe")
        next(e for e in probe if isinstance(e, Delta))
        old.close()  # the old call is cancelled while the probe is in flight
        time.sleep(0.1)
        assert not breaker.available(time.monotonic()), "a second probe would be let in"
        probe.close()


def test_a_busy_server_whose_health_check_times_out_is_degraded_not_down(srv):
    """/health hangs while the server streams fine: the provider stays usable."""
    url = srv.base_url("ok", tokens=30, delay=0.05, health="hang")
    with make_router(prov("busy", url, 1, "models: [{name: fault-model}]")) as r:
        stream = r.stream("long answer")
        next(e for e in stream if isinstance(e, Delta))
        rep = r.check_health()["busy"]
        assert rep.state == "degraded" and "while serving 1 request" in rep.last_error
        assert r.complete("next", max_tokens=2).provider == "busy"
        stream.close()
        assert r.check_health()["busy"].state == "down"  # idle and silent: down


def test_no_tokens_per_second_from_an_answer_read_in_one_burst(srv):
    """A rate needs time between first and last token: an answer read all at once (a
    frozen clock here: no time passes) shows none, never 17,808 tok/s."""
    text = ("cascade: {health_timeout_seconds: 0.5}\nproviders:\n"
            + prov("a", srv.base_url("ok", tokens=24), 1))
    with Router(parse_config(text, source="t.yaml", env={}), clock=lambda: 100.0) as r:
        res = r.complete("hi")
    assert res.ok and res.usage.output_tokens == 24
    assert res.timings.output_tokens_per_s is None and "tok/s" not in res.footer()
    with make_router(prov("b", srv.base_url("ok", tokens=6, delay=0.02), 1)) as r:
        paced = r.complete("hi")
    assert paced.timings.output_tokens_per_s and " tok/s" in paced.footer()
