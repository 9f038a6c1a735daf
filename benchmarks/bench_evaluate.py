"""``timmy_magic.evaluate`` against ``timmy_magic.map`` asking the same requests.

    .venv/bin/python benchmarks/bench_evaluate.py                 # ~30 s on 2 cores
    .venv/bin/python benchmarks/bench_evaluate.py --rows 100 --rounds 1   # quick

Two providers, each its own fast server (benchmarks/fastserver.py, its own process).
Per round, taking turns (the order reverses every other round):

- **map x2**: ``map`` over ``--rows`` rows pinned to the first provider, then to the
  second: ``2 x rows`` answers, each map at ``--concurrency``.
- **evaluate**: ``evaluate(rows, template, [a, b], score="contains:text")``: the same
  ``2 x rows`` requests in one pool at ``--concurrency``, then every answer scored.

Per way: answers/s and client CPU per answer; the verdict: evaluate's answers/s at least
those of the two maps run one after the other (it runs both targets in one pool), and its
CPU per answer within 25 % of map's (scoring and the Evaluation's bookkeeping).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from typing import Any

import _kit

TEMPLATE = "{text}"


def measure(rows: int, concurrency: int, tokens: int, rounds: int) -> dict[str, list[dict]]:
    from timmy_magic import evaluate
    from timmy_magic import map as map_rows
    from timmy_magic.bench import DEFAULT_PROMPT

    data = [{"text": DEFAULT_PROMPT, "i": i} for i in range(rows)]
    runs: dict[str, list[dict[str, Any]]] = {"map x2": [], "evaluate": []}
    with ExitStack() as stack:
        a, b = (stack.enter_context(_kit.fast_server()) for _ in range(2))
        model = f"fast:{tokens}"
        router = _kit.make_router([_kit.provider("a", a.url, model=model, priority=1),
                                   _kit.provider("b", b.url, model=model, priority=2)])
        stack.callback(router.close)

        def maps() -> int:
            got = 0
            for name in ("a", "b"):
                res = map_rows(TEMPLATE, data, provider=name, concurrency=concurrency,
                               max_tokens=tokens, progress=False, router=router)
                got += sum(r.ok for r in res.results)
            return got

        def evaluation() -> int:
            ev = evaluate(data, TEMPLATE, ["a", "b"], "contains:text", concurrency=concurrency,
                          max_tokens=tokens, progress=False, router=router)
            return sum(x.result.ok for x in ev.answers)

        ways = {"map x2": maps, "evaluate": evaluation}
        for fn in ways.values():  # warm-up: imports, connections
            fn()
        for r in range(rounds):
            order = list(ways) if r % 2 == 0 else list(ways)[::-1]
            for name in order:
                t0, c0 = time.perf_counter(), _kit.cpu()
                answered = ways[name]()
                wall, cpu = time.perf_counter() - t0, _kit.cpu() - c0
                if answered != 2 * rows:
                    raise RuntimeError(f"{name}: {answered}/{2 * rows} answered")
                runs[name].append({"answers_s": answered / wall,
                                   "cpu_ms": cpu / answered * 1e3, "wall_s": wall})
    return runs


def main(argv: list[str] | None = None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args(argv)
    _kit.header("evaluate vs map: the same requests, two targets",
                ("python benchmarks/bench_evaluate.py " + " ".join(
                    sys.argv[1:] if argv is None else argv)).strip())
    runs = measure(args.rows, args.concurrency, args.tokens, args.rounds)
    med = _kit.median
    cols = [("answers/s", "answers_s"), ("CPU ms/answer", "cpu_ms"), ("wall s", "wall_s")]
    print(f"\n-- {args.rows} rows x 2 targets x {args.tokens} tokens at concurrency "
          f"{args.concurrency}, {args.rounds} rounds (medians)")
    print(_kit.table(["way", *(c for c, _ in cols)],
                     [[n, *(med([x[k] for x in rs]) for _, k in cols)] for n, rs in runs.items()]))
    speed = med([x["answers_s"] for x in runs["evaluate"]]) / med(
        [x["answers_s"] for x in runs["map x2"]])
    cpu = med([x["cpu_ms"] for x in runs["evaluate"]]) / med(
        [x["cpu_ms"] for x in runs["map x2"]])
    ok = speed >= 1.0 and cpu <= 1.25
    print(f"   evaluate / two maps: {speed:.2f}x the answers/s, {cpu:.2f}x the CPU per answer")
    print(f"   {_kit.verdict(ok)} evaluate at least as fast as two maps, CPU within 25 %")
    print(f"   load average at the end: {_kit.loadavg()}")
    return ok


if __name__ == "__main__":
    main()
