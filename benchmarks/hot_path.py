"""The router's hot path (issue 12), side by side in one run.

    .venv/bin/python benchmarks/hot_path.py                  # ~4 min on 2 cores
    .venv/bin/python benchmarks/hot_path.py --only nonstream --rounds 3 --n 200  # quick

One fast OpenAI-compatible server (benchmarks/fastserver.py, its own process) answers a
fixed 8-token completion at once, so what differs between clients is the client.

1. ``nonstream``: client CPU per non-streaming request (``time.process_time`` of this
   whole process, so the router's loop thread counts), closed-loop at concurrency 1:
   - ``raw-httpx``: ``httpx.AsyncClient().post(..., json={"stream": false})`` and
     ``r.json()``, on an asyncio loop in this thread (the floor of a Python client);
   - ``raw-aiohttp``: the same with ``aiohttp.ClientSession`` (the other floor);
   - ``ours``: ``router.complete(req, stream=False)`` from this thread (the sync call a
     user makes; one JSON body on the wire);
   - ``ours-sse``: ``router.complete(req)`` (the default: streamed on the wire, so a
     partial answer is kept if the server breaks midway);
   - ``ours-loop``: ``router.acomplete(req, stream=False)`` awaited on the router's loop
     (no thread hop);
   - ``litellm``: ``litellm.Router(...).acompletion`` (same single deployment,
     ``num_retries=0``) on the same loop as raw-httpx.
   Batches of ``--n`` requests, the order rotating per round; medians over rounds of
   CPU per request and of each client minus raw-httpx (paired by round). Target: ours
   adds at most 1/10 of what LiteLLM adds.
   The router alone (a provider answering from memory, no I/O) is shown too.
2. ``connections``: new TCP connections the server accepted during 50 sequential
   requests, per way of asking (the server counts them: ``GET /stats``).
3. ``cell``: wall time of one notebook cell, in an in-process IPython shell whose display
   publisher serialises every message to JSON as a kernel does: ``%%llm`` (streamed,
   rendered as Markdown) against cells that call a raw client and then
   ``display(Markdown(text))``: a sync ``httpx.Client`` reading the same SSE stream (the
   floor), and the openai SDK's sync client; cells taken in turn.
   Target: ``%%llm`` adds at most 1 ms median.
4. ``startup``: ``%load_ext timmy_magic`` in a fresh process (IPython already imported,
   as in a kernel; the 12-provider config of benchmarks/health_fanout.py) and
   ``import timmy_magic`` (``-X importtime``). Targets: 200 ms and 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _kit
from fastserver import DEFAULT_TOKENS, words

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
MESSAGES = [{"role": "user", "content": "Say hello."}]
EXPECTED = "".join(words(DEFAULT_TOKENS))
SESSIONS: list[Any] = []  # raw-aiohttp's, closed on its loop at the end
NONSTREAM = ("raw-httpx", "raw-aiohttp", "ours", "ours-sse", "ours-loop", "litellm")


# ------------------------------------------------------------------ 1. non-streaming CPU


def nonstream_clients(router: Any, url: str, loop: asyncio.AbstractEventLoop
                      ) -> dict[str, Callable[[int], float]]:
    """name -> run(n): CPU seconds of ``n`` sequential requests (each answer checked)."""
    import httpx
    import litellm

    from timmy_magic.model.chat import ChatRequest

    req = ChatRequest.of("Say hello.")
    http = httpx.AsyncClient(timeout=30)
    body = {"model": "fast", "messages": MESSAGES, "stream": False}
    lite: Any = litellm
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    lr = lite.Router(model_list=[{"model_name": "fast", "litellm_params": {
        "model": "openai/fast", "api_base": url + "/v1", "api_key": "not-needed"}}],
        num_retries=0)

    def check(text: str, who: str) -> None:
        if text != EXPECTED:
            raise RuntimeError(f"{who}: unexpected answer {text!r}")

    def on(lp: Any, fn: Callable[[], Awaitable[str]], who: str) -> Callable[[int], float]:
        async def many(n: int) -> None:
            for _ in range(n):
                check(await fn(), who)

        def run(n: int) -> float:
            c0 = _kit.cpu()
            lp(many(n))
            return _kit.cpu() - c0
        return run

    async def raw() -> str:
        r = await http.post(url + "/v1/chat/completions", json=body)
        return str(r.json()["choices"][0]["message"]["content"])

    async def raw_aiohttp() -> str:
        import aiohttp

        if not SESSIONS:
            SESSIONS.append(aiohttp.ClientSession())
        async with SESSIONS[0].post(url + "/v1/chat/completions", json=body) as r:
            return str((await r.json())["choices"][0]["message"]["content"])

    async def litellm_call() -> str:
        r = await lr.acompletion(model="fast", messages=MESSAGES)
        return str(r.choices[0].message.content)

    async def ours_loop() -> str:
        return str((await router.acomplete(req, stream=False)).text)

    def sync(stream: bool) -> Callable[[int], float]:
        def run(n: int) -> float:
            c0 = _kit.cpu()
            for _ in range(n):
                check(router.complete(req, stream=stream).text, "ours")
            return _kit.cpu() - c0
        return run

    here = loop.run_until_complete
    there = lambda coro: router.runner.run(coro, timeout=600)  # noqa: E731
    return {"raw-httpx": on(here, raw, "raw-httpx"),
            "raw-aiohttp": on(here, raw_aiohttp, "raw-aiohttp"), "ours": sync(False),
            "ours-sse": sync(True), "ours-loop": on(there, ours_loop, "ours-loop"),
            "litellm": on(here, litellm_call, "litellm")}


def nonstream(args: argparse.Namespace, srv: _kit.FastServer) -> None:
    router = _kit.make_router([_kit.provider("fast", srv.url)])
    loop = asyncio.new_event_loop()
    try:
        clients = nonstream_clients(router, srv.url, loop)
        for run in clients.values():  # warm-up: imports, connections, caches
            run(args.warmup)
        per: dict[str, list[float]] = {name: [] for name in NONSTREAM}
        for r in range(args.rounds):
            k = r % len(NONSTREAM)
            for name in NONSTREAM[k:] + NONSTREAM[:k]:
                per[name].append(clients[name](args.n) / args.n * 1e3)
            print(f"   round {r + 1}/{args.rounds} (load {_kit.loadavg()})", flush=True)
    finally:
        router.close()
        for session in SESSIONS:
            loop.run_until_complete(session.close())
        loop.close()
    alone = router_alone(args)
    med = _kit.median

    def added(name: str, floor: str = "raw-httpx") -> float:
        return med([a - b for a, b in zip(per[name], per[floor], strict=True)])

    print(f"\n-- 1. non-streaming, concurrency 1, {args.n} requests x {args.rounds} rounds: "
          "client CPU per request (ms; 'added' = minus raw-httpx, paired by round)")
    rows = [[name, med(per[name]), min(per[name]), max(per[name]), added(name)]
            for name in NONSTREAM]
    print(_kit.table(["client", "cpu/req", "min", "max", "added"], rows))
    print("   the router alone (answers from memory, no I/O), CPU per request (ms): " +
          ", ".join(f"{k} {v:.3f}" for k, v in alone.items()))
    for floor in ("raw-httpx", "raw-aiohttp"):
        lite = added("litellm", floor)
        for name in ("ours", "ours-sse", "ours-loop"):
            mine = added(name, floor)
            ratio = lite / mine if mine > 0 else float("inf")
            print(f"   {_kit.verdict(mine <= lite / 10):6} over {floor}: {name} adds "
                  f"{mine:.3f} ms, litellm {lite:.3f} ms: litellm/ours = {ratio:.1f}x "
                  "(target >= 10x)")


def router_alone(args: argparse.Namespace) -> dict[str, float]:
    kind = _kit.register_null_backend()
    router = _kit.make_router([{"name": "null", "type": kind, "models": [{"name": "fast"}]}])
    from timmy_magic.model.chat import ChatRequest

    req = ChatRequest.of("Say hello.")
    n = args.n * 5

    async def on_loop() -> None:
        for _ in range(n):
            await router.acomplete(req)

    out: dict[str, list[float]] = {"complete": [], "acomplete on its loop": []}
    try:
        router.complete(req)
        for _ in range(args.rounds):
            c0 = _kit.cpu()
            for _ in range(n):
                router.complete(req)
            out["complete"].append((_kit.cpu() - c0) / n * 1e3)
            c0 = _kit.cpu()
            router.runner.run(on_loop(), timeout=600)
            out["acomplete on its loop"].append((_kit.cpu() - c0) / n * 1e3)
    finally:
        router.close()
    return {k: _kit.median(v) for k, v in out.items()}


# ------------------------------------------------------------------ 2. connections


def connections(args: argparse.Namespace, srv: _kit.FastServer) -> None:
    import httpx

    from timmy_magic.model.chat import ChatRequest, Delta

    def accepted() -> int:
        with httpx.Client(timeout=5) as c:  # its own connection: counted, subtracted
            return int(c.get(srv.url + "/stats").json()["connections"]) + 1

    router = _kit.make_router([_kit.provider("fast", srv.url)])
    req = ChatRequest.of("Say hello.")
    ways: dict[str, Callable[[], str]] = {
        "router.complete (SSE)": lambda: router.complete(req).text,
        "router.complete(stream=False)": lambda: router.complete(req, stream=False).text,
        "router.stream": lambda: "".join(ev.text for ev in router.stream(req)
                                         if isinstance(ev, Delta)),
    }
    rows = []
    try:
        for name, fn in ways.items():
            fn()  # the first connection of a fresh pool is not the question
            before = accepted()
            for _ in range(50):
                if fn() != EXPECTED:
                    raise RuntimeError(f"{name}: unexpected answer")
            rows.append([name, accepted() - before - 1])
    finally:
        router.close()
    print("\n-- 2. new TCP connections during 50 sequential requests (server's count)")
    print(_kit.table(["way", "new connections"], rows))
    print(f"   {_kit.verdict(all(r[1] == 0 for r in rows)):6} every way reuses its connection")


# ------------------------------------------------------------------ 3. one cell


def publisher(shell: Any) -> Any:
    """A display publisher that serialises each message to JSON, as a kernel does
    before its ZMQ send (the send itself is not included)."""
    from IPython.core.displaypub import DisplayPublisher

    class Publisher(DisplayPublisher):
        def publish(self, data: dict[str, Any], metadata: Any = None, source: Any = None,
                    *, transient: Any = None, update: bool = False, **kw: Any) -> None:
            json.dumps({"data": data, "metadata": metadata or {},
                        "transient": transient or {}})

        def clear_output(self, wait: bool = False) -> None:
            pass

    return Publisher(shell=shell)


RAW_CELL = """
with _http.stream("POST", _url, json=_body) as _r:
    _parts = []
    for _line in _r.iter_lines():
        if _line.startswith("data: {"):
            _obj = json.loads(_line[6:])
            if _obj["choices"] and _obj["choices"][0]["delta"].get("content"):
                _parts.append(_obj["choices"][0]["delta"]["content"])
