"""``%%llm --bg``: how long the cell takes to return, how long a foreground cell takes
while background answers stream, and how long a cancel takes to close the request.

    .venv/bin/python benchmarks/bench_background.py              # ~30 s
    .venv/bin/python benchmarks/bench_background.py --cells 50

An in-process IPython shell with the extension loaded (a capturing display publisher,
so answers render as in a notebook), against the loopback fault server
(tests/support/faultserver.py) dripping ``--tokens`` tokens, one every ``--interval`` s.
Figures, per ``--cells`` runs:

- **return**: wall time of ``run_cell("%%llm --bg ...")`` (parse, context, cache lookup,
  placeholder display, the Job started), against a foreground cell's whole run;
- **foreground while 3 stream**: a foreground cell to a fast provider, alone and with
  three background answers streaming (the loop thread shared);
- **cancel**: from ``job.cancel()`` to the server seeing the connection close.
Target: return well under 100 ms (median and p95).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import _kit
import yaml

from tests.support.faultserver import FaultServer


def shell_with(fault: FaultServer, tokens: int, interval: float) -> Any:
    from IPython.core.interactiveshell import InteractiveShell

    path = os.path.join(tempfile.mkdtemp(), "providers.yaml")
    drip = fault.base_url("drip", tokens=tokens, interval=interval)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"cascade": {"health_interval_seconds": 600},
                        "providers": [
                            {"name": "slow", "type": "llama_cpp", "base_url": drip},
                            {"name": "quick", "type": "llama_cpp", "priority": 2,
                             "base_url": fault.base_url("ok", text="hello there")}]}, f)
    os.environ["TIMMY_PROVIDERS"] = path
    os.environ["TIMMY_CACHE_MODE"] = "off"
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "timmy_magic")
    return ip


def timed(ip: Any, source: str) -> float:
    t0 = time.perf_counter()
    res = ip.run_cell(source)
    took = time.perf_counter() - t0
    assert res.error_in_exec is None, res.error_in_exec
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=60)
    ap.add_argument("--interval", type=float, default=0.05)
    args = ap.parse_args()
    _kit.header("%%llm --bg", f"benchmarks/bench_background.py --cells {args.cells}")
    from IPython.utils.capture import capture_output

    with FaultServer(cap=60) as fault, capture_output():
        ip = shell_with(fault, args.tokens, args.interval)
        timed(ip, "%%llm -p quick\nwarm up")
        returns, fg_alone, fg_busy, cancels, whole = [], [], [], [], []
        for n in range(args.cells):
            fg_alone.append(timed(ip, "%%llm -p quick\nalone"))
            returns.append(timed(ip, f"%%llm --bg -p slow -o a{n}\nfirst"))
            timed(ip, f"%%llm --bg -p slow -o b{n}\nsecond")
            timed(ip, f"%%llm --bg -p slow -o c{n}\nthird")
            fg_busy.append(timed(ip, "%%llm -p quick\nwhile three stream"))
            jobs = [ip.user_ns[f"{v}{n}"] for v in "abc"]
            while not jobs[2].progress.tokens:  # streaming: its connection is open
                time.sleep(0.002)
            streaming = fault.open_connections
            t0 = time.perf_counter()
            jobs[2].cancel()
            while fault.open_connections >= streaming and time.perf_counter() - t0 < 5:
                time.sleep(0.002)
            cancels.append(time.perf_counter() - t0)
            for j in jobs[:2]:
                j.result(30)
            whole.append(jobs[0].elapsed())
        ip.run_line_magic("unload_ext", "timmy_magic")
    rows = [("--bg cell returns", _kit.median(returns) * 1e3, _kit.pct(returns, 95) * 1e3),
            ("its answer, start to end", _kit.median(whole) * 1e3, _kit.pct(whole, 95) * 1e3),
            ("foreground cell, alone", _kit.median(fg_alone) * 1e3,
             _kit.pct(fg_alone, 95) * 1e3),
            ("foreground cell, 3 streaming", _kit.median(fg_busy) * 1e3,
             _kit.pct(fg_busy, 95) * 1e3),
            ("cancel -> connection closed", _kit.median(cancels) * 1e3,
             _kit.pct(cancels, 95) * 1e3)]
    print(_kit.table(["what", "median ms", "p95 ms"], rows))
    print(f"return well under 100 ms (p95): {_kit.verdict(_kit.pct(returns, 95) < 0.1)}")


if __name__ == "__main__":
    main()
