"""Fault matrix (issue 7): every fault the loopback fault server can inject, through
``router.stream`` and ``router.complete``, with a healthy backup behind the faulty
provider ("cascade") and, for the faults that end in a failure, without one ("alone").

For each case the table below states the expected outcome, how many attempts the faulty
provider gets (1 + retries), its circuit afterwards and the wall-time bound; the test
checks all of it, plus metrics consistency (requests == successes + failures + cancelled,
nothing left in flight) and that no answer is lost (the text is exactly what the server
sent, or the partial prefix of it, and equals the streamed deltas).

Outcomes:
- ``answer``   the faulty provider still answers in full (the fault is tolerated);
- ``partial``  the stream broke after the first token: no failover, the partial text is
               kept and the result names the error;
- ``failover`` every attempt failed before the first token; the backup answers
               (``attempts`` > 1 means the provider was retried first);
- alone, a failover case must raise ``NoProviderAvailable`` with a one-line message that
  names the cause (the "clear error").

Timeouts are short (first token 0.8 s, idle 0.5 s, request 4 s) so the whole matrix runs
in seconds; the breaker opens after 2 consecutive counted failures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

from tests.reliability.conftest import Figures, Hang, run_bounded
from tests.support.faultserver import Blackhole, FaultServer, closed_port
from timmy_magic import Router
from timmy_magic.config import parse_config
from timmy_magic.model.chat import Delta, Done, Result, Trying
from timmy_magic.model.errors import NoProviderAvailable

FIRST_TOKEN = 0.8
IDLE = 0.5
REQUEST = 4.0
SLACK = 0.75  # scheduling slack on a shared 2-core machine
HANG_LIMIT = REQUEST + 6.0  # beyond this a call counts as a hang
CASCADE = f"""\
cascade:
  timeout_seconds: {REQUEST}
  connect_timeout_seconds: 0.5
  first_token_timeout_seconds: {FIRST_TOKEN}
  idle_timeout_seconds: {IDLE}
  health_timeout_seconds: 0.3
  max_retries_per_provider: 1
  retry_delay_seconds: 0.01
  max_retry_delay_seconds: 0.02
  retry_after_cap_seconds: 1
  circuit_breaker: {{failure_threshold: 2, recovery_timeout: 60}}
