"""Circuit breaker state machine, with the clock passed in (no sleeping)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from timmy_magic.routing.breaker import CircuitBreaker


def test_opens_after_threshold_consecutive_failures():
    b = CircuitBreaker(failure_threshold=3, recovery_timeout=10)
    for t in (0, 1):
        b.record_failure(t)
        assert b.state(t) == "closed"
    b.record_failure(2)
    assert b.state(2) == "open" and not b.available(2)
    assert b.retry_in(5) == 7


def test_success_resets_consecutive_count():
    b = CircuitBreaker(failure_threshold=2)
    b.record_failure(0)
    b.record_success(1)
    b.record_failure(2)
    assert b.state(2) == "closed"


def test_half_open_after_recovery_then_closes_on_success():
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=10, half_open_max_calls=1)
    b.record_failure(0)
    assert b.state(9.9) == "open"
    assert b.state(10) == "half_open"
    assert b.acquire(10)
    assert not b.acquire(10), "only half_open_max_calls probes at once"
    b.record_success(11)
    assert b.state(11) == "closed" and b.available(11)


def test_failed_probe_reopens_and_restarts_timer():
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=10)
    b.record_failure(0)
    assert b.acquire(10)
    b.record_failure(12)
    assert b.state(12) == "open"
    assert b.state(21.9) == "open"
    assert b.state(22) == "half_open"
    assert b.times_opened == 2


def test_released_probe_slot_can_be_taken_again():
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=1, half_open_max_calls=2)
    b.record_failure(0)
    assert b.acquire(1) and b.acquire(1) and not b.acquire(1)
    b.release(1)
    assert b.acquire(1)


ops = st.lists(st.tuples(st.sampled_from(["fail", "ok", "acquire", "release"]),
                         st.floats(min_value=0, max_value=5)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 5), st.floats(0.1, 20), st.integers(1, 3))
def test_properties(seq, threshold, recovery, max_calls):
    """Invariants over any sequence of events in time order:
    - it is never open without threshold consecutive failures having happened;
    - an open circuit always becomes half-open by itself after recovery_timeout (never
      stuck: the original router's bug);
    - probes in flight never exceed half_open_max_calls;
    - a success always closes it."""
    b = CircuitBreaker(threshold, recovery, max_calls)
    now = 0.0
    consecutive = 0
    for op, dt in seq:
        now += dt
        if op == "fail":
            b.record_failure(now)
            consecutive += 1
        elif op == "ok":
            b.record_success(now)
            consecutive = 0
            assert b.state(now) == "closed"
        elif op == "acquire":
            b.acquire(now)
        else:
            b.release(now)
        st_ = b.state(now)
        if st_ != "closed":
            assert consecutive >= threshold
            assert b.state(now + recovery + 1e-6) == "half_open"
            assert b.available(now + recovery + 1e-6) or b.half_open_in_flight >= max_calls
        assert 0 <= b.half_open_in_flight <= max_calls
