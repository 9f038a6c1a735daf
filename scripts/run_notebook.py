"""Execute a notebook headless with the project's kernel and report what it answered.

    python scripts/run_notebook.py notebooks/01-quickstart.ipynb [--out DIR]

Writes the executed copy to artifacts/ (or --out) and prints the last %%llm answer.
Exits non-zero if any cell raised.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--out", type=Path, default=Path("artifacts"))
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args()
    nb = nbformat.read(args.notebook, as_version=4)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"{args.notebook.stem}.executed.ipynb"
    t0 = time.monotonic()
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(args.notebook.parent)}})
    try:
        client.execute()
        ok = True
    except CellExecutionError as exc:
        print(f"run_notebook: a cell failed:\n{str(exc)[-2000:]}", file=sys.stderr)
        ok = False
    nbformat.write(nb, target)
    answers = [o for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%llm")
               for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    if answers:
        print("--- last %%llm answer (Markdown) ---")
        print(answers[-1]["data"]["text/markdown"][-1500:])
    print(f"--- executed in {time.monotonic() - t0:.1f}s: {target.resolve()}")
    return 0 if ok and answers else 1


if __name__ == "__main__":
    sys.exit(main())
