"""notebooks/02-pin-or-cascade.ipynb: two real llama-servers (Gemma 3 270M), one run by the
notebook itself and stopped halfway, one managed through ``launch:``.

The notebook reads its ports from GEMMA_A_PORT and GEMMA_B_PORT; each run gets free ones,
and no server may outlive the kernel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.servers import free_port
from timmy_magic.notebook.display.css import unwrapped
from timmy_magic.notebook.display.tables import state_badge

from .conftest import (
    NOTEBOOKS,
    answers,
    cell_text,
    errors,
    execute,
    find,
    footer_provider,
    no_servers_left,
    run_nbval,
)

pytestmark = pytest.mark.integration
NOTEBOOK = NOTEBOOKS / "02-pin-or-cascade.ipynb"


def ports() -> dict[str, str]:
    return {"GEMMA_A_PORT": str(free_port()), "GEMMA_B_PORT": str(free_port())}


def test_pin_or_cascade_final_state(tmp_path: Path) -> None:
    env = ports()
    try:
        nb = execute(NOTEBOOK, env, tmp_path)
    finally:
        no_servers_left(env.values())
    assert errors(nb) == []
    cascade, pinned_cell, pinned_session, failover, skipped, pinned_down = answers(nb)
    for md in (cascade, pinned_cell, pinned_session, failover, skipped, pinned_down):
        assert "waiting for an answer" not in md and "▌" not in md, md
    # the cascade picks gemma-a; -p and %llm pin send cells to gemma-b
    assert footer_provider(cascade) == "gemma-a", cascade
    assert footer_provider(pinned_cell) == "gemma-b", pinned_cell
    assert footer_provider(pinned_session) == "gemma-b", pinned_session
    assert f"| gemma-a | {state_badge('healthy')} |" in cell_text(find(nb, "%llm status"))
    assert f"| gemma-b | {state_badge('stopped')} |" in cell_text(find(nb, "%llm status"))
    # gemma-a stopped: the failed attempt is in the trace, gemma-b answered
    assert footer_provider(failover) == "gemma-b", failover
    assert "gemma-a#1 failed: cannot connect" in failover
    assert "gemma-b#2 answered" in failover
    assert cell_text(find(nb, "answer = timmy_magic.last()", 2)).startswith(
        "gemma-b\nconsidered: gemma-a, gemma-b\ngemma-a#1 failed: cannot connect")
    # then it is skipped with the reason, without an attempt
    assert footer_provider(skipped) == "gemma-b", skipped
    assert "gemma-a skipped (unhealthy: cannot connect" in cell_text(
        find(nb, 'print(*timmy_magic.last().trace.lines()'))
    # pinned to the stopped server: a failure block, no answer from anyone else
    assert unwrapped(pinned_down).startswith("**timmy-magic: pinned provider 'gemma-a' did not answer**")
    assert footer_provider(pinned_down) is None and "gemma-b · " not in pinned_down
    assert "drop `-p gemma-a`" in pinned_down
    final_status = cell_text(find(nb, "%llm status", 1))
    assert f"| gemma-a | {state_badge('circuit_open')} |" in final_status
    assert f"| gemma-b | {state_badge('healthy')} |" in final_status
    assert cell_text(find(nb, "%llm stop gemma-b")) == "Stopped gemma-b.\n"


def test_pin_or_cascade_passes_nbval() -> None:
    env = ports()
    try:
        run_nbval(NOTEBOOK, env)
    finally:
        no_servers_left(env.values())
