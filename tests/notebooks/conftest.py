"""Running the tutorials of notebooks/ against real servers, twice each: with nbclient, to
assert their final state (display updates applied), and with ``pytest --nbval`` in a
subprocess, which compares every cell not tagged ``nbval-ignore-output`` with its stored
output (after tests/nbval_sanitize.cfg).

Each tutorial reads its servers' ports or URLs from environment variables; the kernels
inherit the environment of the process that starts them. Servers a notebook starts itself
must be gone once its kernel has exited: ``servers_on`` finds any that are left (by the
``--port`` on their command line), and ``no_servers_left`` stops them by PID and fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
IGNORE = "nbval-ignore-output"


def execute(path: Path, env: Mapping[str, str], workdir: Path, timeout: int = 180) -> Any:
    """The notebook executed by nbclient (outputs as a front end would keep them)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel is started with this environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def run_nbval(path: Path, env: Mapping[str, str], timeout: int = 300) -> str:
    """``pytest --nbval`` on the notebook; asserts every code cell passed; returns output."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", str(path), "-q", "-p", "no:randomly",
         "-p", "no:cacheprovider", "--nbval-sanitize-with", str(SANITIZE),
         "--nbval-cell-timeout", "180"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **env})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    code_cells = path.read_text().count('"cell_type": "code"')
    assert f"{code_cells} passed" in proc.stdout, out[-2000:]
    return out


# ------------------------------------------------------------------ reading outputs


def text_of(output: Any) -> str:
    if output["output_type"] == "stream":
        return str(output["text"])
    if output["output_type"] == "error":
        return f"{output['ename']}: {output['evalue']}"
    data = output.get("data", {})
    return str(data.get("text/markdown") or data.get("text/plain") or "")


def cell_text(cell: Any) -> str:
    return "".join(text_of(o) for o in cell.outputs)


def code_cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code"]


def errors(nb: Any) -> list[str]:
    return [text_of(o) for c in code_cells(nb) for o in c.outputs
            if o["output_type"] == "error"]


def find(nb: Any, source_start: str, nth: int = 0) -> Any:
    """The ``nth`` code cell whose source starts with ``source_start``."""
    found = [c for c in code_cells(nb) if c.source.startswith(source_start)]
    assert len(found) > nth, f"no cell #{nth} starting with {source_start!r}"
    return found[nth]


def answers(nb: Any) -> list[str]:
    """The final Markdown of every ``%%llm`` cell, in order."""
    return [cell_text(c) for c in code_cells(nb) if c.source.startswith("%%llm")]


def footer_provider(markdown: str) -> str | None:
    """The provider named by an answer's footer (``*NAME · model · ...*``), or None."""
    _, footer, tail = markdown.rpartition("\n---\n*")
    tail = re.sub(r"<[^>]+>", "", tail)  # a footer holding "$" is in a no-math span
    return tail.partition(" · ")[0] if footer and tail else None


# ------------------------------------------------------------------ processes


def servers_on(ports: Iterable[int | str]) -> dict[int, str]:
    """PID -> command line of every process started with ``--port P`` for one of ``ports``."""
    wanted = {str(p) for p in ports}
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if any(a == "--port" and i + 1 < len(args) and args[i + 1] in wanted
               for i, a in enumerate(args)) and _alive(int(entry.name)):
            found[int(entry.name)] = " ".join(args)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def no_servers_left(ports: Iterable[int | str], grace: float = 10.0) -> None:
    """Wait up to ``grace`` s for the servers on ``ports`` to exit; stop any left (by PID)
    and fail."""
    ports = list(ports)
    deadline = time.monotonic() + grace
    while (left := servers_on(ports)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"servers left running after the notebook: {left}"
