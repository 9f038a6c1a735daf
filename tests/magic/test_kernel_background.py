"""``%%llm --bg`` in a real ipykernel driven through jupyter_client, as a front end drives
it: three background answers stream while a foreground cell completes, each lands in its
own cell's display (by display id) after other cells ran, a cancel closes the request on
the server side, a kernel interrupt stops only the foreground, a hundred jobs leave no
thread or connection behind, and ``map(background=True)`` runs as a Job."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from tests.support.faultserver import FaultServer

from .conftest import WriteProviders, local, wait_for
from .test_kernel import Kernel

WORDS = {1: "alpha", 2: "bravo", 3: "charlie"}


class LoggingKernel(Kernel):
    """Keeps every iopub message, whatever its parent, so updates by display id that
    arrive while other cells run are not lost."""

    def __init__(self, km: KernelManager) -> None:
        super().__init__(km)
        self.log: list[dict[str, Any]] = []
        self._seen = 0

    def pump(self, timeout: float = 0.05) -> None:
        while True:
            try:
                self.log.append(self.kc.get_iopub_msg(timeout=timeout))
            except queue.Empty:
                return
            timeout = 0.0

    def outputs(self, msg_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            mine = [m for m in self.log if m["parent_header"].get("msg_id") == msg_id]
            if any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                   for m in mine):
                return [m for m in mine if m["msg_type"] != "status"]
        raise TimeoutError(f"no idle status for {msg_id}")

    def text(self, code: str) -> str:
        return "".join(m["content"].get("text", "") for m in self.run(code)
                       if m["msg_type"] == "stream")

    def display_id(self, msgs: list[dict[str, Any]]) -> str:
        shown = [m for m in msgs if m["msg_type"] == "display_data"]
        return str(shown[0]["content"]["transient"]["display_id"])

    def updates(self, display_id: str) -> list[dict[str, Any]]:
        self.pump()
        return [m for m in self.log if m["msg_type"] == "update_display_data"
                and m["content"]["transient"]["display_id"] == display_id]

    def final(self, display_id: str) -> str | None:
        """The display's last text once it holds the footer (the final render)."""
        ups = self.updates(display_id)
        last = ups[-1]["content"]["data"].get("text/markdown", "") if ups else ""
        return last if "\n---\n" in last else None


@pytest.fixture
def kernel(fault: FaultServer, write_providers: WriteProviders) -> Iterator[LoggingKernel]:
    write_providers([
        *(local(f"s{i}", fault.base_url("drip", text=f"{w} " * 40, interval=0.05))
          for i, w in WORDS.items()),
        local("quick", fault.base_url("ok", text="hello there"), priority=2),
        local("echo", fault.base_url("prompt"), priority=3)])
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ})
    k = LoggingKernel(km)
    try:
        k.run("%load_ext timmy_magic")
        yield k
    finally:
        k.kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_foreground_cell_completes_while_three_answers_stream_into_their_cells(
        kernel: LoggingKernel) -> None:
    cells = {i: kernel.send(f"%%llm --bg -p s{i} -o j{i}\nsay {w}", cell_id=f"bg-{i}")
             for i, w in WORDS.items()}
    shown = {i: kernel.outputs(m) for i, m in cells.items()}
    ids = {i: kernel.display_id(msgs) for i, msgs in shown.items()}
    # each background cell is over at once: its display (the placeholder), then idle;
    # its Out is the Job, which shows nothing there (the live answer is its output)
    assert all(kernel.final(d) is None for d in ids.values())
    assert all([m["msg_type"] for m in msgs] == ["execute_input", "display_data"]
               for msgs in shown.values())
    assert kernel.text("print(type(Out[2]).__name__, Out[2] is j1)") == "Job True\n"
    fg = kernel.run("%%llm -p quick\nin the foreground", cell_id="fg")
    own = kernel.display_id(fg)
    # while it ran, updates of the background displays came too (by their own ids)
    assert {m["content"]["transient"]["display_id"] for m in fg
            if m["msg_type"] == "update_display_data"} <= {own, *ids.values()}
    assert "hello there" in (kernel.final(own) or "")
    assert kernel.text("print(sum(j.done() for j in (j1, j2, j3)))") == "0\n"
    assert all(kernel.final(d) is None for d in ids.values())  # still streaming
    assert all(kernel.updates(d) for d in ids.values())  # ... and they did stream
    assert wait_for(lambda: all(kernel.final(d) for d in ids.values()), 20)
    for i, w in WORDS.items():  # each answer in its own cell, with its own footer
        final = kernel.final(ids[i])
        assert final is not None and final.startswith(f"{w} {w}") and f"s{i} ·" in final
        others = [x for x in WORDS.values() if x != w]
        assert not any(x in final for x in others)
    out = kernel.text("import timmy_magic\nprint(timmy_magic.last().provider, j2.status, "
                      "j2.result().text.count('bravo'))")
    assert out.split()[1:] == ["done", "40"]


