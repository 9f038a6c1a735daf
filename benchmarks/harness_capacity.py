"""Harness capacity: ``timmy_magic.bench`` driving 256 concurrent streams at a fast server.

    .venv/bin/python benchmarks/harness_capacity.py             # ~2 min on 2 cores
    .venv/bin/python benchmarks/harness_capacity.py --rounds 1 --n 512  # quick

The fast server (benchmarks/fastserver.py, its own process) answers every stream at once
with ``--tokens`` tokens (one SSE event each, usage at the end). The harness
(``timmy_magic.bench.run``, the code behind ``%llm bench``), once per HTTP transport of
the router's clients (``--transport``: ``aiohttp``, the default, ``providers/transport.py``;
``httpx``'s own), sends ``--n`` requests at concurrency 256, closed-loop, through the
router. Figures per round: output tokens/s
(completed tokens / wall time, the harness's own figure), and client CPU per token: the
harness's (its loop thread, ``time.thread_time``) and this whole process's
(``time.process_time``). The server's CPU is shown too, to tell which side saturates.

For reference the same load is driven, 256 workers on a loop of their own, by
(``--raw``): raw aiohttp (``ClientSession``, its lines, ``json.loads`` of the usage event
only: the floor of a Python client), raw httpx (``aiter_lines``, the same), the raw openai
SDK (``AsyncOpenAI``) and LiteLLM's ``Router`` (``acompletion(stream=True)``, fewer
requests: ``--litellm-n``). Rounds alternate the order; medians are reported; process CPU
per token is also shown as a ratio to raw aiohttp's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import _kit

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
RAW = ("raw aiohttp", "raw httpx", "raw openai SDK", "litellm Router")

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


def _parse(line: bytes | str) -> int:
    """Tokens counted from one SSE line of the fast server (its usage event)."""
    text = line.decode() if isinstance(line, bytes) else line
    if not text.startswith("data: ") or text.startswith("data: [DONE]"):
        return 0
    usage = json.loads(text[6:]).get("usage")
    return int(usage["completion_tokens"]) if usage else 0


async def _raw(kind: str, url: str, n: int, tokens: int) -> int:
    """``kind`` streams ``n`` answers with 256 workers; the tokens they reported."""
    body = {"model": f"fast:{tokens}", "messages": [{"role": "user", "content": "Go."}],
            "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}
    left = iter(range(n))
    total = 0
    close: list[Callable[[], Any]] = []
    if kind == "raw openai SDK":
        import openai

        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0)
        close.append(client.close)

        async def one() -> int:
            s = await client.chat.completions.create(**body)
            return sum([c.usage.completion_tokens async for c in s if c.usage is not None])
    elif kind == "raw aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        close.append(session.close)

        async def one() -> int:
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                return sum([_parse(line.rstrip(b"\n")) async for line in r.content])
    elif kind == "raw httpx":
        import httpx

        hc = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1024))
        close.append(hc.aclose)

        async def one() -> int:
            async with hc.stream("POST", url + "/v1/chat/completions", json=body) as r:
                return sum([_parse(line) async for line in r.aiter_lines()])
    else:  # litellm
        import litellm

        lr = litellm.Router(model_list=[{"model_name": "fast", "litellm_params": {
            "model": f"openai/fast:{tokens}", "api_base": url + "/v1",
            "api_key": "not-needed"}}], num_retries=0)

        async def one() -> int:
            s = await lr.acompletion(model="fast", messages=body["messages"],
                                     max_tokens=tokens, stream=True,
                                     stream_options={"include_usage": True})
            return sum([u.completion_tokens async for c in s
                        if (u := getattr(c, "usage", None)) is not None])

    async def worker() -> None:
        nonlocal total
        for _ in left:
            got = await one()  # (not ``total += await``: that reads total before the await)
            total += got

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        for fn in close:
            await fn()
    return total


def raw(kind: str, n: int, tokens: int) -> dict[str, float]:
    c0, s0, w0 = _kit.cpu(), SERVER.cpu_seconds(), time.perf_counter()
    out = asyncio.run(_raw(kind, SERVER.url, n, tokens))
    cpu, server, wall = _kit.cpu() - c0, SERVER.cpu_seconds() - s0, time.perf_counter() - w0
    if out != n * tokens:
        raise RuntimeError(f"{kind}: {out} tokens, expected {n * tokens}")
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
    ap.add_argument("--transport", default="aiohttp,httpx",
                    help="the router's HTTP transports to compare (providers.base; "
                    "aiohttp is the default)")
    ap.add_argument("--raw", default=",".join(RAW), help="the other drivers to compare")
    ap.add_argument("--litellm-n", type=int, default=256,
                    help="requests per round for LiteLLM (slow: ~10x our CPU per token)")
    args = ap.parse_args()
    _kit.header("harness capacity: 256 concurrent streams through timmy_magic.bench",
                ("python benchmarks/harness_capacity.py " + " ".join(sys.argv[1:])).strip())
    from timmy_magic.providers import base

    transports = args.transport.split(",")
    runs: dict[str, list[dict[str, float]]] = {f"bench, {t}": [] for t in transports}
    others = [k for k in args.raw.split(",") if k]
    runs.update({k: [] for k in others})
    with _kit.fast_server() as srv:
        SERVER = srv
        routers = {}
        for t in transports:  # each router's clients are built with its transport
            base.HTTP_TRANSPORT = t
            routers[t] = _kit.make_router([_kit.provider("fast", srv.url,
                                                         model=f"fast:{args.tokens}")])
            harness(routers[t], CONCURRENCY, args.tokens)  # warm-up: imports, connections
        base.HTTP_TRANSPORT = "aiohttp"
        try:
            for r in range(args.rounds):
                ways: list[tuple[str, Callable[[], dict[str, float]]]] = [
                    (f"bench, {t}", lambda t=t: harness(routers[t], args.n, args.tokens))
                    for t in transports]
                ways += [(k, lambda k=k: raw(k, args.litellm_n if k.startswith("litellm")
                                             else args.n, args.tokens)) for k in others]
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
    theirs = med([x["tok_s"] for x in runs.get("raw openai SDK", [])] or [float("nan")])
    floor = med([x["process_cpu_us_tok"] for x in runs.get("raw aiohttp", [])]
                or [float("nan")])
    for name in (n for n in runs if n.startswith("bench")):
        peak = max(x["peak"] for x in runs[name])
        ours = med([x["tok_s"] for x in runs[name]])
        us = med([x["harness_cpu_us_tok"] for x in runs[name]])
        proc = med([x["process_cpu_us_tok"] for x in runs[name]])
        print(f"   {_kit.verdict(us <= 30):6} {name}: {us:.1f} us of loop CPU per token "
              f"(<= 30); peak in flight {peak}; throughput {ours / theirs:.2f}x the raw "
              f"SDK's; process CPU {proc / floor:.2f}x raw aiohttp's".replace(
                  "throughput nanx the raw SDK's; ", "").replace(
                  "; process CPU nanx raw aiohttp's", ""))
    for name in (n for n in runs if not n.startswith("bench")):
        proc = med([x["process_cpu_us_tok"] for x in runs[name]])
        print(f"   (info) {name}: process CPU per token {proc / floor:.2f}x raw aiohttp's")
    try:
        import vllm_mlx  # noqa: F401
    except ImportError:
        print("   (info) vllm-mlx bench_serve: not installed here (Apple silicon only): "
              "benchmarks/bench_agreement.py compares with it where it is")
    print(f"   load average at the end: {_kit.loadavg()}")


if __name__ == "__main__":
    main()
