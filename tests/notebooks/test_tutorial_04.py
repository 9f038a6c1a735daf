"""notebooks/04-health-and-failover.ipynb: the panel, ``%llm status``, the cloud gate
(local-only mode, then a daily budget spent by a real answer) and a circuit breaker going
closed → open → half-open → closed, against two real llama-servers: one the notebook starts,
stops and restarts itself, one managed through ``launch:`` and marked ``cloud: true``.

The notebook reads its ports from GEMMA_PORT and CLOUD_PORT; each run gets free ones, and no
server may outlive the kernel.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import rendered
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
NOTEBOOK = NOTEBOOKS / "04-health-and-failover.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def ports() -> dict[str, str]:
    return {"GEMMA_PORT": str(free_port()), "CLOUD_PORT": str(free_port())}


def test_health_and_failover_final_state(tmp_path: Path) -> None:
    env = ports()
    try:
        nb = execute(NOTEBOOK, env, tmp_path)
    finally:
        no_servers_left(env.values())
    assert errors(nb) == []
    assert any(WIDGET in o.get("data", {}) for o in find(nb, "%llm panel").outputs)
    first_status = cell_text(find(nb, "%llm status"))
    # money reads as written, never as math (JupyterLab would typeset a raw "$...$")
    seen = rendered.text_of(rendered.render(first_status))
    assert seen.startswith("cloud gate: open · spent today $0.00 of $0.01"), seen
    assert rendered.math(first_status) == []
    assert f"| gemma | {state_badge('healthy')} |" in first_status
    assert f"| cloud ☁ | {state_badge('stopped')} |" in first_status

    gated_pin, local_only, cloud_answer, nothing_left, recovered = answers(nb)
    for md in (gated_pin, local_only, cloud_answer, nothing_left, recovered):
        assert "waiting for an answer" not in md and "▌" not in md, md
    # local-only: even a pinned cell cannot reach the cloud provider; the cascade skips it
    assert unwrapped(gated_pin).startswith("**timmy-magic: pinned provider 'cloud' did not answer**")
    assert "cloud skipped (cloud gate: local-only mode)" in gated_pin
    assert footer_provider(local_only) == "gemma"
    assert "cloud skipped (cloud gate: local-only mode)\ngemma#1 answered" in cell_text(
        find(nb, "print(*timmy_magic.last().trace.lines()"))
    # gate open: the cloud provider answers, at a cost that spends the budget
    assert footer_provider(cloud_answer) == "cloud", cloud_answer
    footer_md, _, notes = cloud_answer.rpartition("\n---\n")[2].partition("\n\n")
    footer = rendered.text_of(rendered.render(footer_md))
    assert re.search(r" · \$0\.\d{2,4}$", footer), footer  # the cost, read as rendered
    assert rendered.math(cloud_answer) == []
    assert notes.startswith("> TTFT includes starting cloud ("), notes  # started on first need
    assert "reason='daily budget spent ($0." in cell_text(find(nb, "router.gate()"))
    # circuit open + gate closed: nobody is left, and each reason is given
    assert unwrapped(nothing_left).startswith("**timmy-magic: no provider could answer**")
    assert "gemma skipped (circuit open: retry in" in nothing_left
    seen = rendered.text_of(rendered.render(nothing_left))  # money is escaped as "&#36;"
    assert "cloud skipped (cloud gate: daily budget spent ($0." in seen, seen
    open_status = cell_text(find(nb, "%llm status", 1))
    assert rendered.text_of(rendered.render(open_status)).startswith(
        "cloud gate: closed (daily budget spent ($0.")
    assert f"| gemma | {state_badge('circuit_open')} |" in open_status
    # recovered: the half-open trial answered and closed the circuit
    assert footer_provider(recovered) == "gemma"
    assert cell_text(find(nb, "states.append(circuit())\nprint")) == \
        "gemma\nclosed → closed → open → half_open → closed\n"
    assert cell_text(find(nb, "%llm stop cloud")) == "Stopped cloud.\n"


def test_health_and_failover_passes_nbval() -> None:
    env = ports()
    try:
        run_nbval(NOTEBOOK, env)
    finally:
        no_servers_left(env.values())