display(Markdown("".join(_parts)))
"""
SDK_CELL = """
_parts = []
for _c in _oai.chat.completions.create(model="fast", messages=_msgs, stream=True):
    if _c.choices and _c.choices[0].delta.content:
        _parts.append(_c.choices[0].delta.content)
display(Markdown("".join(_parts)))
"""


def cell(args: argparse.Namespace, srv: _kit.FastServer) -> None:
    import httpx
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import Markdown, display
    from IPython.utils.capture import capture_output

    from timmy_magic.notebook.extension import extension

    path = Path(tempfile.mkdtemp(prefix="timmy-bench-")) / "providers.yaml"
    path.write_text(_kit.router_yaml([_kit.provider("bench", srv.url)]))
    os.environ["TIMMY_PROVIDERS"] = str(path)
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    with capture_output():
        ip.run_line_magic("load_ext", "timmy_magic")
    ip.display_pub = publisher(ip)
    http = httpx.Client(timeout=30)
    ip.user_ns.update(_http=http, _url=srv.url + "/v1/chat/completions", json=json,
                      display=display, Markdown=Markdown, _body={
                          "model": "fast", "messages": MESSAGES, "stream": True})
    import openai

    oai = openai.OpenAI(base_url=srv.url + "/v1", api_key="not-needed", max_retries=0)
    ip.user_ns.update(_oai=oai, _msgs=MESSAGES)
    cells = {"raw httpx in a cell": lambda: ip.run_cell(RAW_CELL, store_history=False),
             "raw openai SDK in a cell": lambda: ip.run_cell(SDK_CELL, store_history=False),
             "%%llm": lambda: ip.run_cell("%%llm -p bench\nSay hello.", store_history=False)}
    try:
        for fn in cells.values():
            for _ in range(args.warmup):
                fn().raise_error()
        took: dict[str, list[float]] = {k: [] for k in cells}
        names = list(cells)
        for i in range(args.cells):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                cells[name]().raise_error()
                took[name].append(time.perf_counter() - t0)
        if extension(ip).router.health()["bench"].state == "down":
            raise RuntimeError("the provider went down during the run")
    finally:
        with capture_output():
            ip.run_line_magic("unload_ext", "timmy_magic")
        http.close()
    med = {k: _kit.median(v) * 1e3 for k, v in took.items()}
    rows = [[k, med[k], _kit.pct(v, 90) * 1e3] for k, v in took.items()]
    print(f"\n-- 3. one cell, {args.cells} of each in turn (wall ms)")
    print(_kit.table(["cell", "p50", "p90"], rows))
    for raw in ("raw httpx in a cell", "raw openai SDK in a cell"):
        extra = med["%%llm"] - med[raw]
        print(f"   {_kit.verdict(extra <= 1.0):6} %%llm adds {extra:.3f} ms median over "
              f"{raw} (<= 1 ms)")


# ------------------------------------------------------------------ 4. startup


def startup(args: argparse.Namespace, srv: _kit.FastServer) -> None:
    import health_fanout

    path = Path(tempfile.mkdtemp(prefix="timmy-bench-")) / "providers.yaml"
    path.write_text(_kit.router_yaml(health_fanout.providers(srv), 1.0))
    loads = [health_fanout.load_ext_once(path, wait=4.0) for _ in range(args.fresh)]
    imports = [health_fanout.import_once() for _ in range(args.fresh)]
    took = [x["took"] * 1e3 for x in loads]
    imp = [x[0] * 1e3 for x in imports]
    print(f"\n-- 4. fresh processes x {args.fresh} (ms)")
    print(_kit.table(["what", "median", "min", "max"], [
        ["%load_ext timmy_magic", _kit.median(took), min(took), max(took)],
        ["import timmy_magic", _kit.median(imp), min(imp), max(imp)]]))
    print(f"   heavy modules after %load_ext: {loads[0]['after_load'] or 'none'}; "
          f"after the first health pass: {loads[0]['after_health'] or 'none'}")
    print(f"   {_kit.verdict(_kit.median(took) <= 200):6} %load_ext <= 200 ms (median)")
    print(f"   {_kit.verdict(_kit.median(imp) <= 20):6} import timmy_magic <= 20 ms (median)")


# ------------------------------------------------------------------ the run

SECTIONS = {"nonstream": nonstream, "connections": connections, "cell": cell,
            "startup": startup}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=300, help="requests per batch (section 1)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--cells", type=int, default=200, help="cells of each kind (section 3)")
    ap.add_argument("--fresh", type=int, default=5, help="fresh processes (section 4)")
    args = ap.parse_args()
    _kit.header("hot path: router vs raw httpx vs LiteLLM; connections; a cell; startup",
                ("python benchmarks/hot_path.py " + " ".join(sys.argv[1:])).strip())
    with _kit.fast_server(hang=4 if "startup" in args.only else 0) as srv:
        for name in args.only.split(","):
            SECTIONS[name](args, srv)
    print(f"\n   load average at the end: {_kit.loadavg()}")


if __name__ == "__main__":
    main()
