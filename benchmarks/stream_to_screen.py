"""Stream to screen: what the notebook display adds on top of a raw stream.

    .venv/bin/python benchmarks/stream_to_screen.py            # ~2 min on 2 cores
    .venv/bin/python benchmarks/stream_to_screen.py --rounds 1 --tokens 1000  # quick

What runs: the real ``%%llm`` magic (``timmy_magic.notebook``), loaded with ``%load_ext`` in
an in-process IPython ``InteractiveShell`` and called with ``run_cell_magic`` (so argument
parsing, the router, ``render.NotebookView`` and its throttle all run as in a notebook).
The shell's display publisher is replaced by one that timestamps every display and update
and serialises it to JSON, as a kernel's publisher does before sending it on ZMQ (the ZMQ
send itself is not included). The fast server (benchmarks/fastserver.py) runs in its own
process.

Figures:
1. TTFT into the display: from calling the magic to the first display whose text holds
   the first token, against the TTFT of a raw ``openai.AsyncOpenAI`` stream (to its first
   content delta) of the same request, taken in turn. The answer trickles like a real one
   (the first token at once, then one every 20 ms), so a throttle that held the first
   token back would show. Target: within 2 ms.
2. Display updates per second while a 4,000-token stream arrives at ``--rate`` tokens/s.
   Target: at most 30.
3. CPU time (this whole process) to receive and render that stream through the magic,
   against consuming it raw with the openai SDK. Target: at most 10% extra. Also shown:
   the same stream read by a minimal hand-written httpx SSE reader (the floor), and
   through ``router.astream`` with no display (the router's share).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _kit

MESSAGES = [{"role": "user", "content": "Say hello."}]


# ------------------------------------------------------------------ the display


def timed_publisher(shell: Any) -> Any:
    from IPython.core.displaypub import DisplayPublisher

    class TimedPublisher(DisplayPublisher):
        """Records (time, update?, text) of every display; serialises like a kernel."""

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)  # type: ignore[no-untyped-call]
            self.events: list[tuple[float, bool, str]] = []

        def publish(self, data: dict[str, Any], metadata: Any = None, source: Any = None, *,
                    transient: Any = None, update: bool = False, **kw: Any) -> None:
            json.dumps({"data": data, "metadata": metadata or {},
                        "transient": transient or {}})
            self.events.append((time.perf_counter(), update, str(data.get("text/plain", ""))))

        def clear_output(self, wait: bool = False) -> None:
            pass

    return TimedPublisher(shell=shell)


def make_shell(url: str, *models: str) -> tuple[Any, Any]:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    path = Path(tempfile.mkdtemp(prefix="timmy-bench-")) / "providers.yaml"
    path.write_text(_kit.router_yaml([_kit.provider("bench", url, model="fast") | {
        "models": [{"name": "fast", "default": True}, *({"name": m} for m in models)]}]))
    os.environ["TIMMY_PROVIDERS"] = str(path)
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    with capture_output():
        ip.run_line_magic("load_ext", "timmy_magic")
    ip.display_pub = timed_publisher(ip)
    return ip, ip.display_pub


def run_magic(ip: Any, pub: Any, line: str) -> tuple[float, list[tuple[float, bool, str]]]:
    """Run one ``%%llm`` cell; (start time, the display events of this cell)."""
    pub.events.clear()
    t0 = time.perf_counter()
    ip.run_cell_magic("llm", line, "Say hello.")
    return t0, list(pub.events)


def first_text_at(t0: float, events: list[tuple[float, bool, str]], first: str) -> float:
    for t, _, text in events:
        if text.startswith(first):
            return t - t0
    raise RuntimeError(f"no display showed the answer; displays: {[e[2][:40] for e in events]}")


# ------------------------------------------------------------------ raw consumers


async def raw_sdk(client: Any, model: str, max_tokens: int) -> tuple[float, str]:
    """(TTFT, text) of one raw openai SDK stream."""
    t0 = time.perf_counter()
    s = await client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                             max_tokens=max_tokens,
                                             stream_options={"include_usage": True})
    ttft, parts = None, []
    async for c in s:
        if c.choices and c.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - t0
            parts.append(c.choices[0].delta.content)
    assert ttft is not None
    return ttft, "".join(parts)


async def raw_httpx(http: Any, url: str, model: str, max_tokens: int) -> str:
    """The leanest reader: httpx lines, json.loads, keep the text."""
    parts = []
    body = {"model": model, "messages": MESSAGES, "stream": True, "max_tokens": max_tokens}
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                obj = json.loads(line[6:])
                if obj["choices"] and obj["choices"][0]["delta"].get("content"):
                    parts.append(obj["choices"][0]["delta"]["content"])
    return "".join(parts)


async def router_ttft(router: Any, model: str, max_tokens: int) -> float:
    from timmy_magic.model.chat import ChatRequest, Delta

    req = ChatRequest.of("Say hello.", model=model, max_tokens=max_tokens)
    t0, ttft = time.perf_counter(), None
    async for ev in router.astream(req):
        if isinstance(ev, Delta) and ttft is None:
            ttft = time.perf_counter() - t0
    assert ttft is not None
    return ttft


async def router_only(router: Any, model: str, max_tokens: int) -> str:
    from timmy_magic.model.chat import ChatRequest, Delta

    req = ChatRequest.of("Say hello.", model=model, max_tokens=max_tokens)
    return "".join([ev.text async for ev in router.astream(req) if isinstance(ev, Delta)])


def cpu_of(fn: Any) -> tuple[float, float, Any]:
    """(CPU seconds of this process, wall seconds, result) of ``fn()``."""
    c0, w0 = _kit.cpu(), time.perf_counter()
    out = fn()
    return _kit.cpu() - c0, time.perf_counter() - w0, out


# ------------------------------------------------------------------ the run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ttft", type=int, default=30, help="TTFT samples per round")
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--rate", type=float, default=500.0, help="tokens/s of the long stream")
    args = ap.parse_args()
    _kit.header("stream to screen: the %%llm display vs a raw stream",
                ("python benchmarks/stream_to_screen.py " + " ".join(sys.argv[1:])).strip())
    import httpx
    import openai
    from fastserver import DEFAULT_TOKENS, words

    from timmy_magic.notebook import extension

    first, short = words(1)[0], "".join(words(DEFAULT_TOKENS))
    trickle = f"paced@50:{DEFAULT_TOKENS}"
    long_text = "".join(words(args.tokens))
    paced = f"paced@{args.rate:g}:{args.tokens}"
    line_short = f"-p bench -m {trickle}"
    line_long = f"-p bench -m {paced} --max-tokens {args.tokens}"
    with _kit.fast_server() as srv:
        ip, pub = make_shell(srv.url, paced, trickle)
        router = extension(ip).router
        loop = asyncio.new_event_loop()
        client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="not-needed",
                                    max_retries=0)
        http = httpx.AsyncClient(timeout=60)
        try:
            for _ in range(5):  # warm-up: imports, connections
                loop.run_until_complete(raw_sdk(client, trickle, DEFAULT_TOKENS))
                run_magic(ip, pub, line_short)
            ttft_raw: list[list[float]] = []
            ttft_magic: list[list[float]] = []
            ttft_router: list[list[float]] = []
            ups: list[float] = []
            cpu: dict[str, list[float]] = {}
            for r in range(args.rounds):
                raw_r, magic_r, router_r = [], [], []
                for i in range(args.ttft):
                    for which in [(0, 1, 2), (1, 2, 0), (2, 0, 1)][i % 3]:
                        if which == 0:
                            t, text = loop.run_until_complete(
                                raw_sdk(client, trickle, DEFAULT_TOKENS))
                            assert text == short, text
                            raw_r.append(t)
                        elif which == 2:
                            router_r.append(router.runner.run(router_ttft(
                                router, trickle, DEFAULT_TOKENS), timeout=60))
                        else:
                            t0, evs = run_magic(ip, pub, line_short)
                            magic_r.append(first_text_at(t0, evs, first))
                ttft_raw.append(raw_r)
                ttft_magic.append(magic_r)
                ttft_router.append(router_r)
                # the long stream, four ways, in a rotating order
                ways = {
                    "raw openai SDK": lambda: loop.run_until_complete(
                        raw_sdk(client, paced, args.tokens))[1],
                    "raw httpx + json (floor)": lambda: loop.run_until_complete(
                        raw_httpx(http, srv.url, paced, args.tokens)),
                    "router.astream, no display": lambda: router.runner.run(
                        router_only(router, paced, args.tokens), timeout=600),
                    "%%llm magic with display": lambda: run_magic(ip, pub, line_long),
                }
                names = list(ways)
                k = r % len(names)
                for name in names[k:] + names[:k]:
                    c, w, out = cpu_of(ways[name])
                    cpu.setdefault(name, []).append(c)
                    if name.startswith("%%llm"):
                        t0, evs = out
                        updates = [t for t, _, text in evs if text.startswith(first)]
                        span = updates[-1] - updates[0] if len(updates) > 1 else w
                        ups.append((len(updates) - 1) / span if span > 0 else float("nan"))
                        assert evs[-1][2].startswith(long_text), "final render incomplete"
                    else:
                        assert out == long_text, (name, len(out))
                print(f"   round {r + 1}/{args.rounds} done (load {_kit.loadavg()})",
                      flush=True)
        finally:
            loop.run_until_complete(client.close())
            loop.run_until_complete(http.aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            ip.run_line_magic("unload_ext", "timmy_magic")
    report(args, ttft_raw, ttft_magic, ttft_router, ups, cpu)


def report(args: argparse.Namespace, ttft_raw: list[list[float]],
           ttft_magic: list[list[float]], ttft_router: list[list[float]], ups: list[float],
           cpu: dict[str, list[float]]) -> None:
    med = _kit.median
    raw50 = med([med(r) for r in ttft_raw]) * 1e3
    mag50 = med([med(r) for r in ttft_magic]) * 1e3
    raw99 = med([_kit.pct(r, 99) for r in ttft_raw]) * 1e3
    mag99 = med([_kit.pct(r, 99) for r in ttft_magic]) * 1e3
    diff = med([med(m) - med(r) for m, r in zip(ttft_magic, ttft_raw, strict=True)]) * 1e3
    rou50 = med([med(r) for r in ttft_router]) * 1e3
    rou99 = med([_kit.pct(r, 99) for r in ttft_router]) * 1e3
    print(f"\n-- 1. TTFT, {args.ttft} requests of each path x {args.rounds} rounds, taken "
          "in turn (ms)")
    print(_kit.table(["path", "p50", "p99"],
                     [["raw openai SDK stream, first delta", raw50, raw99],
                      ["router.astream on its loop, first Delta", rou50, rou99],
                      ["%%llm, first display holding it", mag50, mag99]]))
    print(f"   display minus raw (median of per-round medians): {diff:.2f} ms")
    print(f"\n-- 2. display updates per second, {args.tokens} tokens at {args.rate:g} tok/s")
    print(f"   per round: {', '.join(f'{u:.1f}' for u in ups)}; median {med(ups):.1f}")
    base = med(cpu["raw openai SDK"])
    rows = [[name, med(v), med(v) / base * 100 - 100] for name, v in cpu.items()]
    print(f"\n-- 3. CPU to receive a {args.tokens}-token stream (s, whole process; "
          "median of rounds)")
    print(_kit.table(["path", "cpu s", "% vs raw SDK"], rows))
    floor = med(cpu["raw httpx + json (floor)"])
    magic = med(cpu["%%llm magic with display"])
    print(f"   %%llm vs the httpx floor: {magic / floor * 100 - 100:+.0f}%")
    extra = magic / base * 100 - 100
    print("\n-- targets")
    print(f"   {_kit.verdict(diff <= 2):6} TTFT into the display within 2 ms of raw "
          f"({diff:.2f} ms)")
    print(f"   {_kit.verdict(max(ups) <= 30):6} at most 30 display updates/s "
          f"(max {max(ups):.1f})")
    print(f"   {_kit.verdict(extra <= 10):6} rendering costs at most 10% extra CPU vs raw "
          f"({extra:+.0f}%)")
    print(f"   load average at the end: {_kit.loadavg()}")


if __name__ == "__main__":
    main()
