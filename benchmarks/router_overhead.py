"""Router overhead: the same requests through the raw openai SDK, our router and LiteLLM's.

    .venv/bin/python benchmarks/router_overhead.py            # ~7 min on 2 cores
    .venv/bin/python benchmarks/router_overhead.py --rounds 3 --n1 200 --n32 400  # quick

One fast OpenAI-compatible server (benchmarks/fastserver.py) runs in its own process and
answers a fixed 8-token completion at once, so what differs between clients is the
client. Every client sends the same requests, non-streaming and streaming, closed-loop at
concurrency 1 and 32, all on one asyncio loop (the router's own loop thread, through
``router.runner.run``):

- ``raw``: ``openai.AsyncOpenAI`` as a user would make it (its default HTTP stack);
- ``raw-httpx``: ``openai.AsyncOpenAI`` over the same ``httpx.AsyncClient`` settings our
  adapter uses (so ours minus this is the router's own code, nothing else);
- ``ours``: ``Router`` with one provider, ``router.acomplete`` (non-streaming; the router
  always streams on the wire) and ``router.astream`` (streaming), awaited on its loop;
- ``litellm``: ``litellm.Router`` with the same single deployment, ``acompletion``.

``ours-sync`` is the sync facade (``router.complete`` / ``router.stream`` from the main
thread, concurrency 1 only): what a plain script or the magic pays for the thread hop.

Clients take turns inside each round (the order rotates), so drift on a shared machine
hits all alike. Per round: median and p99 latency and client CPU per request (the whole
client process: ``time.process_time``; the server is another process). Reported: the
median over rounds of each figure and of each client's difference to ``raw``.
Targets (issue 8): ours adds < 0.3 ms median at concurrency 1, and >= 10x less than
LiteLLM's Router.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import _kit
from fastserver import DEFAULT_TOKENS, words

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
MESSAGES = [{"role": "user", "content": "Say hello."}]
EXPECTED = "".join(words(DEFAULT_TOKENS))
CLIENTS = ("raw", "raw-httpx", "ours", "litellm")
Call = Callable[[], Awaitable[str]]


# ------------------------------------------------------------------ the clients


def openai_calls(client: Any) -> dict[str, Call]:
    async def plain() -> str:
        r = await client.chat.completions.create(model="fast", messages=MESSAGES)
        return str(r.choices[0].message.content)

    async def stream() -> str:
        s = await client.chat.completions.create(
            model="fast", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        parts = []
        async for c in s:
            if c.choices and c.choices[0].delta.content:
                parts.append(c.choices[0].delta.content)
        return "".join(parts)

    return {"plain": plain, "stream": stream}


def our_calls(router: Any) -> dict[str, Call]:
    from timmy_magic.model.chat import ChatRequest, Delta

    req = ChatRequest.of("Say hello.")

    async def plain() -> str:
        return str((await router.acomplete(req)).text)

    async def stream() -> str:
        parts = []
        async for ev in router.astream(req):
            if isinstance(ev, Delta):
                parts.append(ev.text)
        return "".join(parts)

    return {"plain": plain, "stream": stream}


def litellm_calls(url: str) -> tuple[dict[str, Call], Any]:
    import litellm

    lite: Any = litellm  # its stubs do not export Router
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    lr = lite.Router(model_list=[{"model_name": "fast", "litellm_params": {
        "model": "openai/fast", "api_base": url + "/v1", "api_key": "not-needed"}}],
        num_retries=0)

    async def plain() -> str:
        r = await lr.acompletion(model="fast", messages=MESSAGES)
        return str(r.choices[0].message.content)

    async def stream() -> str:
        s = await lr.acompletion(model="fast", messages=MESSAGES, stream=True,
                                 stream_options={"include_usage": True})
        parts = []
        async for c in s:
            if c.choices and c.choices[0].delta.content:
                parts.append(c.choices[0].delta.content)
        return "".join(parts)

    return {"plain": plain, "stream": stream}, lr


# ------------------------------------------------------------------ measuring


@dataclass
class Batch:
    latencies: list[float]
    cpu_s: float
    wall_s: float

    @property
    def cpu_per_request_ms(self) -> float:
        return self.cpu_s / len(self.latencies) * 1e3


async def batch(call: Call, n: int, concurrency: int) -> Batch:
    """``n`` requests, ``concurrency`` workers each starting the next at once."""
    latencies: list[float] = []
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            t0 = time.perf_counter()
            text = await call()
            latencies.append(time.perf_counter() - t0)
            if text != EXPECTED:
                raise RuntimeError(f"unexpected answer {text[:80]!r}... ({len(text)} chars)")

    c0, w0 = _kit.cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Batch(latencies, _kit.cpu() - c0, time.perf_counter() - w0)


async def interleaved(calls: dict[str, Call], n: int) -> dict[str, list[float]]:
    """Concurrency 1, one request of each client in turn (the order rotating), ``n``
    times: every client sees the same machine at the same moments."""
    names = list(calls)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            text = await calls[name]()
            out[name].append(time.perf_counter() - t0)
            if text != EXPECTED:
                raise RuntimeError(f"{name}: unexpected answer {text!r}")
    return out


def sync_batch(router: Any, mode: str, n: int) -> Batch:
    from timmy_magic.model.chat import ChatRequest, Delta

    req = ChatRequest.of("Say hello.")
    latencies = []
    c0, w0 = _kit.cpu(), time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        if mode == "plain":
            text = router.complete(req).text
        else:
            text = "".join(ev.text for ev in router.stream(req) if isinstance(ev, Delta))
        latencies.append(time.perf_counter() - t0)
        if text != EXPECTED:
            raise RuntimeError(f"sync: unexpected answer {text!r}")
    return Batch(latencies, _kit.cpu() - c0, time.perf_counter() - w0)


@dataclass
class Cell:
    """One (client, mode, concurrency): a Batch per round (CPU, and latency at c=32),
    and at c=1 the interleaved latencies of every round."""

    rounds: list[Batch] = field(default_factory=list)
    c1: list[list[float]] = field(default_factory=list)

    def latency_rounds(self) -> list[list[float]]:
        return self.c1 or [b.latencies for b in self.rounds]

    def per_round(self, what: str) -> list[float]:
        if what == "cpu":
            return [b.cpu_per_request_ms for b in self.rounds]
        q = 50 if what == "p50" else 99
        return [_kit.pct(lat, q) * 1e3 for lat in self.latency_rounds()]


def added(cells: dict[str, Cell], client: str, what: str) -> float:
    """Median over rounds of (client - raw), paired by round."""
    mine, raw = cells[client].per_round(what), cells["raw"].per_round(what)
    return _kit.median([a - b for a, b in zip(mine, raw, strict=True)])


# ------------------------------------------------------------------ the run


def run(args: argparse.Namespace) -> None:
    import openai

    from timmy_magic.providers.base import make_http_client

    with _kit.fast_server() as srv:
        router = _kit.make_router([_kit.provider("fast", srv.url)])
        try:
            def on_loop(coro: Any) -> Any:
                return router.runner.run(coro, timeout=600)

            def make_clients() -> dict[str, dict[str, Call]]:
                timeouts = router.timeouts
                raw = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="not-needed",
                                         max_retries=0)
                same = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="not-needed",
                                          max_retries=0, http_client=make_http_client(
                                              timeouts))
                lite, _ = litellm_calls(srv.url)
                return {"raw": openai_calls(raw), "raw-httpx": openai_calls(same),
                        "ours": our_calls(router), "litellm": lite}

            async def build() -> dict[str, dict[str, Call]]:
                return make_clients()

            clients = on_loop(build())
            for name, calls in clients.items():  # warm-up: imports, connections, caches
                for mode, call in calls.items():
                    print(f"   warm-up {name} {mode}", flush=True)
                    on_loop(batch(call, args.warmup, 4))
            for mode in ("plain", "stream"):
                sync_batch(router, mode, args.warmup)
            cells: dict[tuple[str, str, int], Cell] = {}
            sync_cells: dict[str, Cell] = {"plain": Cell(), "stream": Cell()}
            for r in range(args.rounds):
                order = CLIENTS[r % len(CLIENTS):] + CLIENTS[:r % len(CLIENTS)]
                for mode in ("plain", "stream"):
                    lat = on_loop(interleaved({k: clients[k][mode] for k in order}, args.n1))
                    for name in order:
                        cells.setdefault((mode, name, 1), Cell()).c1.append(lat[name])
                    for conc, n in ((1, args.n1 // 2), (32, args.n32)):
                        for name in order:
                            b = on_loop(batch(clients[name][mode], n, conc))
                            cells.setdefault((mode, name, conc), Cell()).rounds.append(b)
                    sync_cells[mode].rounds.append(sync_batch(router, mode, args.n1 // 2))
                print(f"   round {r + 1}/{args.rounds} done (load {_kit.loadavg()})",
                      flush=True)
        finally:
            router.close()
    alone = router_alone(args)
    print("\n-- the router alone: a provider with no I/O (answers from memory), "
          f"{args.alone} requests x {args.rounds} rounds, CPU per request (ms)")
    print(_kit.table(["path", "cpu/req"], [[k, v] for k, v in alone.items()]))
    report(cells, sync_cells, args, alone)


def router_alone(args: argparse.Namespace) -> dict[str, float]:
    """The router's own CPU cost per request: planning, events, metrics, result."""
    kind = _kit.register_null_backend()
    router = _kit.make_router([{"name": "null", "type": kind, "models": [{"name": "fast"}]}])
    calls = our_calls(router)
    out: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for mode, call in calls.items():
                b = router.runner.run(batch(call, args.alone, 1), timeout=600)
                out.setdefault(f"{'acomplete' if mode == 'plain' else 'astream'} "
                               "(on its loop)", []).append(b.cpu_per_request_ms)
                s = sync_batch(router, mode, args.alone // 2)
                out.setdefault(f"{'complete' if mode == 'plain' else 'stream'} (sync "
                               "facade)", []).append(s.cpu_per_request_ms)
    finally:
        router.close()
    return {k: _kit.median(v) for k, v in out.items()}


def report(cells: dict[tuple[str, str, int], Cell], sync_cells: dict[str, Cell],
           args: argparse.Namespace, alone: dict[str, float]) -> None:
    """Tables, then the targets: added latency (median) and added CPU per request, ours
    against LiteLLM's, each as measured against raw in this run."""
    verdicts = []
    added_c1: dict[str, float] = {}
    for mode in ("plain", "stream"):
        for conc in (1, 32):
            by = {name: cells[(mode, name, conc)] for name in CLIENTS}
            if conc == 1:
                by["ours-sync"] = sync_cells[mode]
            rows = []
            for name, cell in by.items():
                rows.append([name, _kit.median(cell.per_round("p50")),
                             _kit.median(cell.per_round("p99")),
                             _kit.median(cell.per_round("cpu")),
                             added(by, name, "p50"), added(by, name, "p99"),
                             added(by, name, "cpu")])
            label = "non-streaming" if mode == "plain" else "streaming"
            n = args.n1 if conc == 1 else args.n32
            how = ("latency: one request of each client in turn; CPU: batches of "
                   f"{args.n1 // 2}") if conc == 1 else "batches"
            print(f"\n-- {label}, concurrency {conc}, {n} requests x {args.rounds} rounds, "
                  f"{how} (ms; 'added' = minus raw, paired by round)")
            print(_kit.table(["client", "p50", "p99", "cpu/req", "added p50", "added p99",
                              "added cpu/req"], rows))
            ours, lite = added(by, "ours", "p50"), added(by, "litellm", "p50")
            if conc == 1:
                added_c1[mode] = lite
            ours_cpu, lite_cpu = added(by, "ours", "cpu"), added(by, "litellm", "cpu")
            print(f"   litellm adds {lite:.3f} ms p50 and {lite_cpu:.3f} ms CPU; ours adds "
                  f"{ours:.3f} ms p50 and {ours_cpu:.3f} ms CPU")
            if conc == 1:
                verdicts.append((f"{label}, c=1: ours adds {ours:.3f} ms median vs raw (< 0.3)",
                                 ours < 0.3))
            for what, mine, theirs in (("latency", ours, lite), ("CPU", ours_cpu, lite_cpu)):
                if mine <= 0:
                    text = (f"{label}, c={conc}, {what}: ours adds nothing (it is "
                            f"{-mine:.3f} ms under raw); litellm adds {theirs:.3f} ms")
                    verdicts.append((text, theirs > 0))
                else:
                    text = (f"{label}, c={conc}, {what}: litellm adds {theirs / mine:.1f}x "
                            f"what ours adds ({theirs:.3f} / {mine:.3f} ms; >= 10x)")
                    verdicts.append((text, theirs / mine >= 10))
    print("\n-- targets")
    for text, ok in verdicts:
        print(f"   {_kit.verdict(ok):6} {text}")
    own = alone["acomplete (on its loop)"]
    print(f"   (info) the router's own CPU per request, no I/O: {own:.3f} ms "
          f"({'under' if own < 0.3 else 'over'} 0.3 ms on this machine); litellm's added "
          "latency against it, c=1: " + ", ".join(
              f"{m} {added_c1[m] / own:.1f}x" for m in ("plain", "stream")))
    print(f"   load average at the end: {_kit.loadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n1", type=int, default=300, help="requests per round at c=1")
    ap.add_argument("--n32", type=int, default=640, help="requests per batch at c=32")
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--alone", type=int, default=2000,
                    help="requests per round for the router-alone figure")
    args = ap.parse_args()
    cmd = "python benchmarks/router_overhead.py " + " ".join(sys.argv[1:])
    _kit.header("router overhead: raw openai SDK vs timmy_magic Router vs LiteLLM Router",
                cmd.strip())
    run(args)


if __name__ == "__main__":
    main()