"""
BACKUP_TEXT = "the backup answered"
TOKENS5 = "tok0 tok1 tok2 tok3 tok4 "
Outcome = Literal["answer", "partial", "failover"]
Circuit = Literal["closed", "open"]
PART = "fault matrix"
LABELS = ("cases", "correct outcomes", "hangs", "lost answers")


@dataclass(frozen=True)
class Case:
    id: str
    scenario: str  # a FaultServer scenario, or "refused" / "blackhole"
    params: tuple[tuple[str, object], ...]
    outcome: Outcome
    attempts: int  # attempts on the faulty provider (cascade)
    circuit: Circuit  # its circuit afterwards (cascade)
    bound: float  # wall-time bound before slack, in seconds
    text: str = ""  # what it answers (answer) or delivers before breaking (partial)
    needle: str = ""  # in its error (partial, failover)
    attempts_alone: int | None = None  # when the last candidate is retried differently
    circuit_alone: Circuit | None = None
    state: str | None = None  # its health state afterwards, when it must change
    adapter: str = "vllm_mlx"  # the faulty provider's type (its wire protocol)


def case(id: str, scenario: str, outcome: Outcome, attempts: int, circuit: Circuit,
         bound: float, text: str = "", needle: str = "", **params: object) -> Case:
    return Case(id, scenario, tuple(params.items()), outcome, attempts, circuit, bound, text,
                needle)


RETRIED = 2 * FIRST_TOKEN  # two first-token deadlines (1 retry)
# The expectation table: one row per fault.
TABLE: tuple[Case, ...] = (
    Case("refused", "refused", (), "failover", 1, "closed", 0.0, needle="cannot connect",
         attempts_alone=2, circuit_alone="open"),  # failover at once; retried only alone
    case("blackhole", "blackhole", "failover", 2, "open", RETRIED, needle="first token"),
    case("hang-before-headers", "hang_headers", "failover", 2, "open", RETRIED,
         needle="first token"),
    case("hang-mid-stream", "hang_mid_stream", "partial", 1, "closed", IDLE, "tok0 tok1 ",
         "stalled"),
    case("drop-mid-stream", "drop_mid_stream", "partial", 1, "closed", 0.0, "tok0 tok1 ",
         "connection dropped"),
    case("drop-mid-stream-rst", "drop_mid_stream", "partial", 1, "closed", 0.0, "tok0 tok1 ",
         "connection", rst=1),
    case("http-400", "status", "failover", 1, "closed", 0.0, needle="HTTP 400", code=400),
    Case("http-401", "status", (("code", 401),), "failover", 1, "closed", 0.0,
         needle="HTTP 401", state="misconfigured"),
    Case("http-403", "status", (("code", 403),), "failover", 1, "closed", 0.0,
         needle="HTTP 403", state="misconfigured"),
    case("http-404", "status", "failover", 1, "closed", 0.0, needle="HTTP 404", code=404),
    case("http-408", "status", "failover", 2, "open", 0.0, needle="HTTP 408", code=408),
    case("http-429", "status", "failover", 2, "open", 0.0, needle="HTTP 429", code=429),
    case("http-429-retry-after", "status", "failover", 2, "open", 0.3, needle="HTTP 429",
         code=429, retry_after=0.3),  # waits the 0.3 s it was told, then retries
    case("http-429-retry-after-beyond-cap", "status", "failover", 1, "closed", 0.0,
         needle="HTTP 429", code=429, retry_after=120),  # fails over rather than wait
    case("http-500", "status", "failover", 2, "open", 0.0, needle="HTTP 500", code=500),
    case("http-502", "status", "failover", 2, "open", 0.0, needle="HTTP 502", code=502),
    case("http-503", "status", "failover", 2, "open", 0.0, needle="HTTP 503", code=503),
    case("http-504", "status", "failover", 2, "open", 0.0, needle="HTTP 504", code=504),
    case("http-500-html-body", "status", "failover", 2, "open", 0.0, needle="HTTP 500",
         code=500, body="<html>oops</html>"),
    case("malformed-json", "malformed_json", "failover", 1, "closed", 0.0,
         needle="unreadable answer"),
    case("malformed-sse", "malformed_sse", "partial", 1, "closed", 0.0, "tok0 ",
         "unreadable answer"),
    case("missing-done", "no_done", "answer", 1, "closed", 0.0, TOKENS5),
    case("empty-stream", "empty_stream", "failover", 1, "closed", 0.0, needle="empty stream"),
    case("empty-stream-no-data", "empty_stream", "failover", 1, "closed", 0.0,
         needle="empty stream", mode="close"),
    case("huge-chunk", "huge_chunk", "answer", 1, "closed", 0.0, "x" * (1 << 20)),
    case("slow-drip-under-idle", "drip", "answer", 1, "closed", 3 * 0.4,
         "tok0 tok1 tok2 ", interval=0.4, tokens=3),  # 0.4 s gaps < 0.5 s idle: succeeds
    case("slow-drip-over-idle", "drip", "partial", 1, "closed", 0.65 + IDLE, "tok0 ",
         "stalled", interval=0.65, tokens=3),
    case("wrong-content-type", "wrong_content_type", "failover", 1, "closed", 0.0,
         needle="content-type text/html"),
    case("redirect-307", "redirect", "answer", 1, "closed", 0.0, TOKENS5),
    case("redirect-308", "redirect", "answer", 1, "closed", 0.0, TOKENS5, redirect_code=308),
    case("redirect-302-post-becomes-get", "redirect", "failover", 1, "closed", 0.0,
         needle="HTTP 404", redirect_code=302),
    case("slow-headers-then-ok", "ok", "answer", 1, "closed", 0.4, TOKENS5,
         delay_headers=0.4),
)
# The Anthropic Messages adapter parses its own stream: the faults that reach its parser.
ANTHROPIC: tuple[Case, ...] = tuple(Case(f"anthropic-{c.id}", c.scenario, c.params, c.outcome,
                                         c.attempts, c.circuit, c.bound, c.text, c.needle,
                                         state=c.state, adapter="anthropic") for c in (
    Case("http-401", "status", (("code", 401),), "failover", 1, "closed", 0.0,
         needle="HTTP 401", state="misconfigured"),
    case("http-429", "status", "failover", 2, "open", 0.0, needle="HTTP 429", code=429),
    case("http-529-overloaded", "status", "failover", 2, "open", 0.0, needle="HTTP 529",
         code=529),
    case("hang-mid-stream", "hang_mid_stream", "partial", 1, "closed", IDLE, "tok0 tok1 ",
         "stalled"),
    case("drop-mid-stream", "drop_mid_stream", "partial", 1, "closed", 0.0, "tok0 tok1 ",
         "connection dropped"),
    case("malformed-json", "malformed_json", "failover", 1, "closed", 0.0,
         needle="unreadable answer"),
    case("malformed-sse", "malformed_sse", "partial", 1, "closed", 0.0, "tok0 ",
         "unreadable answer"),
    # unlike [DONE], message_stop is required: the text is kept and the error named
    case("missing-message-stop", "no_done", "partial", 1, "closed", 0.0, TOKENS5,
         "before message_stop"),
    case("empty-stream", "empty_stream", "failover", 1, "closed", 0.0, needle="empty stream"),
    case("empty-stream-no-data", "empty_stream", "failover", 1, "closed", 0.0,
         needle="before message_stop", mode="close"),
    case("huge-chunk", "huge_chunk", "answer", 1, "closed", 0.0, "x" * (1 << 20)),
    case("wrong-content-type", "wrong_content_type", "failover", 1, "closed", 0.0,
         needle="content-type text/html"),
    case("redirect-307", "redirect", "answer", 1, "closed", 0.0, TOKENS5),
))
MODES = ("stream", "complete")


def matrix() -> Iterator[tuple[Case, str, str]]:
    for c in TABLE + ANTHROPIC:
        for mode in MODES:
            yield c, mode, "cascade"
        if c.outcome == "failover" and c.adapter == "vllm_mlx":
            yield c, "complete", "alone"


PARAMS = [pytest.param(c, mode, topo, id=f"{c.id}-{mode}-{topo}") for c, mode, topo in matrix()]


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    with FaultServer(cap=20) as s:
        yield s
        assert not s.errors, s.errors


@pytest.fixture(scope="module")
def blackhole() -> Iterator[Blackhole]:
    with Blackhole(cap=20) as b:
        yield b


def faulty_url(c: Case, srv: FaultServer, blackhole: Blackhole, nonce: str) -> str:
    if c.scenario == "refused":
        return f"http://127.0.0.1:{closed_port()}"
    if c.scenario == "blackhole":
        return blackhole.url
    return srv.base_url(c.scenario, **dict(c.params), n=nonce)


def build(c: Case, topo: str, srv: FaultServer, blackhole: Blackhole, nonce: str) -> Router:
    model = "models: [{name: fault-model}]"
    extra = ", api_key: test-key-0000, cloud: false" if c.adapter == "anthropic" else ""
    text = CASCADE + "providers:\n" + (
        f"  - {{name: a, type: {c.adapter}, priority: 1, {model}{extra},"
        f" base_url: '{faulty_url(c, srv, blackhole, nonce)}'}}\n")
    if topo == "cascade":
        text += (f"  - {{name: b, type: vllm_mlx, priority: 2, {model},"
                 f" base_url: '{srv.base_url('ok', text=BACKUP_TEXT)}'}}\n")
    return Router(parse_config(text, source="matrix.yaml", env={}))


@dataclass
class Observed:
    result: Result | None
    error: Exception | None
    deltas: str
    tryings: int
    took: float


def run(router: Router, mode: str) -> Observed:
    """One request; everything the caller could see."""
    deltas: list[str] = []
    tryings = 0
    result: Result | None = None

    def go() -> Result:
        nonlocal tryings
        if mode == "complete":
            return router.complete("hello")
        out = None
        for ev in router.stream("hello"):
            if isinstance(ev, Trying):
                tryings += 1
            elif isinstance(ev, Delta):
                deltas.append(ev.text)
            elif isinstance(ev, Done):
                out = ev.result
        assert out is not None, "stream ended without Done"
        return out

    t0 = time.monotonic()
    try:
        result, _ = run_bounded(go, HANG_LIMIT)
    except NoProviderAvailable as exc:
        return Observed(None, exc, "".join(deltas), tryings, time.monotonic() - t0)
    return Observed(result, None, "".join(deltas), tryings, time.monotonic() - t0)


# ------------------------------------------------------------------ pure checks


def expected_attempts(c: Case, topo: str) -> int:
    return c.attempts_alone if topo == "alone" and c.attempts_alone else c.attempts


def expected_circuit(c: Case, topo: str) -> Circuit:
    if topo == "alone" and c.circuit_alone:
        return c.circuit_alone
    return c.circuit


def check_outcome(c: Case, topo: str, mode: str, ob: Observed) -> list[str]:
    """Problems with what the caller saw (empty: correct)."""
    n = expected_attempts(c, topo)
    if topo == "alone":
        if ob.error is None:
            return [f"expected NoProviderAvailable, got a result from {ob.result and ob.result.provider}"]
        msg = str(ob.error)
        tried = [a for a in ob.error.trace.attempts if a.provider == "a"]
        problems = []
        if "\n" in msg or c.needle not in msg:
            problems.append(f"unclear error: {msg!r}")
        if len(tried) != n:
            problems.append(f"{len(tried)} attempts, expected {n}")
        return problems
    if ob.error is not None or ob.result is None:
        return [f"raised {ob.error!r}"]
    res = ob.result
    tried = [a for a in res.trace.attempts if a.provider == "a"]
    problems = []
    if len(tried) != n:
        problems.append(f"{len(tried)} attempts on a, expected {n}")
    if mode == "stream" and ob.deltas != res.text:
        problems.append("result text differs from the streamed deltas")
    if mode == "stream" and ob.tryings != len(res.trace.attempts):
        problems.append(f"{ob.tryings} Trying events for {len(res.trace.attempts)} attempts")
    if c.outcome == "failover":
        if res.provider != "b" or not res.ok:
            problems.append(f"answered by {res.provider} (error {res.error}), expected b")
        if not all(a.outcome == "failed" and c.needle in (a.error or "") for a in tried):
            problems.append(f"attempt errors {[a.error for a in tried]} lack {c.needle!r}")
    else:
        if res.provider != "a":
            problems.append(f"answered by {res.provider}, expected a (no failover after a token)")
        if c.outcome == "answer" and not res.ok:
            problems.append(f"expected a full answer, got error {res.error!r}")
        if c.outcome == "partial" and (not res.error or c.needle not in res.error):
            problems.append(f"partial result must name the error ({c.needle!r}): {res.error!r}")
    return problems


def lost_answer(c: Case, topo: str, ob: Observed) -> bool:
    """Text the servers sent that the caller did not get (or got wrong)."""
    if topo == "alone":
        return False
    if ob.result is None:
        return True
    want = BACKUP_TEXT if c.outcome == "failover" else c.text
    return ob.result.text != want


def check_state(c: Case, topo: str, router: Router) -> list[str]:
    problems = []
    health = router.health()["a"]
    if health.circuit != expected_circuit(c, topo):
        problems.append(f"circuit {health.circuit}, expected {expected_circuit(c, topo)}")
    if c.state and health.state != c.state:
        problems.append(f"health {health.state}, expected {c.state}")
    for name, m in router.metrics().items():
        if m.requests != m.successes + m.failures + m.cancelled or m.in_flight:
            problems.append(f"{name} metrics inconsistent: {m}")
    a = router.metrics()["a"]
    n = expected_attempts(c, topo)
    ok = 1 if c.outcome == "answer" else 0
    if (a.requests, a.successes, a.failures) != (n, ok, n - ok):
        problems.append(f"a metrics {a.requests}/{a.successes}/{a.failures}, "
                        f"expected {n}/{ok}/{n - ok}")
    if topo == "cascade":
        b = router.metrics()["b"]
        want_b = 1 if c.outcome == "failover" else 0
        if (b.requests, b.successes) != (want_b, want_b):
            problems.append(f"b metrics {b.requests}/{b.successes}, expected {want_b}")
    return problems


# ------------------------------------------------------------------ the matrix


def test_table_covers_every_fault_the_issue_lists():
    listed = {"refused", "blackhole", "hang_headers", "hang_mid_stream", "drop_mid_stream",
              "malformed_json", "malformed_sse", "no_done", "empty_stream", "huge_chunk",
              "drip", "wrong_content_type", "redirect"}
    assert listed <= {c.scenario for c in TABLE}
    codes = {dict(c.params).get("code") for c in TABLE if c.scenario == "status"}
    assert {400, 401, 403, 404, 408, 429, 500, 502, 503, 504} <= codes
    assert any(dict(c.params).get("retry_after") for c in TABLE)
    assert len(PARAMS) >= 2 * len(TABLE)


@pytest.mark.parametrize("c,mode,topo", PARAMS)
def test_fault(c: Case, mode: str, topo: str, srv: FaultServer, blackhole: Blackhole,
               figures: Figures, request: pytest.FixtureRequest) -> None:
    part = figures.part(PART, *LABELS)
    part.add("cases")
    router = build(c, topo, srv, blackhole, request.node.name)
    try:
        try:
            ob = run(router, mode)
        except Hang:
            part.add("hangs")
            raise
        problems = check_outcome(c, topo, mode, ob)
        if ob.took > c.bound + SLACK:
            problems.append(f"took {ob.took:.2f}s, bound {c.bound:g}s + {SLACK}s slack")
        problems += check_state(c, topo, router)
    finally:
        router.close()
    lost = lost_answer(c, topo, ob)
    if lost:
        part.add("lost answers")
        problems.append(f"lost answer: got {ob.result and ob.result.text[:60]!r}")
    if not problems:
        part.add("correct outcomes")
    assert not problems, "; ".join(problems)
