"""Tool approval in a real ipykernel: the call is asked through the kernel's stdin
channel (an ``input_request``, as JupyterLab, Notebook and VS Code answer it) while the
cell runs, and the answer decides whether the function runs; a kernel run without stdin
(``allow_stdin: false``, as nbclient runs a notebook) denies the call and says how to
approve."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from tests.support.scriptserver import ScriptServer
from tests.tools.wire import openai_calls, openai_text

from .conftest import WriteProviders, local

SETUP = '''
RAN = []
def add(a: int, b: int) -> int:
    """Add two integers."""
    RAN.append((a, b))
    return a + b
'''


class Kernel:
    def __init__(self, km: KernelManager) -> None:
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, stdin: list[str] | None = None,
            timeout: float = 60) -> tuple[list[dict[str, Any]], list[str]]:
        """Run ``code``; answer each input request with the next of ``stdin`` (no stdin:
        ``allow_stdin`` false). The iopub messages and the prompts asked."""
        msg_id = self.kc.execute(code, allow_stdin=stdin is not None)
        answers = list(stdin or [])
        prompts: list[str] = []
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stdin is not None:
                try:
                    req = self.kc.get_stdin_msg(timeout=0.05)
                except Exception:  # queue.Empty
                    req = None
                if req is not None and req["msg_type"] == "input_request":
                    prompts.append(req["content"]["prompt"])
                    self.kc.input(answers.pop(0) if answers else "")
            try:
                msg = self.kc.get_iopub_msg(timeout=0.05)
            except Exception:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out, prompts
            out.append(msg)
        raise TimeoutError(f"no idle status for {msg_id}")


def text(msgs: list[dict[str, Any]]) -> str:
    parts = []
    for m in msgs:
        c = m["content"]
        parts.append(c.get("text", ""))
        parts.extend(str(v) for v in c.get("data", {}).values())
        if m["msg_type"] == "error":
            parts.append(f"{c['ename']}: {c['evalue']}")
    return "".join(parts)


@pytest.fixture
def server() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


@pytest.fixture
def kernel(server: ScriptServer, write_providers: WriteProviders) -> Iterator[Kernel]:
    write_providers([local("g", server.url, models=[
        {"name": "m", "default": True, "capabilities": ["tools"]}])])
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ})
    try:
        k = Kernel(km)
        k.run("%load_ext timmy_magic")
        k.run(SETUP)
        yield k
    finally:
        k.kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_kernel_asks_on_stdin_and_runs_only_what_was_approved(kernel, server):
    server.turns(openai_calls(("c1", "add", '{"a": 2, "b": 3}'),
                              ("c2", "add", '{"a": 9, "b": 9}')), openai_text("5"))
    out, prompts = kernel.run("%%llm --tools add -o r\nadd 2 and 3", stdin=["y", "n"])
    assert prompts == ["run add(a=2, b=3)? [y]es / [n]o / [a]lways add: ",
                       "run add(a=9, b=9)? [y]es / [n]o / [a]lways add: "]
    shown = text(out)
    assert "add(a=2, b=3) → 5" in shown and "add(a=9, b=9) ✗ denied by the user" in shown
    assert "Error" not in shown and "Traceback" not in shown
    check, _ = kernel.run("print(RAN, [c.approved for c in r.tool_calls])")
    assert "[(2, 3)] [True, False]" in text(check)


def test_without_stdin_the_call_is_denied_with_how_to_approve(kernel, server):
    server.turns(openai_calls(("c1", "add", '{"a": 1, "b": 1}')), openai_text("no"))
    out, prompts = kernel.run("%%llm --tools add\n1+1", stdin=None)
    shown = text(out)
    assert prompts == [] and "no stdin to ask on: add(a=1, b=1) denied" in shown
    check, _ = kernel.run("print(RAN)")
    assert "[]" in text(check)
