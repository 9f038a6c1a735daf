"""Start-up: ``import timmy_magic`` and ``%load_ext timmy_magic``, each in fresh processes.

    .venv/bin/python benchmarks/startup.py              # ~20 s
    .venv/bin/python benchmarks/startup.py --fresh 15

Every figure is the median of ``--fresh`` fresh Python processes, taken in turns:

1. ``import timmy_magic``: wall time of the import statement. Target <= 20 ms.
2. ``%load_ext timmy_magic`` in a shell that has imported IPython already (as in a
   kernel), with a providers.yaml of two local providers: wall time of the magic, which
   reads and validates the file, builds the router and starts the health checks in the
   background. Target <= 200 ms.
3. Where the load's time goes: ``-X importtime`` of one load, the modules' own times
   summed per group (pydantic, the config models, asyncio, ours...), largest first.

Python writes bytecode caches here (``PYTHONDONTWRITEBYTECODE`` is removed from the
children's environment and one warm-up run fills the caches), as a pip install does: a
fresh process that compiled every module from source would measure the compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import _kit

IMPORT = """
import json, sys, time
t0 = time.perf_counter()
import timmy_magic
took = time.perf_counter() - t0
print(json.dumps({"took": took, "modules": sorted(m for m in sys.modules
                                                  if m.startswith("timmy_magic"))}))
"""

LOAD = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
ip = InteractiveShell.instance()
before = set(sys.modules)
t0 = time.perf_counter()
with capture_output() as cap:
    ip.run_line_magic("load_ext", "timmy_magic")
took = time.perf_counter() - t0
print(json.dumps({"took": took, "said": cap.stdout.strip(),
                  "new": len(set(sys.modules) - before)}))
"""

GROUPS = (("timmy_magic.config", "our config models (pydantic)"), ("timmy_magic", "ours"),
          ("pydantic", "pydantic"), ("pydantic_core", "pydantic"),
          ("annotated_types", "pydantic"), ("typing_inspection", "pydantic"),
          ("yaml", "yaml"), ("asyncio", "asyncio"), ("ssl", "ssl"), ("_ssl", "ssl"))


def env(path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**out, "TIMMY_PROVIDERS": str(path), "PYTHONPATH": str(_kit.REPO)}


def fresh(code: str, path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, *flags, "-c", code], env=env(path),
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode:
        raise RuntimeError(f"the fresh process failed:\n{out.stderr[-2000:]}")
    return out


def group(module: str) -> str:
    for prefix, name in GROUPS:
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "other (stdlib, platformdirs...)"


def breakdown(path: Path) -> list[tuple[str, float]]:
    """Self time per group of the modules a load imports (``-X importtime``)."""
    code = LOAD.replace("before = set(sys.modules)",
                        "before = set(sys.modules); sys.stderr.write('=LOAD=\\n')")
    err = fresh(code, path, "-X", "importtime").stderr
    mark = err.index("=LOAD=")
    sums: dict[str, float] = defaultdict(float)
    for line in err[mark:].splitlines()[1:]:
        if line.startswith("import time:") and "|" in line:
            self_us, _, name = line[len("import time:"):].split("|")
            if self_us.strip().isdigit():
                sums[group(name.strip())] += int(self_us) / 1000
    return sorted(sums.items(), key=lambda kv: -kv[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--fresh", type=int, default=9, help="fresh processes per figure")
    args = ap.parse_args()
    _kit.header("start-up: import timmy_magic and %load_ext",
                f"benchmarks/startup.py --fresh {args.fresh}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "providers.yaml"
        path.write_text("providers:\n"
                        "  - {name: local, type: llama_cpp, base_url: 'http://127.0.0.1:9'}\n"
                        "  - {name: other, type: ollama, base_url: 'http://127.0.0.1:9'}\n")
        fresh(IMPORT, path)  # warm-up: fills the bytecode caches
        fresh(LOAD, path)
        imports: list[float] = []
        loads: list[float] = []
        for _ in range(args.fresh):
            imports.append(json.loads(fresh(IMPORT, path).stdout)["took"] * 1000)
            loads.append(json.loads(fresh(LOAD, path).stdout)["took"] * 1000)
        modules = json.loads(fresh(IMPORT, path).stdout)["modules"]
        groups = breakdown(path)
    print(f"\n-- fresh processes x {args.fresh}, taken in turns (ms)")
    print(_kit.table(["step", "median", "min", "max"], [
        ["import timmy_magic", _kit.median(imports), min(imports), max(imports)],
        ["%load_ext timmy_magic", _kit.median(loads), min(loads), max(loads)]]))
    print(f"   modules after import timmy_magic: {', '.join(modules)}")
    print("\n-- where one %load_ext goes: imports' own time per group (-X importtime, ms)")
    print(_kit.table(["group", "ms"], [[g, ms] for g, ms in groups]))
    print(f"\n   {_kit.verdict(_kit.median(imports) <= 20):6} import timmy_magic <= 20 ms "
          f"(median {_kit.median(imports):.1f})")
    print(f"   {_kit.verdict(_kit.median(loads) <= 200):6} %load_ext <= 200 ms "
          f"(median {_kit.median(loads):.0f})")
    print(f"   load average after: {_kit.loadavg()}")


if __name__ == "__main__":
    main()
