"""Health fan-out, ``%load_ext`` time and ``import timmy_magic`` time.

    .venv/bin/python benchmarks/health_fanout.py             # ~1 min
    .venv/bin/python benchmarks/health_fanout.py --rounds 3 --timeout 0.5  # quick

Twelve providers: 4 refusing (closed ports on 127.0.0.1), 4 never answering (ports of
benchmarks/fastserver.py that accept connections and never reply) and 4 healthy (the fast
server), ``health_timeout_seconds`` = ``--timeout``.

1. A full health pass, ``router.check_health()`` (every probe at once, one deadline),
   against one health timeout; target <= 1.2x. For comparison, the sequential way: the
   same twelve probes one after another (``check_health([name])`` in turn).
2. ``%load_ext timmy_magic`` with that providers.yaml, in a fresh Python process each time
   (IPython already imported, as in a kernel); target <= 0.5 s. The same process then
   lists which of openai, matplotlib, ipywidgets, litellm were imported, right after the
   load and again after the first background health pass.
3. ``import timmy_magic`` in a fresh process: ``python -X importtime``, the cumulative
   time of the ``timmy_magic`` line; target <= 150 ms; and the heavy modules it imported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _kit

HEAVY = ("openai", "matplotlib", "ipywidgets", "litellm", "anthropic", "pandas", "numpy")

LOAD_EXT = r"""
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
heavy = {heavy!r}
ip = InteractiveShell.instance()
t0 = time.perf_counter()
with capture_output() as cap:
    ip.run_line_magic("load_ext", "timmy_magic")
took = time.perf_counter() - t0
after_load = sorted(m for m in heavy if m in sys.modules)
from timmy_magic.notebook import extension
router = extension(ip).router
deadline = time.monotonic() + {wait}
while time.monotonic() < deadline and any(
        r.state == "unknown" for r in router.health().values()):
    time.sleep(0.05)
states = sorted(r.state for r in router.health().values())
after_health = sorted(m for m in heavy if m in sys.modules)
ip.run_line_magic("unload_ext", "timmy_magic")
print(json.dumps({{"took": took, "after_load": after_load, "after_health": after_health,
                  "states": states, "said": cap.stdout.strip()}}))