def test_cancel_closes_the_request_on_the_server_and_keeps_the_partial_answer(
        kernel: LoggingKernel, fault: FaultServer) -> None:
    base = fault.open_connections
    ids = [kernel.display_id(kernel.run(f"%%llm --bg -p s{i} -o j{i}\nsay")) for i in (1, 2)]
    assert wait_for(lambda: all("alpha" in str(kernel.updates(d)) or "bravo" in str(
        kernel.updates(d)) for d in ids), 10)  # both have text
    assert wait_for(lambda: fault.open_connections >= base + 2, 5)
    streaming = fault.open_connections
    assert "Cancelled 1 job" in kernel.text("%llm cancel j1")
    assert wait_for(lambda: fault.open_connections == streaming - 1, 1.0)
    assert "Cancelled 1 job" in kernel.text("%llm cancel all")
    assert wait_for(lambda: fault.open_connections == streaming - 2, 1.0)
    assert wait_for(lambda: kernel.final(ids[0]) is not None, 5)
    assert "interrupted" in (kernel.final(ids[0]) or "")
    out = kernel.text("r = j1.result(); print(j1.status, repr(r.error), r.text.startswith("
                      "'alpha'))")
    assert out == "cancelled 'interrupted by the user' True\n"


def test_a_kernel_interrupt_stops_the_foreground_cell_only(
        kernel: LoggingKernel) -> None:
    bg = kernel.display_id(kernel.run("%%llm --bg -p s1 -o j1\nsay"))
    fg = kernel.send("%%llm -p s2 -o partial\nsay")
    assert wait_for(lambda: any(m["msg_type"] == "update_display_data"
                                and m["parent_header"].get("msg_id") == fg
                                for m in (kernel.pump() or kernel.log)), 10)
    kernel.km.interrupt_kernel()
    msgs = kernel.outputs(fg)
    assert msgs[-1]["msg_type"] == "error" and msgs[-1]["content"]["ename"] == "StreamInterrupted"
    assert wait_for(lambda: kernel.final(bg) is not None, 20)
    final = kernel.final(bg) or ""
    assert "interrupted" not in final and final.count("alpha") == 40
    assert kernel.text("print(j1.status)") == "done\n"


def test_a_hundred_jobs_leave_no_thread_or_connection_behind(
        kernel: LoggingKernel, fault: FaultServer) -> None:
    probe = ("import threading, timmy_magic.notebook as nb\n"
             "s = nb.session()\nprint(all(j.wait(30) for j in s.jobs), len(s.jobs), "
             "threading.active_count())")
    kernel.run("%%llm --bg -p quick -o warm\nwarm up")
    _, _, threads = kernel.text(probe).split()
    base = fault.open_connections
    for n in range(100):  # every fourth one cancelled midway
        kernel.send(f"%%llm --bg -p {'s1' if n % 4 == 0 else 'quick'} -o j{n}\nn {n}")
        if n % 4 == 0:
            kernel.send(f"import time; time.sleep(0.1); j{n}.cancel()")
    done, count, after = kernel.text(probe).split()
    assert done == "True" and count == "101"
    assert after == threads
    assert kernel.text("print(sorted({j.status for j in s.jobs}))") == \
        "['cancelled', 'done']\n"
    assert fault.open_connections <= base + 2  # the keep-alive pool, not one per job
    kernel.run("%unload_ext timmy_magic")
    assert wait_for(lambda: fault.open_connections == 0, 2)  # every connection closed


def test_map_in_the_background_runs_as_a_job_with_progress(kernel: LoggingKernel) -> None:
    msgs = kernel.run("import timmy_magic\n"
                      "job = timmy_magic.map('Say {w}', [{'w': 'a'}, {'w': 'b'}], "
                      "provider='echo', background=True)\njob")
    assert any(m["msg_type"] == "display_data" for m in msgs)  # the progress, in this cell
    out = kernel.text("res = job.result(10)\nprint([r.text for r in res.results], "
                      "timmy_magic.last() is res)")
    assert out == "['Say a', 'Say b'] True\n"


def test_a_kernel_shutdown_cancels_the_jobs_and_exits_cleanly(
        kernel: LoggingKernel, fault: FaultServer) -> None:
    base = fault.open_connections
    ids = [kernel.display_id(kernel.run(f"%%llm --bg -p s{i} -o j{i}\nsay")) for i in (1, 2)]
    assert wait_for(lambda: all(kernel.updates(d) for d in ids), 10)
    assert wait_for(lambda: fault.open_connections >= base + 2, 5)
    proc = kernel.km.provisioner.process  # type: ignore[union-attr]
    kernel.km.request_shutdown()
    assert wait_for(lambda: proc.poll() is not None, 10)  # it exited on its own ...
    assert proc.returncode == 0  # ... cleanly, not killed
    assert wait_for(lambda: fault.open_connections <= base, 2)
