"""The demo after set-up (``scripts/demo.sh``), step by step with progress:

1. ask the embedded default once from Python, as the notebook will: the router starts its
   llama.cpp server (progress: which runtime, ready after how long) and streams the
   answer (the first token's time is printed when it comes);
2. execute ``notebooks/01-quickstart.ipynb`` headless while that server runs (the
   kernel's router adopts it: one start for the whole demo) into ``artifacts/``;
3. print the notebook's prompts and answers as plain text, and what to do next.

    .venv/bin/python scripts/demo_run.py [--notebook PATH] [--out DIR] [--timeout S]

Exits non-zero if the model gave no answer or a cell raised.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "A Jupyter notebook is"
_SUB = str.maketrans("0123456789+-=()", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎")
_SUP = str.maketrans("0123456789+-=()", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾")


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def plain(text: str) -> str:
    """Markdown/HTML an answer may hold, as terminal text: ``H<sub>2</sub>O`` -> H₂O,
    other tags dropped, entities decoded."""
    text = re.sub(r"<sub>([^<]*)</sub>", lambda m: m.group(1).translate(_SUB), text)
    text = re.sub(r"<sup>([^<]*)</sup>", lambda m: m.group(1).translate(_SUP), text)
    text = re.sub(r"<br\s*/?>", "\n", text)
    return html.unescape(re.sub(r"</?[A-Za-z][^>]*>", "", text))


def ask_once(router: Any) -> bool:
    """Stream one answer through the cascade, printing the launch progress and when the
    first token came. True if it answered."""
    from timmy_magic import Delta, Done, Status

    t0 = time.monotonic()
    first = True
    result = None
    say(f"asking the embedded default: {PROMPT!r}")
    for ev in router.stream(PROMPT, max_tokens=24):
        if isinstance(ev, Status):
            say(f"server: {ev.message}")
        elif isinstance(ev, Delta):
            if first:
                say(f"first token after {time.monotonic() - t0:.2f}s (server start included)")
                print(f"    {PROMPT}", end="", flush=True)
                first = False
            print(plain(ev.text), end="", flush=True)
        elif isinstance(ev, Done):
            result = ev.result
    print(flush=True)
    if result is None or not result.ok:
        print(f"demo: no answer: {result.error if result else 'no result'}", file=sys.stderr)
        return False
    print(f"    — {result.footer()}", flush=True)
    return True


def execute(notebook: Path, out: Path, timeout: int) -> tuple[Any, Path, bool]:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{notebook.stem}.executed.ipynb"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}},
                            # the kernel's loopback-TCP notice is not the demo's business
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    ok = True
    try:
        client.execute()
    except CellExecutionError as exc:
        print(f"demo: a cell failed:\n{str(exc)[-2000:]}", file=sys.stderr)
        ok = False
    nbformat.write(nb, target)
    return nb, target, ok


def answers(nb: Any) -> list[tuple[str, str, str]]:
    """(prompt, answer, footer) of every ``%%llm`` cell, as plain text."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.source.startswith("%%llm"):
            continue
        prompt = cell.source.split("\n", 1)[1].strip() if "\n" in cell.source else ""
        for o in cell.get("outputs", []):
            text = o.get("data", {}).get("text/plain")
            if o.get("output_type") in ("display_data", "execute_result") and text:
                body, _, footer = str(text).rpartition("\n\n— ")
                if not body:
                    body, footer = str(text), ""
                found.append((prompt, plain(body).strip("\n"),
                              plain(footer.split("\n")[0]).strip()))
    return found


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notebook", type=Path, default=ROOT / "notebooks/01-quickstart.ipynb")
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args()
    nb_path, out = args.notebook.resolve(), args.out.resolve()
    # the same providers.yaml the notebook's kernel reads (it runs in the notebook's folder)
    os.chdir(nb_path.parent)
    from timmy_magic import Router

    with Router.from_config() as router:
        if not ask_once(router):
            return 1
        t0 = time.monotonic()
        say(f"executing {nb_path.relative_to(ROOT)} headless (its kernel uses the server "
            f"started above)")
        nb, target, ok = execute(nb_path, out, args.timeout)
        cells = sum(c.cell_type == "code" for c in nb.cells)
        print(f"    {cells} code cells in {time.monotonic() - t0:.1f}s"
              f"{'' if ok else ', one failed'}: {target}", flush=True)
    found = answers(nb)
    if found:
        print(f"\nPrompts and answers ({nb_path.name}, as plain text):")
        for prompt, answer, footer in found:
            print(f"\n  prompt: {prompt}")
            print(f"  answer: {answer.lstrip()}")
            if footer:
                print(f"          ({footer})")
    tutorials = sorted(p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
    span = f"{tutorials[0]} to {tutorials[-1]}" if tutorials else "01"
    print(f"\nNext: the tutorials (notebooks/{span}) in JupyterLab, from {ROOT}:")
    if not (ROOT / ".venv/bin/jupyter-lab").exists():
        print("  .venv/bin/pip install -e '.[lab]'   # once: JupyterLab, widgets, pandas")
    print("  .venv/bin/jupyter lab notebooks/")
    print("Gemma 3 270M is a small base model: write the start of the answer. For real work, "
          "point providers.yaml at a bigger model or a cloud API (README: providers.yaml).")
    return 0 if ok and found else 1


if __name__ == "__main__":
    sys.exit(main())