"""

IMPORT = "import sys, json, timmy_magic; print(json.dumps(sorted(m for m in {heavy!r} " \
         "if m in sys.modules)))"


def providers(srv: _kit.FastServer) -> list[dict[str, Any]]:
    refused = [_kit.provider(f"refused-{i}", f"http://127.0.0.1:{_kit.closed_port()}",
                             priority=i) for i in range(4)]
    silent = [_kit.provider(f"silent-{i}", f"http://127.0.0.1:{p}", priority=10 + i)
              for i, p in enumerate(srv.hang_ports)]
    healthy = [_kit.provider(f"healthy-{i}", srv.url, priority=20 + i) for i in range(4)]
    return refused + silent + healthy


def health_pass(router: Any, sequential: bool) -> tuple[float, dict[str, str]]:
    t0 = time.perf_counter()
    if sequential:
        states = {}
        for name in router.names:
            states.update({k: v.state for k, v in router.check_health([name]).items()})
    else:
        states = {k: v.state for k, v in router.check_health().items()}
    return time.perf_counter() - t0, states


def load_ext_once(path: Path, wait: float) -> dict[str, Any]:
    env = {**os.environ, "TIMMY_PROVIDERS": str(path)}
    code = LOAD_EXT.format(heavy=HEAVY, wait=wait)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    if out.returncode:
        raise RuntimeError(f"the load_ext process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def import_once() -> tuple[float, list[str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          IMPORT.format(heavy=HEAVY)], capture_output=True, text=True,
                         timeout=60, check=True)
    us = next(int(ln.split("|")[1]) for ln in out.stderr.splitlines()
              if ln.rstrip().endswith("| timmy_magic"))
    return us / 1e6, json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=1.0, help="health_timeout_seconds")
    args = ap.parse_args()
    _kit.header("health fan-out, %load_ext and import time",
                ("python benchmarks/health_fanout.py " + " ".join(sys.argv[1:])).strip())
    conc: list[float] = []
    seq: list[float] = []
    loads: list[dict[str, Any]] = []
    with _kit.fast_server(hang=4) as srv:
        provs = providers(srv)
        path = Path(tempfile.mkdtemp(prefix="timmy-bench-")) / "providers.yaml"
        path.write_text(_kit.router_yaml(provs, health_timeout=args.timeout))
        router = _kit.make_router(provs, health_timeout=args.timeout)
        try:
            router.check_health()  # warm-up: imports, the SSL context
            for r in range(args.rounds):
                took, states = health_pass(router, sequential=False)
                conc.append(took)
                if r < 2:  # the sequential way is slow: twice is enough
                    seq.append(health_pass(router, sequential=True)[0])
                loads.append(load_ext_once(path, wait=args.timeout + 3))
                print(f"   round {r + 1}/{args.rounds} done (load {_kit.loadavg()})",
                      flush=True)
        finally:
            router.close()
    imports = [import_once() for _ in range(args.rounds)]
    report(args, conc, seq, states, loads, imports)


def report(args: argparse.Namespace, conc: list[float], seq: list[float],
           states: dict[str, str], loads: list[dict[str, Any]],
           imports: list[tuple[float, list[str]]]) -> None:
    med = _kit.median
    by_state: dict[str, int] = {}
    for s in states.values():
        by_state[s] = by_state.get(s, 0) + 1
    print(f"\n-- 1. health pass over 12 providers, health timeout {args.timeout:g} s "
          f"(states: {by_state})")
    print(_kit.table(["way", "median s", "max s", "x timeout"], [
        ["concurrent (check_health)", med(conc), max(conc), med(conc) / args.timeout],
        ["sequential (one by one)", med(seq), max(seq), med(seq) / args.timeout]]))
    took = [x["took"] for x in loads]
    print(f"\n-- 2. %load_ext timmy_magic, fresh process x {len(loads)}: median "
          f"{med(took) * 1e3:.0f} ms, max {max(took) * 1e3:.0f} ms")
    print(f"   it said: {loads[-1]['said']}")
    print(f"   heavy modules imported by the load: {loads[-1]['after_load'] or 'none'}; "
          f"after the first health pass: {loads[-1]['after_health'] or 'none'} "
          f"(states then: {loads[-1]['states']})")
    secs = [t for t, _ in imports]
    print(f"\n-- 3. import timmy_magic (-X importtime, cumulative), fresh process x "
          f"{len(imports)}: median {med(secs) * 1e3:.1f} ms, max {max(secs) * 1e3:.1f} ms; "
          f"heavy modules imported: {imports[-1][1] or 'none'}")
    heavy = sorted({m for x in loads for m in x["after_load"] + x["after_health"]}
                   | {m for _, ms in imports for m in ms})
    print("\n-- targets")
    ratio = med(conc) / args.timeout
    print(f"   {_kit.verdict(ratio <= 1.2):6} a full health pass <= 1.2x one health timeout "
          f"({ratio:.2f}x)")
    print(f"   {_kit.verdict(med(took) <= 0.5):6} %load_ext <= 0.5 s "
          f"({med(took) * 1e3:.0f} ms)")
    print(f"   {_kit.verdict(med(secs) <= 0.15):6} import timmy_magic <= 150 ms "
          f"({med(secs) * 1e3:.1f} ms)")
    print(f"   {_kit.verdict(not heavy):6} no openai / matplotlib / ipywidgets at import or "
          f"load ({', '.join(heavy) or 'none imported'})")
    print(f"   load average at the end: {_kit.loadavg()}")


if __name__ == "__main__":
    main()
