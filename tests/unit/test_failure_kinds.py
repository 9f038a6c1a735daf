"""Which failures count against an endpoint's circuit (issue 20): the pure policy over
every failure kind. A failure of the endpoint (cannot connect, timed out, throttled, 5xx,
an answer that cannot be read) counts; one about the request or its model (a 4xx, a model
the server does not have, a request too long for the model's context, however the server
says it) records neither a failure nor a success, and is not retried."""

from __future__ import annotations

from typing import get_args

import pytest

from timmy_magic.model.errors import (
    ProviderAuthError,
    ProviderConnectError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderTimeout,
)
from timmy_magic.routing.breaker import CircuitBreaker
from timmy_magic.routing.retry import COUNTED, FailureKind, RetryPolicy, failure_kind


def http(status: int, message: str = "") -> ProviderHTTPError:
    cls = ProviderAuthError if status in (401, 403) else ProviderHTTPError
    return cls(f"HTTP {status}" + (f": {message}" if message else ""), provider="p",
               status=status)


EXAMPLES: dict[FailureKind, list[ProviderError]] = {
    "unreachable": [
        ProviderConnectError("cannot connect: [Errno 111] Connection refused"),
        ProviderConnectError("connection dropped: peer closed connection"),
        # the class decides first: a dropped connection is the endpoint's, whatever it says
        ProviderConnectError("cannot list models: model not found"),
    ],
    "timeout": [
        ProviderTimeout("no first token within first_token_timeout_seconds=5"),
        ProviderTimeout("stream stalled: no data for idle_timeout_seconds=5"),
    ],
    "throttled": [http(429, "rate limit"), http(408)],
    "server": [
        http(500, "fault-server: injected status 500"), http(502), http(503),
        http(503, "The model is overloaded, try again later"),  # busy, not missing
        ProviderError("an adapter's own error"),
    ],
    "protocol": [
        ProviderProtocolError("unreadable answer: Expecting value: line 1 column 1"),
        ProviderProtocolError("expected text/event-stream, got content-type text/html"),
        ProviderProtocolError("server error mid-stream: CUDA error: out of memory"),
    ],
    "auth": [http(401, "invalid api key"), http(403)],
    "request": [
        http(400, "temperature must be at most 2"), http(404), http(404, "Not Found"),
        http(413), http(422, "messages: field required"),
    ],
    "model": [
        http(404, "The model `llama3.2:1b` does not exist."),  # vLLM, OpenAI, Groq
        http(404, 'model "qwen3:8b" not found, try pulling it first'),  # Ollama
        http(400, "model not found"),  # llama-server with several models
        http(500, "model 'b1' not found"),  # said with a 5xx: still the model's
        http(500, "could not load model: rpc error"),  # LocalAI
        http(400, "This model's maximum context length is 2048 tokens. However, you "
                  "requested 4096 tokens"),  # vLLM, OpenAI
        http(400, "the request exceeds the available context size, try increasing it"),
        http(400, "prompt is too long: 210000 tokens > 200000 maximum"),  # Anthropic
        http(404, "Error code: model_not_found"),
        ProviderProtocolError("server error mid-stream: unknown model 'b2'"),
        ProviderProtocolError("server error: The model `b3` does not exist."),
    ],
}


def test_every_kind_has_examples() -> None:
    assert set(EXAMPLES) == set(get_args(FailureKind))


@pytest.mark.parametrize("kind", get_args(FailureKind))
def test_each_example_is_classified_as_its_kind(kind: FailureKind) -> None:
    for error in EXAMPLES[kind]:
        assert failure_kind(error) == kind, error


def test_only_failures_of_the_endpoint_count() -> None:
    assert COUNTED == {"unreachable", "timeout", "throttled", "server", "protocol"}
    policy = RetryPolicy()
    for kind, errors in EXAMPLES.items():
        for error in errors:
            assert policy.counts(error) == (kind in COUNTED), (kind, error)


@pytest.mark.parametrize("kind", ["request", "model"])
def test_a_failure_about_the_request_or_its_model_fails_over_at_once(
        kind: FailureKind) -> None:
    policy = RetryPolicy(max_retries=5)
    for error in EXAMPLES[kind]:
        for pinned in (False, True):
            decision = policy.decide(error, 1, others_left=False, endpoints=2,
                                     time_left=60, pinned=pinned, rand=lambda: 0.0)
            assert decision.action == "fail_over", error


def test_the_other_kinds_keep_their_decisions() -> None:
    policy = RetryPolicy(max_retries=2)

    def action(error: ProviderError) -> str:
        return policy.decide(error, 1, others_left=False, endpoints=1, time_left=60,
                             rand=lambda: 0.0).action

    assert all(action(e) == "misconfigured" for e in EXAMPLES["auth"])
    for kind in ("unreachable", "timeout", "throttled", "server"):
        assert all(action(e) == "retry" for e in EXAMPLES[kind] if e.retryable), kind
    assert action(ProviderError("an adapter's own error")) == "fail_over"  # not retryable
    assert all(action(e) == "fail_over" for e in EXAMPLES["protocol"])


def settle(breaker: CircuitBreaker, error: ProviderError, now: float) -> None:
    """What an attempt does with its permit after ``error`` (``attempt._record_failure``)."""
    permit = breaker.permit(now)
    assert permit is not None, "the circuit refused the call"
    if RetryPolicy.counts(error):
        permit.failure(now)
    else:
        permit.release(now)


@pytest.mark.parametrize("kind", get_args(FailureKind))
def test_many_failures_of_a_kind_open_the_circuit_only_if_it_counts(
        kind: FailureKind) -> None:
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=30)
    now = 0.0
    for _ in range(4):
        for error in EXAMPLES[kind]:
            now += 0.1
            if breaker.state(now) == "open":
                break
            settle(breaker, error, now)
    opened = breaker.state(now) == "open"
    assert opened == (kind in COUNTED), kind
    if not opened:
        assert breaker.consecutive_failures == 0 and breaker.times_opened == 0


def test_a_model_failure_neither_resets_nor_adds_to_the_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=30)
    settle(breaker, http(503), 1.0)
    settle(breaker, http(503), 2.0)
    settle(breaker, http(404, "The model `x` does not exist."), 3.0)  # not a success
    assert breaker.consecutive_failures == 2 and breaker.state(3.0) == "closed"
    settle(breaker, http(503), 4.0)
    assert breaker.state(4.0) == "open"


def test_a_half_open_probe_about_the_model_gives_its_slot_back() -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10,
                             half_open_max_calls=1)
    settle(breaker, http(503), 0.0)
    assert breaker.state(10.0) == "half_open"
    settle(breaker, http(400, "model not found"), 10.0)  # the probe: neither outcome
    assert breaker.state(10.0) == "half_open" and breaker.available(10.0)
    settle(breaker, http(503), 11.0)  # the next probe fails: open again
    assert breaker.state(11.0) == "open"
