"""Harness capacity: ``timmy_magic.bench`` driving 256 concurrent streams at a fast server.

    .venv/bin/python benchmarks/harness_capacity.py             # ~2 min on 2 cores
    .venv/bin/python benchmarks/harness_capacity.py --rounds 1 --n 512  # quick

The fast server (benchmarks/fastserver.py, its own process) answers every stream at once
with ``--tokens`` tokens (one SSE event each, usage at the end). The harness
(``timmy_magic.bench.run``, the code behind ``%llm bench``), once per HTTP transport of
the router's clients (``--transport``: httpx's own, and ``httpx_aiohttp``), sends ``--n`` requests at
concurrency 256, closed-loop, through the router. Figures per round: output tokens/s
(completed tokens / wall time, the harness's own figure), and client CPU per token: the
harness's (its loop thread, ``time.thread_time``) and this whole process's
(``time.process_time``). The server's CPU is shown too, to tell which side saturates.

For reference the same load is driven by the raw openai SDK (``AsyncOpenAI``, 256 workers,
same requests) on a loop of its own. Rounds alternate the order; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import _kit

CONCURRENCY = 256


def harness(router: Any, n: int, tokens: int) -> dict[str, float]:
    from timmy_magic import bench

    c0, s0, w0 = _kit.cpu(), SERVER.cpu_seconds(), time.perf_counter()
    res = bench.run(router, ["fast"], concurrency=CONCURRENCY, n=n, max_tokens=tokens,
                    warmup=0, progress="none")
    cpu, server, wall = _kit.cpu() - c0, SERVER.cpu_seconds() - s0, time.perf_counter() - w0
    rec = res.records[0]
    if rec["completed"] != n:
        raise RuntimeError(f"harness: {rec['completed']}/{n} completed; {rec['first_error']}")
    out = rec["output_tokens"]
    return {"tok_s": rec["output_tok_s"], "out_tokens": out,
            "harness_cpu_us_tok": rec["client_cpu_s"] / out * 1e6,
            "process_cpu_us_tok": cpu / out * 1e6, "server_cpu_us_tok": server / out * 1e6,
            "wall_s": wall, "ttft_p50_ms": rec["ttft_ms_p50"],
            "peak": rec.get("peak_concurrency", 0)}


async def _raw(url: str, n: int, tokens: int) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0)
    left = iter(range(n))
    total = 0

    async def worker() -> None:
        nonlocal total
        for _ in left:
            s = await client.chat.completions.create(
                model=f"fast:{tokens}", messages=[{"role": "user", "content": "Go."}],
                max_tokens=tokens, stream=True, stream_options={"include_usage": True})
            async for c in s:
                if c.usage is not None:
                    total += c.usage.completion_tokens

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        await client.close()
    return total


def raw(n: int, tokens: int) -> dict[str, float]:
    c0, s0, w0 = _kit.cpu(), SERVER.cpu_seconds(), time.perf_counter()
    out = asyncio.run(_raw(SERVER.url, n, tokens))
    cpu, server, wall = _kit.cpu() - c0, SERVER.cpu_seconds() - s0, time.perf_counter() - w0
    if out != n * tokens:
        raise RuntimeError(f"raw: {out} tokens, expected {n * tokens}")
    return {"tok_s": out / wall, "out_tokens": out, "harness_cpu_us_tok": float("nan"),
            "process_cpu_us_tok": cpu / out * 1e6, "server_cpu_us_tok": server / out * 1e6,
            "wall_s": wall, "ttft_p50_ms": float("nan"), "peak": CONCURRENCY}


SERVER: _kit.FastServer


def main() -> None:
    global SERVER
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1024, help="requests per round (>= 256)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    ap.add_argument("--transport", default="httpx,aiohttp",
                    help="the router's HTTP transports to compare (providers.base)")
    args = ap.parse_args()
    _kit.header("harness capacity: 256 concurrent streams through timmy_magic.bench",
                ("python benchmarks/harness_capacity.py " + " ".join(sys.argv[1:])).strip())
    from timmy_magic.providers import base

    transports = args.transport.split(",")
    runs: dict[str, list[dict[str, float]]] = {f"bench, {t}": [] for t in transports}
    runs["raw openai SDK"] = []
    with _kit.fast_server() as srv:
        SERVER = srv
        routers = {}
        for t in transports:  # each router's clients are built with its transport
            base.HTTP_TRANSPORT = t
            routers[t] = _kit.make_router([_kit.provider("fast", srv.url,
                                                         model=f"fast:{args.tokens}")])
            harness(routers[t], CONCURRENCY, args.tokens)  # warm-up: imports, connections
        base.HTTP_TRANSPORT = "httpx"
        try:
            for r in range(args.rounds):
                ways: list[tuple[str, Callable[[], dict[str, float]]]] = [
                    (f"bench, {t}", lambda t=t: harness(routers[t], args.n, args.tokens))
                    for t in transports]
                ways.append(("raw openai SDK", lambda: raw(args.n, args.tokens)))
                for name, fn in ways if r % 2 == 0 else ways[::-1]:
                    runs[name].append(fn())
                print(f"   round {r + 1}/{args.rounds} done (load {_kit.loadavg()})",
                      flush=True)
        finally:
            for router in routers.values():
                router.close()
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> None:
    med = _kit.median
    keys = ["tok_s", "harness_cpu_us_tok", "process_cpu_us_tok", "server_cpu_us_tok",
            "ttft_p50_ms", "wall_s"]
    print(f"\n-- {args.n} requests x {args.tokens} tokens at concurrency {CONCURRENCY}, "
          f"{args.rounds} rounds (medians)")
    rows = [[name, *(med([x[k] for x in rs]) for k in keys)] for name, rs in runs.items()]
    print(_kit.table(["driver", "out tok/s", "loop CPU us/tok", "process CPU us/tok",
                      "server CPU us/tok", "TTFT p50 ms", "wall s"], rows))
    theirs = med([x["tok_s"] for x in runs["raw openai SDK"]])
    for name in (n for n in runs if n.startswith("bench")):
        peak = max(x["peak"] for x in runs[name])
        ours = med([x["tok_s"] for x in runs[name]])
        us = med([x["harness_cpu_us_tok"] for x in runs[name]])
        print(f"   {_kit.verdict(us <= 30):6} {name}: {us:.1f} us of loop CPU per token "
              f"(<= 30); peak in flight {peak}; throughput {ours / theirs:.2f}x the raw SDK's")
    print(f"   load average at the end: {_kit.loadavg()}")


if __name__ == "__main__":
    main()
