import email.utils

from hypothesis import given
from hypothesis import strategies as st

from timmy_magic.model.errors import (
    ProviderAuthError,
    ProviderConnectError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderTimeout,
)
from timmy_magic.providers.base import parse_retry_after
from timmy_magic.routing.retry import RetryPolicy


def test_retryable_classification():
    assert ProviderConnectError("x").retryable
    assert ProviderTimeout("x").retryable
    for code in (408, 429, 500, 502, 503, 504):
        assert ProviderHTTPError("x", status=code).retryable, code
    for code in (400, 404, 422):
        e = ProviderHTTPError("x", status=code)
        assert not e.retryable and not RetryPolicy().counts(e)
    assert not ProviderAuthError("x", status=401).retryable
    assert not ProviderProtocolError("x").retryable


def test_backoff_is_exponential_with_bounded_jitter():
    p = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=5.0)
    assert p.backoff(1, lambda: 0.0) == 0.5 and p.backoff(1, lambda: 1.0) == 1.0
    assert p.backoff(2, lambda: 1.0) == 2.0
    assert p.backoff(3, lambda: 1.0) == 4.0
    assert p.backoff(4, lambda: 1.0) == 5.0  # capped


@given(st.integers(1, 20), st.floats(0, 1), st.floats(0.001, 5), st.floats(0.01, 60))
def test_backoff_within_bounds(n, r, base, cap):
    p = RetryPolicy(max_retries=20, base_delay=base, max_delay=cap)
    d = min(cap, base * 2 ** (n - 1))
    assert d / 2 <= p.backoff(n, lambda: r) <= d


def test_retry_after_honoured_up_to_cap_then_failover():
    p = RetryPolicy(max_retries=2, retry_after_cap=10)
    assert p.delay_for(ProviderHTTPError("x", status=429, retry_after=3), 1) == 3
    assert p.delay_for(ProviderHTTPError("x", status=429, retry_after=60), 1) is None
    assert p.delay_for(ProviderHTTPError("x", status=503), 3) is None  # retries used up
    assert p.delay_for(ProviderHTTPError("x", status=400), 1) is None


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("7", 0) == 7
    assert parse_retry_after(" 1.5 ", 0) == 1.5
    assert parse_retry_after("garbage", 0) is None
    assert parse_retry_after(None, 0) is None
    date = email.utils.formatdate(1000 + 30, usegmt=True)
    assert abs(parse_retry_after(date, 1000) - 30) < 1


def test_a_refused_connection_on_a_pinned_provider_is_not_retried():
    """Pinned, it is the last candidate; a server is not started by waiting, and three
    failures would count three errors and open its circuit for one cell."""
    from timmy_magic.model.errors import ProviderConnectError
    from timmy_magic.routing.retry import RetryPolicy

    err = ProviderConnectError("cannot connect: refused")
    p = RetryPolicy()
    assert p.decide(err, 1, others_left=False, endpoints=1, time_left=60,
                    pinned=True).action == "fail_over"
    # the cascade's last candidate still gets its retries (a server restarting)
    assert p.decide(err, 1, others_left=False, endpoints=1, time_left=60).action == "retry"
    # pinned with replicas: the next retry may pick another endpoint
    assert p.decide(err, 1, others_left=False, endpoints=2, time_left=60,
                    pinned=True).action == "retry"


def test_route_trace_puts_the_providers_skipped_for_a_pin_on_one_line():
    from timmy_magic.model.trace import Attempt, RouteTrace, Skip

    t = RouteTrace(("a", "b", "c", "d"), (Skip("a", "pinned_elsewhere", "pinned to d"),
                                          Skip("b", "pinned_elsewhere", "pinned to d"),
                                          Skip("c", "disabled")),
                   (Attempt("d", "http://127.0.0.1:1", 1, "failed", "cannot connect: x"),), "d")
    assert t.lines() == ["considered: a, b, c, d  [pinned: d]", "skipped (pinned to d): a, b",
                         "c skipped (disabled)", "d#1 failed: cannot connect: x"]
