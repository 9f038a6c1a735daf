"""Record the tutorials' answers for replay (issue 15), then save each notebook with the
outputs of its live run: what a user running it sees.

    .venv/bin/python scripts/record_answers.py            # every replayed tutorial
    .venv/bin/python scripts/record_answers.py 06 08      # some of them

For each tutorial: start the real servers it needs (tests/support/servers.py), run it
with the answer cache on into ``notebooks/answers/<notebook>.sqlite3`` (a fresh file), as
a user would (its providers.yaml is the user's, ``~/.config/timmy-magic/providers.yaml``
of a home of its own: ``replay.user_home``), and save those outputs in the notebook. Then
run it again in replay mode with every provider pointing at a closed port (so a miss
cannot hide behind a live answer), as CI does (tests/notebooks/test_replay.py): nbval
compares the replay with the saved live outputs, the marks only a replay shows (``cached``
in a footer, the note saying when the answer was recorded) taken out of both by
tests/nbval_sanitize.cfg. The cells whose replay would still differ are listed here.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.notebooks.conftest import no_servers_left  # noqa: E402
from tests.notebooks.replay import (  # noqa: E402
    REPLAYED,
    SKIPPED,
    answers_path,
    checked_in_replay,
    copy_data,
    replay_env,
    sanitized,
)
from tests.support.servers import ensure_tiny_model, start_llama_server, start_vllm_mlx  # noqa: E402


def execute(path: Path, env: dict[str, str], workdir: Path) -> object:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=240, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def as_compared(cell: object) -> list[dict[str, str]]:
    """A cell's outputs as nbval compares them (tests/nbval_sanitize.cfg applied)."""
    return [{k: sanitized(str(v)) for k, v in o.get("data", {"text": o.get("text", "")}).items()
             if k not in SKIPPED} for o in getattr(cell, "outputs", [])]


def record(key: str) -> None:
    import nbformat

    spec = REPLAYED[key]
    notebook = ROOT / "notebooks" / spec.notebook
    out = answers_path(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    servers = []
    try:
        urls = {}
        if "llama" in spec.servers:
            servers.append(start_llama_server())
            urls["llama"] = servers[-1].base_url
        if "vllm" in spec.servers:
            servers.append(start_vllm_mlx(ensure_tiny_model()))
            urls["vllm"] = servers[-1].base_url
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            copy_data(spec, work)
            fresh = work / "answers.sqlite3"
            live = {**spec.env(urls, work), "TIMMY_CACHE_MODE": "on",
                    "TIMMY_CACHE_PATH": str(fresh)}
            try:
                recorded = execute(notebook, live, work)
            finally:
                no_servers_left(spec.ports(live))
            env = replay_env(spec, work, fresh)
            try:
                replayed = execute(notebook, env, work)
            finally:
                no_servers_left(spec.ports(env))
            with sqlite3.connect(fresh) as db:  # one file, no -wal beside it
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                n = db.execute("SELECT count(*) FROM answers").fetchone()[0]
            shutil.copyfile(fresh, out)
            differs = [i for i, checked in enumerate(checked_in_replay(spec, recorded.cells))  # type: ignore[attr-defined]
                       if checked and as_compared(replayed.cells[i]) != as_compared(recorded.cells[i])]  # type: ignore[attr-defined]
            for cell in recorded.cells:  # type: ignore[attr-defined]
                cell.metadata.pop("execution", None)  # no per-cell timestamps in the diff
            nbformat.write(recorded, notebook)  # type: ignore[arg-type]
            print(f"{spec.notebook}: {n} answers -> {out.relative_to(ROOT)}")
            for i in differs:
                print(f"  cell {i}: its replay differs from the live run (nbval will fail):\n"
                      f"    live:   {as_compared(recorded.cells[i])}\n"  # type: ignore[attr-defined]
                      f"    replay: {as_compared(replayed.cells[i])}")  # type: ignore[attr-defined]
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    for k in sys.argv[1:] or list(REPLAYED):
        record(k)
