"""%%llm in a real ipykernel: a kernel interrupt (SIGINT) mid-stream, and cell ids sent by
the front end (as JupyterLab does) keying the conversation turns."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from tests.support.faultserver import FaultServer
from timmy_magic.notebook.display.css import unwrapped

from .conftest import WriteProviders, local, wait_for


class Kernel:
    def __init__(self, km: KernelManager) -> None:
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def send(self, code: str, cell_id: str | None = None) -> str:
        content = {"code": code, "silent": False, "store_history": True,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
        msg = self.kc.session.msg("execute_request", content,
                                  metadata={"cellId": cell_id} if cell_id else {})
        self.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def outputs(self, msg_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        """iopub messages of one request until the kernel is idle again."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.kc.get_iopub_msg(timeout=deadline - time.monotonic())
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out
            out.append(msg)
        raise TimeoutError(f"no idle status for {msg_id}")

    def run(self, code: str, cell_id: str | None = None) -> list[dict[str, Any]]:
        return self.outputs(self.send(code, cell_id))


@pytest.fixture
def kernel(fault: FaultServer, write_providers: WriteProviders) -> Iterator[Kernel]:
    write_providers([local("slow", fault.base_url("drip", tokens=60, interval=0.1)),
                     local("quick", fault.base_url("ok", text="hello there"), priority=2)])
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ})
    try:
        k = Kernel(km)
        k.run("%load_ext timmy_magic")
        yield k
    finally:
        k.kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_kernel_interrupt_keeps_the_partial_answer_and_the_next_cell_works(
        kernel: Kernel, fault: FaultServer) -> None:
    msg_id = kernel.send("%%llm -p slow -o partial\nwrite a lot")
    seen: list[dict[str, Any]] = []

    def streaming() -> bool:
        while True:
            try:
                msg = kernel.kc.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                return False
            if msg["parent_header"].get("msg_id") == msg_id:
                seen.append(msg)
                data = msg["content"].get("data", {})
                if "tok2" in data.get("text/plain", ""):
                    return True

    assert wait_for(streaming, 20)
    kernel.km.interrupt_kernel()
    msgs = [m for m in seen + kernel.outputs(msg_id) if m["msg_type"] != "status"]
    kinds = [m["msg_type"] for m in msgs]
    assert kinds[:2] == ["execute_input", "display_data"]
    assert set(kinds[2:-1]) == {"update_display_data"} and kinds[-1] == "error"
    final = msgs[-2]["content"]["data"]["text/markdown"]
    # reported once: by the cell's error line; the answer's footer only marks it
    assert unwrapped(final).startswith("tok0 tok1 tok2") and "· interrupted*" in final
    assert "Stream interrupted" not in final
    error = msgs[-1]["content"]
    assert error["ename"] == "StreamInterrupted" and len(error["traceback"]) == 1
    out = kernel.run("print(repr(partial.error), partial.text.startswith('tok0 tok1 tok2'))")
    assert out[-1]["content"]["text"] == "'interrupted by the user' True\n"
    out = kernel.run("%%llm -p quick\nagain")
    assert "hello there" in out[-1]["content"]["data"]["text/markdown"]


def test_front_end_cell_ids_key_the_conversation_turns(kernel: Kernel) -> None:
    kernel.run("%%llm -p quick --chat\nfirst", cell_id="cell-a")
    kernel.run("%%llm -p quick --chat\nsecond", cell_id="cell-b")
    kernel.run("%%llm -p quick --chat\nfirst, edited", cell_id="cell-a")
    out = kernel.run("ext = __import__('timmy_magic.notebook').notebook.extension()\n"
                     "print([t.prompt for t in ext.conversation.turns])")
    assert out[-1]["content"]["text"] == "['first, edited', 'second']\n"
