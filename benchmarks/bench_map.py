"""``timmy_magic.map`` against ``%llm bench`` at the same concurrency (issue 14).

    .venv/bin/python benchmarks/bench_map.py                  # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_map.py --rounds 1 --rows 200   # quick

Two replicas of the fast server (benchmarks/fastserver.py, each its own process) are one
provider, ``replicas: [A, B]``, which the cascade balances (least outstanding first). One
router, built once, is driven three ways per round, taking turns (the order reverses
every other round), all streamed on the wire, ``--tokens`` tokens per answer:

- **bench**: ``timmy_magic.bench.run`` (the code behind ``%llm bench``) at concurrency
  ``--concurrency`` with ``--rows`` requests, no warm-up. Its own figures: requests/s and
  output tokens/s over the level's wall time (``requests_per_s``, ``output_tok_s``).
- **map**: ``timmy_magic.map(template, rows, concurrency=..., progress=False,
  router=router)`` over ``--rows`` dict rows; rows/s and tokens/s over the wall time of
  the whole call (building the requests and collecting the results included).
- **raw sockets** (unless ``--no-raw``): the same requests at the same concurrency over
  bare asyncio streams, one keep-alive connection per worker, half to each replica,
  each SSE event ``json.loads``-ed: about the least a Python client can do, a floor for
  CPU per row. (A hand-written ``httpx.AsyncClient`` loop is no floor here: at 32
  streams per pool httpcore's pool bookkeeping, a scan of every connection with a
  ``poll`` per request, made it 3-8 ms of CPU per row, more than the router.)

Per way and round: rows/s, output tokens/s, client CPU per row (``time.process_time``:
every thread of this process), of which the calling thread's (``time.thread_time``: for
map, the kernel thread's polling and collecting), and the servers' CPU per row (to tell
which side saturates: on 2 cores the client and both servers share them). Medians over
rounds; the verdict compares map's rows/s with bench's at the same concurrency (target:
within 10 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any, Self

import _kit

TEMPLATE = "{text}"


def replicated(urls: list[str], tokens: int) -> dict[str, Any]:
    """One provider over every replica, answering ``tokens`` tokens."""
    return {"name": "fast", "type": "openai_compatible",
            "replicas": [u + "/v1" for u in urls],
            "models": [{"name": f"fast:{tokens}", "default": True}]}


class Clocks:
    """Wall, process CPU, calling-thread CPU and the servers' CPU over one run."""

    def __init__(self, servers: list[_kit.FastServer]) -> None:
        self.servers = servers

    def __enter__(self) -> Self:
        self.t0, self.c0, self.k0 = time.perf_counter(), _kit.cpu(), time.thread_time()
        self.s0 = sum(s.cpu_seconds() for s in self.servers)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = _kit.cpu() - self.c0
        self.thread = time.thread_time() - self.k0
        self.server = sum(s.cpu_seconds() for s in self.servers) - self.s0

    def figures(self, rows: int, tokens: int, **extra: Any) -> dict[str, Any]:
        return {"rows_s": rows / self.wall, "tok_s": tokens / self.wall,
                "cpu_ms_row": self.cpu / rows * 1e3, "thread_ms_row": self.thread / rows * 1e3,
                "server_ms_row": self.server / rows * 1e3, "wall_s": self.wall, **extra}


def run_bench(router: Any, servers: list[_kit.FastServer], rows: int, concurrency: int,
              tokens: int) -> dict[str, Any]:
    from timmy_magic import bench

    with Clocks(servers) as clk:
        res = bench.run(router, ["fast"], concurrency=concurrency, n=rows,
                        max_tokens=tokens, warmup=0, progress="none")
    rec = res.records[0]
    if rec["completed"] != rows:
        raise RuntimeError(f"bench: {rec['completed']}/{rows} completed; "
                           f"{rec['first_error']}")
    fig = clk.figures(rows, rec["output_tokens"], peak=rec["peak_concurrency"])
    # what %llm bench itself reports (over the level's own wall time)
    fig.update(own_rows_s=rec["requests_per_s"], own_tok_s=rec["output_tok_s"])
    return fig


def run_map(router: Any, servers: list[_kit.FastServer], rows: int, concurrency: int,
            tokens: int) -> dict[str, Any]:
    from timmy_magic import map as map_rows
    from timmy_magic.bench import DEFAULT_PROMPT

    data = [{"text": DEFAULT_PROMPT, "i": i} for i in range(rows)]
    with Clocks(servers) as clk:
        res = map_rows(TEMPLATE, data, concurrency=concurrency, max_tokens=tokens,
                       progress=False, router=router)
    if not res.ok:
        raise RuntimeError(f"map: {len(res.errors)} rows failed; {res.errors[0].error}")
    out = sum(r.usage.output_tokens or 0 for r in res.results)
    split = Counter(r.endpoint or "?" for r in res.results)
    return clk.figures(rows, out, own_rows_s=rows / res.elapsed_s,
                       own_tok_s=out / res.elapsed_s, split=dict(split))


async def _raw(urls: list[str], rows: int, concurrency: int, tokens: int) -> int:
    """The floor: ``concurrency`` keep-alive connections of bare asyncio streams (half to
    each replica), each request's JSON encoded, its chunked SSE body decoded and every
    event ``json.loads``-ed; no pool, no timeouts, no checks."""
    body = {"model": f"fast:{tokens}", "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": _prompt()}]}
    left = iter(range(rows))
    total = 0

    async def worker(url: str) -> None:
        nonlocal total
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in left:
                payload = json.dumps(body).encode()
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\n"
                             b"content-type: application/json\r\ncontent-length: %d\r\n"
                             b"\r\n%s" % (host.encode(), len(payload), payload))
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"raw: {head[:40]!r}")
                while size := int((await reader.readline()).strip(), 16):
                    event = (await reader.readexactly(size + 2))[:-2]
                    if event.startswith(b"data: {"):
                        usage = json.loads(event[6:]).get("usage")
                        if usage:
                            total += usage["completion_tokens"]
                await reader.readline()  # the CRLF after the last chunk
        finally:
            writer.close()

    await asyncio.gather(*(worker(urls[w % len(urls)]) for w in range(concurrency)))
    return total


