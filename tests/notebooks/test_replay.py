"""The tutorials replayed from their recorded answers (issue 15): every provider points at
a closed port, the answer cache is in replay mode on a copy of
notebooks/answers/<notebook>.sqlite3, and nbval checks every cell, the LLM cells
included, against the outputs saved in the notebook (which scripts/record_answers.py
wrote from a replay). A request that went out would fail; a recorded answer that changed
would differ. Tutorials that start a server themselves (02, 04) run it in replay too, on
a free port (``Replayed.own_ports``); none may outlive the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import no_servers_left, run_nbval
from .replay import REPLAYED, answers_copy, checked_copy, replay_env


@pytest.mark.parametrize("key", sorted(REPLAYED))
def test_tutorial_replays_offline_with_its_answers_checked(key: str, tmp_path: Path) -> None:
    spec = REPLAYED[key]
    notebook = checked_copy(spec, tmp_path)
    env = replay_env(spec, tmp_path, answers_copy(spec, tmp_path))
    try:
        out = run_nbval(notebook, env)
    finally:
        no_servers_left(spec.ports(env))
    assert "replay: no recorded answer" not in out
