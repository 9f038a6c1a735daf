"""Property tests (issue 7), adding to tests/unit/test_breaker.py and test_retry.py:

- a stateful test (hypothesis ``RuleBasedStateMachine``) of the circuit breaker driven the
  way the router drives it: *calls* are started (``acquire``) and finished later, in any
  order, as a success, a counted failure, or a release (cancelled, or a 4xx that is not
  the server's fault), while the clock moves. A reference model written from the spec in
  breaker.py's docstring must agree with it on state, availability, grants and probe
  slots, and the documented bound (at most ``half_open_max_calls`` probes in flight) must
  hold. It found that a call granted while closed and ending during half-open freed the
  probe's slot (so a second probe was let in): ``release``/``record_failure`` now take
  ``probe=`` (see ``test_a_late_call_does_not_free_a_probe_slot``);
- the planner: for any set of provider views, pin, model filter and gate, every provider
  is either in the order or skipped (never both, never lost), each skip reason follows
  from the inputs, and the order is by (priority, file order).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from tests.reliability.conftest import Figures
from timmy_magic.routing.breaker import CircuitBreaker
from timmy_magic.routing.planner import ProviderView, plan_route

RUNS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _figures(figures: Figures) -> Iterator[None]:
    yield
    part = figures.part("property tests")
    part.set("breaker state-machine runs", RUNS["machine"])
    part.set("breaker steps", RUNS["steps"])
    part.set("planner cases", RUNS["planner"])

# ------------------------------------------------------------------ the breaker


@dataclass(eq=False)
class Call:
    probe: bool  # granted while half-open: holds a probe slot (else granted while closed)


@dataclass
class Model:
    """The spec: closed --threshold consecutive failures--> open --recovery_timeout-->
    half_open (at most max_calls probes in flight) --a probe succeeds--> closed; a probe
    fails --> open, the timer restarts. Any success closes it. Only a call granted while
    half-open holds (and frees) a probe slot; failures of other calls only count."""

    threshold: int
    recovery: float
    max_calls: int
    failures: int = 0
    opened_at: float | None = None
    slots: int = 0

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if now - self.opened_at >= self.recovery else "open"

    def available(self, now: float) -> bool:
        s = self.state(now)
        return s == "closed" or (s == "half_open" and self.slots < self.max_calls)

    def start(self, now: float) -> Call | None:
        if not self.available(now):
            return None
        call = Call(self.state(now) == "half_open")
        self.slots += call.probe
        return call

    def _free(self, call: Call) -> bool:
        if call.probe and self.opened_at is not None and self.slots:
            self.slots -= 1
            return True
        return False

    def success(self, call: Call, now: float) -> None:
        self.failures, self.opened_at, self.slots = 0, None, 0

    def failure(self, call: Call, now: float) -> None:
        self.failures += 1
        if self._free(call):
            self.opened_at = now
        elif self.opened_at is None and self.failures >= self.threshold:
            self.opened_at, self.slots = now, 0

    def release(self, call: Call, now: float) -> None:
        self._free(call)


class BreakerMachine(RuleBasedStateMachine):
    calls = Bundle("calls")

    @initialize(threshold=st.integers(1, 4), recovery=st.sampled_from([0.5, 1.0, 2.5]),
                max_calls=st.integers(1, 3))
    def setup(self, threshold: int, recovery: float, max_calls: int) -> None:
        RUNS["machine"] += 1
        self.now = 0.0
        self.real = CircuitBreaker(threshold, recovery, max_calls)
        self.model = Model(threshold, recovery, max_calls)
        self.in_flight: list[Call] = []

    # steps exact in binary floating point: no rounding at the recovery edge
    @rule(dt=st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0, 2.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(target=calls)
    def start(self) -> Call | None:
        granted = self.real.acquire(self.now)
        call = self.model.start(self.now)
        assert granted == (call is not None), (granted, self.model)
        if call is not None:
            self.in_flight.append(call)
        return call

    def _finish(self, call: Call | None) -> Call | None:
        if call is None or call not in self.in_flight:
            return None
        self.in_flight.remove(call)
        return call

    @rule(call=consumes(calls))
    def succeed(self, call: Call | None) -> None:
        if (c := self._finish(call)) is not None:
            self.real.record_success(self.now)
            self.model.success(c, self.now)

    @rule(call=consumes(calls))
    def fail(self, call: Call | None) -> None:
        if (c := self._finish(call)) is not None:
            self.real.record_failure(self.now, probe=c.probe)
            self.model.failure(c, self.now)

    @rule(call=consumes(calls))
    def cancel(self, call: Call | None) -> None:
        if (c := self._finish(call)) is not None:
            self.real.release(self.now, probe=c.probe)
            self.model.release(c, self.now)

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "real"):
            return
        RUNS["steps"] += 1
        assert self.real.state(self.now) == self.model.state(self.now)
        assert self.real.available(self.now) == self.model.available(self.now)
        assert self.real.half_open_in_flight == self.model.slots <= self.model.max_calls
        assert self.model.slots <= sum(c.probe for c in self.in_flight), \
            "every probe slot is held by a probe call in flight"

    @invariant()
    def never_stuck_open(self) -> None:
        if not hasattr(self, "real"):
            return
        later = self.now + self.model.recovery
        assert self.real.state(later) in ("closed", "half_open")
        assert self.real.retry_in(self.now) <= self.model.recovery
        if self.real.state(self.now) == "closed":
            assert self.real.retry_in(self.now) == 0


def test_a_late_call_does_not_free_a_probe_slot():
    """The sequence the state machine found: a call granted while closed is still in
    flight when the circuit opens; in half-open one probe is granted; then the old call is
    cancelled. The probe's slot must stay taken (max 1 probe in flight)."""
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=1.0, half_open_max_calls=1)
    assert b.acquire(0.0)  # the old call (closed: no slot)
    assert b.acquire(0.0)
    b.record_failure(0.1, probe=False)  # another call fails: open
    assert b.acquire(1.2) and b.state(1.2) == "half_open"  # the probe
    b.release(1.3, probe=False)  # the old call is cancelled
    assert not b.acquire(1.3), "a second probe while the first is in flight"
    b.record_failure(1.4, probe=False)  # a late failure of an old call only counts
    assert b.state(1.4) == "half_open" and b.half_open_in_flight == 1
    b.record_failure(1.5, probe=True)  # the probe fails: open again, timer restarts
    assert b.state(2.4) == "open" and b.state(2.5) == "half_open"


