"""Record the tutorials' answers for replay (issue 15), then save each notebook with the
outputs its replay gives, so nbval can check what the model said, exactly and offline.

    .venv/bin/python scripts/record_answers.py            # every replayed tutorial
    .venv/bin/python scripts/record_answers.py 06 08      # some of them

For each tutorial: start the real servers it needs (tests/support/servers.py), run it
with the answer cache on into ``notebooks/answers/<notebook>.sqlite3`` (a fresh file),
then run it again in replay mode with every provider pointing at a closed port (so a
miss cannot hide behind a live answer) and write those outputs into the notebook: for
every cell nbval checks in replay (the model's answers included). The cells it does not
check in replay (live health, route traces, a failure demonstrated live: see
``Replayed.live_only``) keep the outputs of the live run, which the live tests check and
a reader sees. CI (tests/notebooks/test_replay.py) replays it the same way.
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
    answers_path,
    checked_in_replay,
    copy_data,
    replay_env,
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


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def shows_widget(cell: object) -> bool:
    return any(WIDGET_VIEW in o.get("data", {}) for o in getattr(cell, "outputs", []))


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
            cells = replayed.cells  # type: ignore[attr-defined]
            live_widgets = replay_widgets = False
            for i, checked in enumerate(checked_in_replay(spec, cells)):
                if not checked:
                    cells[i] = recorded.cells[i]  # type: ignore[attr-defined]
                    live_widgets |= shows_widget(cells[i])
                else:
                    replay_widgets |= shows_widget(cells[i])
            if live_widgets:  # the widget state of the run whose widget views are kept
                widgets = dict(recorded.metadata.get("widgets", {}))  # type: ignore[attr-defined]
                if replay_widgets:
                    for mime, state in replayed.metadata.get("widgets", {}).items():  # type: ignore[attr-defined]
                        widgets.setdefault(mime, {}).setdefault("state", {}).update(
                            state.get("state", {}))
                replayed.metadata["widgets"] = widgets  # type: ignore[attr-defined]
            for cell in cells:
                cell.metadata.pop("execution", None)  # no per-cell timestamps in the diff
            nbformat.write(replayed, notebook)  # type: ignore[arg-type]
            print(f"{spec.notebook}: {n} answers -> {out.relative_to(ROOT)}")
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    for k in sys.argv[1:] or list(REPLAYED):
        record(k)
