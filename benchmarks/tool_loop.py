"""The tool loop's own cost, without a server: what one round adds in the kernel.

    .venv/bin/python benchmarks/tool_loop.py

A turn function returns canned Results (one call per round, then the answer), so what is
timed is the loop itself: the arguments validated against the signature (pydantic), the
approval callable, the call, its result serialised (pydantic), masked
(``privacy.masking``) and cut, and the next request made (``ChatRequest`` masks every
message again when made, so a round costs more as the conversation grows). Printed: the
median time per round over repeats, for small and large results, at 1 and 8 rounds.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from timmy_magic.model.chat import ChatRequest, Result, RouteTrace, Timings, Usage
from timmy_magic.model.tools import ToolCall
from timmy_magic.tools import ToolLoop

REPEATS = 200


def rows(city: str, limit: int = 10) -> list[dict[str, Any]]:
    """Rows of a city."""
    return [{"city": city, "n": i, "note": "x" * SIZE} for i in range(limit)]


SIZE = 10


def result(calls: tuple[ToolCall, ...], text: str = "") -> Result:
    return Result(text, "p", "m", Usage(1, 1), Timings(None, 0.0, None), RouteTrace(),
                  calls=calls)


def one(rounds: int) -> float:
    call = (ToolCall("c", "rows", '{"city": "Oslo", "limit": 5}'),)
    turns = iter([result(call)] * rounds + [result((), "done")])
    loop = ToolLoop(ChatRequest.of("rows of Oslo, please"), [rows], lambda c: True,
                    max_rounds=rounds)
    t0 = time.perf_counter()
    out = loop.run_turns(lambda req: next(turns))
    took = time.perf_counter() - t0
    assert len(out.tool_calls) == rounds
    return took / rounds


def main() -> None:
    global SIZE
    print(f"{'result size':>12} {'rounds':>6} {'per round':>10}")
    for size in (10, 1_500):
        SIZE = size
        for rounds in (1, 8):
            per = statistics.median(one(rounds) for _ in range(REPEATS))
            chars = len(str(rows("Oslo", 5)))
            print(f"{chars:>10,} c {rounds:>6} {per * 1e6:>8.0f} us")


if __name__ == "__main__":
    main()