def _prompt() -> str:
    from timmy_magic.bench import DEFAULT_PROMPT

    return DEFAULT_PROMPT


def run_raw(servers: list[_kit.FastServer], rows: int, concurrency: int,
            tokens: int) -> dict[str, Any]:
    with Clocks(servers) as clk:
        out = asyncio.run(_raw([s.url for s in servers], rows, concurrency, tokens))
    if out != rows * tokens:
        raise RuntimeError(f"raw: {out} tokens, expected {rows * tokens}")
    return clk.figures(rows, out, own_rows_s=float("nan"), own_tok_s=float("nan"))


def measure(rows: int, concurrency: int, tokens: int, rounds: int, raw: bool = True,
            replicas: int = 2, quiet: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The side-by-side runs: ``{way: [figures per round]}``."""
    runs: dict[str, list[dict[str, Any]]] = {"bench": [], "map": []}
    if raw:
        runs["raw sockets"] = []
    with ExitStack() as stack:
        servers = [stack.enter_context(_kit.fast_server()) for _ in range(replicas)]
        router = _kit.make_router([replicated([s.url for s in servers], tokens)])
        stack.callback(router.close)
        ways = {"bench": lambda: run_bench(router, servers, rows, concurrency, tokens),
                "map": lambda: run_map(router, servers, rows, concurrency, tokens),
                "raw sockets": lambda: run_raw(servers, rows, concurrency, tokens)}
        # warm-up: imports, connections to both replicas, the servers' byte caches
        warm = min(rows, 2 * concurrency)
        run_bench(router, servers, warm, concurrency, tokens)
        run_map(router, servers, warm, concurrency, tokens)
        if raw:
            run_raw(servers, warm, concurrency, tokens)
        for r in range(rounds):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for name in order:
                runs[name].append(ways[name]())
            if not quiet:
                print(f"   round {r + 1}/{rounds} done (load {_kit.loadavg()})", flush=True)
    return runs


COLUMNS = [("rows/s", "rows_s"), ("out tok/s", "tok_s"), ("own rows/s", "own_rows_s"),
           ("CPU ms/row", "cpu_ms_row"), ("caller thread ms/row", "thread_ms_row"),
           ("servers CPU ms/row", "server_ms_row"), ("wall s", "wall_s")]


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> float:
    """Print the table and the verdict; return map/bench throughput (medians)."""
    med = _kit.median
    print(f"\n-- {args.rows} rows x {args.tokens} tokens at concurrency {args.concurrency}, "
          f"{args.replicas} replicas, {args.rounds} rounds (medians)")
    rows = [[name, *(med([x[k] for x in rs]) for _, k in COLUMNS)] for name, rs in runs.items()]
    print(_kit.table(["way", *(c for c, _ in COLUMNS)], rows))
    for name, rs in runs.items():
        print(f"   per round, {name}: {[round(x['rows_s'], 1) for x in rs]} rows/s")
    split: Counter[str] = Counter()
    for x in runs["map"]:
        split.update(x["split"])
    print(f"   map's rows per replica (all rounds): "
          f"{', '.join(f'{k} {v}' for k, v in sorted(split.items()))}")
    bench_rows = med([x["rows_s"] for x in runs["bench"]])
    bench_own = med([x["own_rows_s"] for x in runs["bench"]])
    map_rows = med([x["rows_s"] for x in runs["map"]])
    ratio = map_rows / bench_own
    per_round = [m["rows_s"] / b["own_rows_s"] for m, b in zip(runs["map"], runs["bench"],
                                                                strict=True)]
    paired = med(per_round)
    print(f"   map / bench throughput: {ratio:.3f} against bench's own figure "
          f"({map_rows:.1f} vs {bench_own:.1f} rows/s), {map_rows / bench_rows:.3f} against "
          f"the wall time of bench.run(); per round {[round(x, 3) for x in per_round]}, "
          f"median of the rounds' ratios {paired:.3f}")
    print(f"   {_kit.verdict(ratio >= 0.9)} map within 10 % of %llm bench at concurrency "
          f"{args.concurrency} (ratio of the medians)")
    cpu = med([x["cpu_ms_row"] for x in runs["map"]])
    line = f"   map client CPU per row: {cpu:.3f} ms"
    if "raw sockets" in runs:
        floor = med([x["cpu_ms_row"] for x in runs["raw sockets"]])
        line += f" (raw sockets {floor:.3f} ms, +{cpu - floor:.3f} ms)"
    print(line)
    print(f"   load average at the end: {_kit.loadavg()}")
    return ratio


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--no-raw", dest="raw", action="store_false",
                    help="skip the raw sockets baseline")
    args = ap.parse_args(argv)
    _kit.header("map vs %llm bench: the same router, concurrency and replicas",
                ("python benchmarks/bench_map.py " + " ".join(
                    sys.argv[1:] if argv is None else argv)).strip())
    runs = measure(args.rows, args.concurrency, args.tokens, args.rounds, args.raw,
                   args.replicas)
    return report(args, runs)


if __name__ == "__main__":
    main()