TestBreakerStateMachine = BreakerMachine.TestCase
TestBreakerStateMachine.settings = settings(max_examples=100, stateful_step_count=30,
                                            deadline=None)


# ------------------------------------------------------------------ the planner

HEALTH = ["healthy", "degraded", "down", "unknown", "circuit_open", "misconfigured",
          "disabled", "not_configured", "not_installed", "stopped", "starting"]
CONFIG_STATES = {"not_configured", "not_installed", "misconfigured"}
MODELS = ["m1", "m2"]

HELD = {"held": st.booleans()} if "held" in ProviderView.__dataclass_fields__ else {}
"""Managed servers stopped on purpose (``%llm stop``), where the planner knows them."""
views = st.lists(
    st.builds(ProviderView, **HELD,
              name=st.just(""), priority=st.integers(0, 3), enabled=st.booleans(),
              is_cloud=st.booleans(), state=st.sampled_from(HEALTH),
              circuit_available=st.booleans(), circuit_retry_in=st.floats(0, 60),
              half_open=st.booleans(),
              models=st.frozensets(st.sampled_from(MODELS), max_size=2), detail=st.just("")),
    min_size=0, max_size=7)


def named(vs: list[ProviderView]) -> list[ProviderView]:
    from dataclasses import replace

    return [replace(v, name=f"p{i}") for i, v in enumerate(vs)]


def expected_reason(v: ProviderView, pin: str | None, model: str | None, cloud_open: bool
                    ) -> str | None:
    """The skip reason the documented rules give, first rule that applies."""
    pinned = v.name == pin
    if pin is not None and not pinned:
        return "pinned_elsewhere"
    if not v.enabled and not pinned:
        return "disabled"
    if getattr(v, "held", False) and not pinned:
        return "stopped"
    if v.state in CONFIG_STATES:
        return v.state
    if v.is_cloud and not cloud_open:
        return "cloud_gate"
    if not v.circuit_available:
        return "circuit_open"
    if v.state == "down" and not pinned and not v.half_open:
        return "unhealthy"
    if model and v.models and model not in v.models and not pinned:
        return "no_model"
    return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(views, st.data(), st.sampled_from([None, *MODELS]), st.booleans())
def test_planner_skips_follow_from_inputs(vs: list[ProviderView], data: st.DataObject,
                                          model: str | None, cloud_open: bool) -> None:
    RUNS["planner"] += 1
    vs = named(vs)
    names = [v.name for v in vs]
    pin = data.draw(st.sampled_from([None, *names]) if names else st.none())
    plan = plan_route(vs, pin=pin, model=model, cloud_open=cloud_open,
                      cloud_reason="closed for the test")
    skipped = {s.provider: s for s in plan.skipped}
    # every provider accounted for exactly once, in (priority, file order)
    assert sorted(plan.order + tuple(skipped)) == sorted(names)
    assert not set(plan.order) & set(skipped)
    by_name = {v.name: (v.priority, i) for i, v in enumerate(vs)}
    assert list(plan.considered) == sorted(names, key=by_name.__getitem__)
    assert list(plan.order) == sorted(plan.order, key=by_name.__getitem__)
    for v in vs:
        want = expected_reason(v, pin, model, cloud_open)
        got = skipped[v.name].reason if v.name in skipped else None
        assert got == want, (v, pin, model, cloud_open)
        if got == "cloud_gate":
            assert skipped[v.name].detail == "closed for the test"
    # a pin is the only possible candidate; a pinned provider is never dropped silently
    if pin is not None:
        assert set(plan.order) <= {pin}
        assert pin in plan.order or pin in skipped
    # nothing unusable is ever tried
    for name in plan.order:
        v = vs[names.index(name)]
        assert v.circuit_available and v.state not in CONFIG_STATES
        assert cloud_open or not v.is_cloud
