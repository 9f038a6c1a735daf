"""Scale-out: one provider with two real llama-server replicas against one replica.

    .venv/bin/python benchmarks/scale_out.py              # ~5 min on 2 cores
    .venv/bin/python benchmarks/scale_out.py --rounds 1 --n 8   # quick

Two llama.cpp ``llama-server`` processes serve Gemma 3 270M Q4_K_M
(``tests/support/servers.py: start_llama_server``), each with one thread (``-t 1``) and
pinned to its own core with ``taskset`` (replica A on CPU 0, replica B on CPU 1): on this
2-core machine that stands in for two machines. Each replica has 4 parallel slots; the
default load, 8 requests in flight, is more than one replica can batch at once (at
concurrency 4 one replica batches everything and a second one gains little on this CPU).
The configurations get the same load, ``--n`` requests of ``--max-tokens`` tokens at
concurrency ``--concurrency``, closed-loop, through ``router.acomplete`` on the router's
loop:

- one replica: a provider with ``base_url`` = replica A;
- two replicas: the same provider with ``replicas: [A, B]``, balanced by least
  outstanding requests (ties round-robin);
- for reference, two replicas split by hand: half the workers use a router with only A,
  half one with only B (a perfect static split: what the balancer should match).

Figures per run: aggregate output tokens/s (server-reported usage / wall time), request
p50 latency, and how the requests were split between the replicas (``Result.endpoint``).
Runs alternate between the two configurations; medians over rounds are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import _kit

PROMPT = "Write a detailed story about a lighthouse keeper who finds a message in a bottle."


def start_replica(cpu: int) -> Any:
    from tests.support.servers import start_llama_server

    srv = start_llama_server(threads=1, parallel=4, ctx_size=2048)
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(srv.pid)], check=True,
                   capture_output=True, timeout=10)
    return srv


async def drive(router: Any, n: int, concurrency: int, max_tokens: int,
                other: Any = None) -> dict[str, Any]:
    """``n`` requests by ``concurrency`` workers; with ``other``, odd workers use it."""
    from timmy_magic.model.chat import ChatRequest

    req = ChatRequest.of(PROMPT, max_tokens=max_tokens, temperature=0.8)
    left = iter(range(n))
    tokens, latencies, where = 0, [], Counter[str]()

    async def worker(mine: Any) -> None:
        nonlocal tokens
        for _ in left:
            t0 = time.perf_counter()
            res = await mine.acomplete(req)
            latencies.append(time.perf_counter() - t0)
            if res.error:
                raise RuntimeError(f"request failed: {res.error}")
            tokens += res.usage.output_tokens or 0
            where[res.endpoint or "?"] += 1

    w0 = time.perf_counter()
    await asyncio.gather(*(worker(other if other is not None and i % 2 else router)
                           for i in range(concurrency)))
    wall = time.perf_counter() - w0
    return {"tok_s": tokens / wall, "tokens": tokens, "wall_s": wall,
            "p50_s": _kit.median(latencies), "split": dict(where)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=16, help="requests per run")
    ap.add_argument("--concurrency", type=int, default=8,
                    help="requests in flight (each replica has 4 parallel slots)")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    _kit.header("scale-out: two llama-server replicas vs one",
                ("python benchmarks/scale_out.py " + " ".join(sys.argv[1:])).strip())
    a = start_replica(0)
    try:
        b = start_replica(1)
        try:
            runs = measure(args, a.base_url, b.base_url)
        finally:
            b.stop()
    finally:
        a.stop()
    report(args, runs)


def measure(args: argparse.Namespace, url_a: str, url_b: str) -> dict[str, list[Any]]:
    def provider(**kw: Any) -> dict[str, Any]:
        return {"name": "gemma", "type": "llama_cpp",
                "models": [{"name": "gemma-3-270m", "default": True}], **kw}

    configs = {"one replica": [provider(base_url=url_a)],
               "two replicas": [provider(replicas=[url_a, url_b])],
               "two, split by hand": [provider(base_url=url_a)]}
    from timmy_magic.routing.runner import Runner

    shared = Runner()  # the hand split: two routers, one loop
    routers = {name: _kit.make_router(p, **({"runner": shared} if "hand" in name else {}))
               for name, p in configs.items()}
    only_b = _kit.make_router([provider(base_url=url_b)], runner=shared)
    runs: dict[str, list[Any]] = {name: [] for name in configs}
    try:
        others = {"two, split by hand": only_b}
        for name, router in routers.items():  # warm-up: connections, prompt caches
            router.runner.run(drive(router, 4, 4, 8, others.get(name)), timeout=300)
        for r in range(args.rounds):
            names = list(routers) if r % 2 == 0 else list(routers)[::-1]
            for name in names:
                runs[name].append(routers[name].runner.run(
                    drive(routers[name], args.n, args.concurrency, args.max_tokens,
                          others.get(name)), timeout=900))
            print(f"   round {r + 1}/{args.rounds} done (load {_kit.loadavg()})", flush=True)
    finally:
        only_b.close()
        for router in routers.values():
            router.close()
        shared.stop()
    return runs


def report(args: argparse.Namespace, runs: dict[str, list[Any]]) -> None:
    med = _kit.median
    print(f"\n-- {args.n} requests x {args.max_tokens} tokens at concurrency "
          f"{args.concurrency}, {args.rounds} rounds (medians)")
    rows = []
    for name, rs in runs.items():
        splits = Counter[str]()
        for x in rs:
            splits.update(x["split"])
        share = "/".join(str(v) for _, v in sorted(splits.items()))
        rows.append([name, med([x["tok_s"] for x in rs]), med([x["p50_s"] for x in rs]),
                     med([x["tokens"] for x in rs]), share])
    print(_kit.table(["config", "agg tok/s", "p50 latency s", "tokens/run",
                      "requests per replica"], rows))
    one = med([x["tok_s"] for x in runs["one replica"]])
    two = med([x["tok_s"] for x in runs["two replicas"]])
    hand = med([x["tok_s"] for x in runs["two, split by hand"]])
    for name, rs in runs.items():
        print(f"   per round, {name}: {[round(x['tok_s'], 1) for x in rs]} tok/s")
    print(f"   two replicas / one replica: {two / one:.2f}x aggregate throughput "
          f"(split by hand: {hand / one:.2f}x)")
    print(f"   load average at the end: {_kit.loadavg()}")


if __name__ == "__main__":
    main()
