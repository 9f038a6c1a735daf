"""The benchmark driver against the fault server (a real HTTP server on loopback)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.bench.conftest import MakeRouter, fault_provider, provider
from tests.support.faultserver import FaultServer, closed_port
from timmy_magic import bench
from timmy_magic.bench.runner import BenchSettings, NothingToBench, choose_providers
from timmy_magic.model.errors import UnknownProvider


def test_closed_loop_concurrency_and_request_counts(fault: FaultServer,
                                                    make_router: MakeRouter) -> None:
    router = make_router([fault_provider(fault, "a", tokens=4, delay=0.02)])
    res = bench.run(router, ["a"], concurrency=(3, 8), n=7, max_tokens=4, warmup=0,
                    progress="none")
    c3, c8 = res.records
    assert (c3["requests"], c3["completed"], c3["peak_concurrency"]) == (7, 7, 3)
    assert c3["peak_streams"] == 3
    # n below the concurrency: the level still sends one request per worker
    assert (c8["requests"], c8["completed"], c8["peak_concurrency"]) == (8, 8, 8)
    for rec in res.records:
        assert rec["errors"] == rec["incomplete"] == rec["cancelled"] == 0
        assert rec["output_tokens"] == 4 * rec["requests"]  # from the server's usage
        assert rec["chunks"] == rec["output_tokens"] and not rec["tokens_estimated"]
        assert rec["model"] == "fault-model"
        # the server sends 4 chunks 20 ms apart; on a busy machine the client may read
        # some late and the next ones at once, so only the order of magnitude is checked
        assert 5 <= rec["itl_ms_mean"] <= 200 and 5 <= rec["tpot_ms_mean"] <= 200
        assert rec["e2e_ms_p50"] > rec["ttft_ms_p50"]
        assert rec["output_tok_s"] > 0 and rec["requests_per_s"] > 0
        assert rec["client_cpu_ms_per_chunk"] > 0


def test_each_provider_alone_warmup_apart(fault: FaultServer, make_router: MakeRouter) -> None:
    fault.reset()
    router = make_router([fault_provider(fault, "a", tokens=3),
                          fault_provider(fault, "b", tokens=5, priority=2)])
    res = bench.run(router, ["b", "a"], concurrency=2, n=3, max_tokens=8, warmup=2,
                    prompts=["one", "two"], progress="none")
    assert [(r["provider"], r["requests"]) for r in res.records] == [("b", 3), ("a", 3)]
    assert [(w["provider"], w["index"]) for w in res.warmup] == [
        ("b", 0), ("b", 1), ("a", 0), ("a", 1)]
    assert all(w["status"] == "ok" and w["ttft_ms"] > 0 for w in res.warmup)
    # pinned: every request of a run went to its own provider's scenario URL
    chats = [r for r in fault.requests if r.path.endswith("/chat/completions")]
    b_reqs = [r for r in chats if "tokens=5" in r.path]
    a_reqs = [r for r in chats if "tokens=3" in r.path]
    assert (len(b_reqs), len(a_reqs)) == (5, 5)  # 2 warm-up + 3 measured each
    assert b_reqs[-1].time < a_reqs[0].time  # one provider at a time
    assert {r.json["messages"][0]["content"] for r in a_reqs} == {"one", "two"}
    assert all(r.json["max_tokens"] == 8 for r in chats)
    assert res.records[0]["output_tokens"] == 15 and res.records[1]["output_tokens"] == 9


def test_errors_and_broken_streams_are_counted(fault: FaultServer,
                                               make_router: MakeRouter) -> None:
    router = make_router([fault_provider(fault, "err", "status", code=500),
                          fault_provider(fault, "cut", "drop_mid_stream", priority=2),
                          provider("gone", f"http://127.0.0.1:{closed_port()}/v1",
                                   priority=3, models=[{"name": "x"}])],
                         circuit_breaker={"failure_threshold": 100})
    res = bench.run(router, ["err", "cut", "gone"], concurrency=2, n=4, warmup=0,
                    progress="none")
    err, cut, gone = res.records
    assert (err["requests"], err["completed"], err["errors"]) == (4, 0, 4)
    assert "500" in err["first_error"]
    assert err["ttft_ms_p50"] is None and err["output_tok_s"] == 0.0
    assert (cut["completed"], cut["incomplete"], cut["errors"]) == (0, 4, 0)
    assert cut["first_error"]
    assert (gone["errors"], gone["retries"]) == (4, 0)
    assert "cannot connect" in gone["first_error"]
    text = str(res)
    assert "err c=2: 4 errors" in text and "cut c=2: 0 errors, 4 cut" in text


def test_without_names_only_healthy_providers(fault: FaultServer,
                                              make_router: MakeRouter) -> None:
    router = make_router([fault_provider(fault, "up", tokens=2),
                          provider("down", f"http://127.0.0.1:{closed_port()}/v1",
                                   priority=2),
                          fault_provider(fault, "sick", "ok", priority=3, health=503)])
    names, notes = choose_providers(router)
    assert names == ["up"] and notes == []
    res = bench.run(router, n=1, warmup=0, progress="none")
    assert [r["provider"] for r in res.records] == ["up"]


def test_nothing_to_bench_and_unknown_names(make_router: MakeRouter) -> None:
    router = make_router([provider("down", f"http://127.0.0.1:{closed_port()}/v1")])
    with pytest.raises(NothingToBench, match="no healthy provider.*down not running"):
        bench.run(router, progress="none")
    with pytest.raises(UnknownProvider, match="unknown provider nope; configured: down"):
        bench.run(router, ["nope"], progress="none")


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        BenchSettings(("a",), concurrency=(0,))
    with pytest.raises(ValueError):
        BenchSettings(("a",), n=0)
    with pytest.raises(ValueError):
        BenchSettings(("a",), prompts=(" ",))
    s = BenchSettings(("a", "b"), concurrency=(1, 8), n=4, warmup=1)
    assert s.requests_at(1) == 4 and s.requests_at(8) == 8
    assert s.total_requests == 2 * (1 + 4 + 8)


class InterruptAfter:
    """A progress display that sends this process a real SIGINT once ``k`` requests are
    done (what a kernel interrupt is), and records how the run finished."""

    def __init__(self, k: int) -> None:
        self.k, self.sent, self.total = k, False, 0
        self.finished: tuple[int, str] | None = None

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, done: int, line: str) -> None:
        if done >= self.k and not self.sent:
            self.sent = True
            signal.raise_signal(signal.SIGINT)

    def finish(self, done: int, line: str) -> None:
        self.finished = (done, line)


def test_interrupt_stops_the_run_and_keeps_finished_results(
        fault: FaultServer, make_router: MakeRouter) -> None:
    router = make_router([fault_provider(fault, "a", tokens=6, delay=0.1),
                          fault_provider(fault, "b", tokens=6, priority=2)])
    bar = InterruptAfter(5)
    t0 = time.monotonic()
    res = bench.run(router, ["a", "b"], concurrency=(1, 2), n=4, max_tokens=6, warmup=0,
                    progress=bar)
    elapsed = time.monotonic() - t0
    assert bar.sent and bar.finished is not None
    done, line = bar.finished
    assert done < bar.total and line.startswith(f"interrupted after {done}/{bar.total} ")
    assert res.interrupted
    # a at c=1 finished whole; a at c=2 is partial; b never started
    first, partial = res.records
    assert (first["concurrency"], first["completed"], first["interrupted"]) == (1, 4, False)
    assert partial["concurrency"] == 2 and partial["interrupted"]
    assert partial["completed"] >= 1 and partial["cancelled"] >= 1
    assert partial["completed"] + partial["cancelled"] <= 4
    assert not any(r["provider"] == "b" for r in res.records)
    assert elapsed < 4.5  # the whole run would take ~0.5 s x (4 + 2) + b's requests
    assert "interrupted" in str(res)
    # the router is still usable afterwards
    assert router.complete("hi", provider="b").text.startswith("tok0")


def test_named_providers_that_cannot_be_asked_are_left_out_with_why(
        fault: FaultServer, make_router: MakeRouter) -> None:
    """A newcomer's tutorial named the shipped, disabled vllm-mlx with nothing at its
    address: it was benched to 0 completed. Now: left out, the note says why; all of them
    unusable is one NothingToBench naming each."""
    router = make_router([fault_provider(fault, "up", tokens=2),
                          provider("off", f"http://127.0.0.1:{closed_port()}/v1",
                                   priority=2, enabled=False),
                          provider("cloud", "https://api.example.invalid/v1", priority=3,
                                   type="openai", api_key="${NO_SUCH_KEY_VAR}")])
    names, notes = choose_providers(router, ["up", "off", "cloud"])
    assert names == ["up"]
    assert notes[0].startswith("left out, cannot be asked: off (disabled")
    assert "cloud (not configured: set NO_SUCH_KEY_VAR" in notes[0]
    with pytest.raises(NothingToBench, match=r"nothing to benchmark: off \(disabled"):
        bench.run(router, ["off"], progress="none")
