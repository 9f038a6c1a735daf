"""Managed local servers with a real llama-server: start on first need, adopt one already
running, idle stop, a crash while running, and no process left behind (checked by PID)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.servers import free_port, llama_server_binary
from timmy_magic import ChatRequest, Router
from timmy_magic.config import parse_config
from timmy_magic.model.chat import Status
from timmy_magic.servers.embedded import NotInstalled, resolve_command

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def launch_yaml(gguf, port: int, idle: str = "", name: str = "gemma", prio: int = 1) -> str:
    return textwrap.dedent(f"""\
      - name: {name}
        type: llama_cpp
        priority: {prio}
        base_url: http://127.0.0.1:{port}
        launch:
          command: ["{llama_server_binary()}", -m, "{gguf}", --host, "{{host}}",
                    --port, "{{port}}", --no-jinja, --chat-template, gemma, -c, "1024", -t, "2"]
          ready_timeout: 60
          {idle}
    """)


def make(providers: str) -> Router:
    text = "cascade: {health_timeout_seconds: 1, max_retries_per_provider: 0}\nproviders:\n"
    return Router(parse_config(text + textwrap.indent(providers, "  "), source="l.yaml", env={}))


def test_placeholders():
    assert resolve_command(["x", "--port", "{port}", "{host}:{port}"], "http://127.0.0.1:81") \
        == ["x", "--port", "81", "127.0.0.1:81"]
    with pytest.raises(KeyError, match="unknown placeholder {nope}"):
        resolve_command(["{nope}"], "http://h:1")
    assert resolve_command(["{llama_server}"], "http://h:1")[0].endswith("llama-server")


def test_not_installed_is_a_state_with_a_hint_not_an_error(monkeypatch):
    import timmy_magic.servers.embedded as local

    def missing() -> local.LlamaRuntime:  # neither a compiled llama-server nor xllamacpp
        raise NotInstalled("llama.cpp's server (xllamacpp, or a compiled llama-server)")

    monkeypatch.setattr(local, "llama_runtime", missing)
    yaml = "- {name: emb, type: llama_cpp, base_url: 'http://127.0.0.1:1', launch: " \
           "{command: ['{llama_server}']}}\n"
    with make(yaml) as r:
        rep = r.health()["emb"]
        assert rep.state == "not_installed" and "timmy-magic[local]" in rep.hint
        plan = r.plan()
    assert plan.order == () and plan.skipped[0].reason == "not_installed"


def test_starts_on_first_need_then_idle_stop_and_no_orphan(gemma_gguf):
    port = free_port()
    with make(launch_yaml(gemma_gguf, port, "idle_timeout: 1.5")) as r:
        assert r.health()["gemma"].state == "stopped"
        events = list(r.stream("Hello", max_tokens=4))
        statuses = [e.message for e in events if isinstance(e, Status)]
        assert any("starting gemma" in m for m in statuses)
        assert any("ready in" in m for m in statuses)
        res = events[-1].result
        assert res.ok and res.provider == "gemma"
        # the first answer's TTFT waited for the start, and its notes say so
        assert any(n.startswith("TTFT includes starting gemma (") for n in res.notes)
        pid = r.health()["gemma"].detail["launch"][0]["pid"]
        assert pid and alive(pid)
        # a second request reuses the running server (and waited for no start)
        again = r.complete("again", max_tokens=2)
        assert not any("TTFT includes" in n for n in again.notes)
        assert r.health()["gemma"].detail["launch"][0]["pid"] == pid
        r.start_health_loop(interval=0.5)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(pid), "idle server was stopped"
        # the reaper settles the state right after the process is gone (on the loop)
        while r.health()["gemma"].state != "stopped" and time.monotonic() < deadline + 5:
            time.sleep(0.05)
        assert r.health()["gemma"].state == "stopped"
        # and it starts again on the next need
        assert r.complete("back", max_tokens=2).ok
        pid2 = r.health()["gemma"].detail["launch"][0]["pid"]
        assert pid2 != pid and alive(pid2)
    assert not alive(pid2), "close() stops what it started"


def test_adopts_a_server_already_listening_and_never_stops_it(llama_server, gemma_gguf):
    port = int(llama_server.base_url.rsplit(":", 1)[1])
    with make(launch_yaml(gemma_gguf, port)) as r:
        res = r.complete("Hi", max_tokens=2)
        launch = r.health()["gemma"].detail["launch"][0]
        assert res.ok and launch["state"] == "adopted" and launch["pid"] is None
        assert r.stop_server("gemma") is False
    assert llama_server.is_running(), "an adopted server is left running"


def test_crash_while_running_turns_red_and_fails_over(gemma_gguf, vllm_mlx_server):
    port = free_port()
    yaml = launch_yaml(gemma_gguf, port) + (
        f"- {{name: backup, type: vllm_mlx, priority: 2, base_url: '{vllm_mlx_server.base_url}'}}\n")
    with make(yaml) as r:
        r.start_server("gemma")
        pid = r.health()["gemma"].detail["launch"][0]["pid"]
        assert r.complete("x", max_tokens=2).provider == "gemma"
        os.kill(pid, 9)
        time.sleep(0.3)
        rep = r.check_health()["gemma"]
        assert rep.state == "down" and "exited unexpectedly (code -9)" in rep.last_error
        # the cascade fails over; a request pinned to it restarts it
        assert r.complete("y", max_tokens=2).provider == "backup"
        res = r.complete(ChatRequest.of("z", provider="gemma", max_tokens=2))
        assert res.ok and res.provider == "gemma"
        assert r.health()["gemma"].detail["launch"][0]["pid"] != pid
        assert r.health()["gemma"].state == "healthy"


def test_kernel_exit_leaves_no_process(gemma_gguf, tmp_path):
    """A separate Python process (standing in for a kernel) starts a server through the
    router and exits without closing anything: atexit stops it. Then the same with SIGKILL
    of that process: the server gets SIGTERM from PR_SET_PDEATHSIG."""
    cfg = tmp_path / "p.yaml"
    cfg.write_text("providers:\n" + textwrap.indent(launch_yaml(gemma_gguf, free_port()), "  "))
    script = textwrap.dedent(f"""
        import sys, time
        from timmy_magic import ChatRequest, Router
        r = Router.from_config({str(cfg)!r})
        r.start_server("gemma")
        print(r.health()["gemma"].detail["launch"][0]["pid"], flush=True)
        if sys.argv[1] == "hang":
            time.sleep(60)
    """)
    for mode in ("exit", "hang"):
        proc = subprocess.Popen([sys.executable, "-c", script, mode], stdout=subprocess.PIPE,
                                text=True)
        pid = int(proc.stdout.readline())
        assert alive(pid)
        if mode == "hang":
            proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid), f"server left running after kernel {mode}"


def test_manual_stop_keeps_it_out_of_the_cascade_until_started(gemma_gguf, vllm_mlx_server):
    yaml = launch_yaml(gemma_gguf, free_port()) + (
        f"- {{name: backup, type: vllm_mlx, priority: 2, base_url: '{vllm_mlx_server.base_url}'}}\n")
    with make(yaml) as r:
        r.start_server("gemma")
        pid = r.health()["gemma"].detail["launch"][0]["pid"]
        assert r.stop_server("gemma") is True and not alive(pid)
        rep = r.health()["gemma"]
        assert rep.state == "stopped" and "%llm start gemma" in rep.hint
        res = r.complete("x", max_tokens=2)
        assert res.provider == "backup"
        assert [(s.provider, s.reason) for s in res.trace.skipped] == [("gemma", "stopped")]
        r.start_server("gemma")
        assert r.complete("y", max_tokens=2).provider == "gemma"


def test_bench_without_p_starts_a_managed_server_instead_of_dead_ending(gemma_gguf):
    """Issue 17: a newcomer whose only usable provider is a managed one not started yet;
    `%llm bench` without -p starts it (a note says so) and benchmarks it."""
    from timmy_magic.bench import run

    port = free_port()
    with make(launch_yaml(gemma_gguf, port)) as r:
        assert r.health()["gemma"].state == "stopped"
        res = run(r, concurrency=(1,), n=1, max_tokens=4, warmup=0, progress="none")
        assert [(x["provider"], x["completed"]) for x in res.records] == [("gemma", 1)]
        assert any(n.startswith("started gemma for the benchmark") for n in res.notes), \
            res.notes
        pid = r.health()["gemma"].detail["launch"][0]["pid"]
        assert pid and alive(pid)
    assert not alive(pid), "close() stops what it started"


LINGERING_SERVER = textwrap.dedent("""\
    import http.server, signal, sys, time
    def term(*_):  # a server that takes a while to go, as a real one unloading a model
        time.sleep(1.0)
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def test_a_request_during_an_idle_stop_waits_for_it_then_starts_a_new_server(tmp_path):
    """The idle reaper stops a server (it takes a second to go) and a request needs it at
    that moment: the start waits for the stop (the launcher's one lock), then starts a new
    process. Before, the stop's tail cleared the *new* process ("exited with code None
    during start-up": CI saw it)."""
    import asyncio

    import httpx

    from timmy_magic.config import LaunchConfig
    from timmy_magic.servers.launch import Launcher

    script = tmp_path / "linger.py"
    script.write_text(LINGERING_SERVER)
    port = free_port()
    lc = Launcher("p", f"http://127.0.0.1:{port}",
                  LaunchConfig(command=[sys.executable, str(script), str(port)],
                               ready_timeout=20))

    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient(timeout=0.5) as c:
                return (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def scenario() -> tuple[int | None, int | None, bool]:
        await lc.ensure(healthy)
        first = lc.pid
        stopping = asyncio.create_task(lc.astop())
        await asyncio.sleep(0.1)  # the stop holds the lock, the old server lingers
        await lc.ensure(healthy)  # waits for it, then starts anew
        stopped = await stopping
        return first, lc.pid, stopped

    try:
        first, second, stopped = asyncio.run(scenario())
        assert stopped and first is not None and second is not None and second != first
        assert lc.state == "running" and lc.running() and not alive(first)
        # and an idle stop that finds the server in use again does nothing
        lc.last_used = time.monotonic()
        assert asyncio.run(lc.astop(only_if=lambda: lc.idle_for() > 60)) is False
        assert lc.running()
    finally:
        lc.stop()
    assert not alive(second)


def test_a_launch_command_not_on_path_is_not_installed_with_its_name():
    """A newcomer's config names vllm-mlx, which is not installed: the provider reads
    'not installed' (grey) naming the program, and a request pinned to it says the same,
    instead of 'cannot start vllm-mlx: No such file or directory' and a red 'down'."""
    yaml = ("- {name: vm, type: vllm_mlx, base_url: 'http://127.0.0.1:9', launch: "
            "{command: [no-such-server-xyz, serve, --port, '{port}']}}\n")
    with make(yaml) as r:
        rep = r.health()["vm"]
        assert rep.state == "not_installed"
        assert "no-such-server-xyz is not installed here (not on PATH)" in rep.hint
        with pytest.raises(Exception) as info:
            r.start_server("vm")
        assert "no-such-server-xyz is not installed here" in str(info.value)


def test_a_server_already_answering_is_adopted_even_if_its_program_is_not_installed_here(
        tmp_path):
    """The launch command is not on PATH (vllm-mlx installed in its own venv), but a server
    already answers at the URL: it is adopted and healthy, not 'not installed'."""
    script = tmp_path / "linger.py"
    script.write_text(LINGERING_SERVER)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port)])
    try:
        yaml = (f"- {{name: vm, type: llama_cpp, base_url: 'http://127.0.0.1:{port}', "
                f"launch: {{command: [no-such-server-xyz, --port, '{{port}}']}}}}\n")
        with make(yaml) as r:
            deadline = time.monotonic() + 10
            while r.check_health()["vm"].state != "healthy" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert r.health()["vm"].state == "healthy"
            assert any("adopted" in m for m in r.start_server("vm")) or \
                r.health()["vm"].detail["launch"][0]["state"] == "adopted"
    finally:
        proc.terminate()
        proc.wait(10)


PORT_HOLDER = textwrap.dedent("""\
    import socket, sys, time
    s = socket.socket()
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))  # a listener that is no server: no health, never accepts
""")


def _hold_port(tmp_path, port: int, seconds: float) -> subprocess.Popen[str]:
    script = tmp_path / "hold.py"
    script.write_text(PORT_HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(port), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _start(tmp_path, port: int, ready_timeout: float) -> tuple[object, list[str]]:
    import asyncio

    import httpx

    from timmy_magic.config import LaunchConfig
    from timmy_magic.servers.launch import Launcher

    script = tmp_path / "linger.py"
    script.write_text(LINGERING_SERVER)
    lc = Launcher("p", f"http://127.0.0.1:{port}",
                  LaunchConfig(command=[sys.executable, str(script), str(port)],
                               ready_timeout=ready_timeout))
    notes: list[str] = []

    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient(timeout=0.3) as c:
                return (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        asyncio.run(lc.ensure(healthy, notes.append))
    except Exception as exc:  # returned for the test to look at
        return exc, notes
    return lc, notes


def test_a_start_waits_for_its_port_to_be_released_instead_of_crashing(tmp_path):
    """A server still going away (another kernel's, or ours from a stop) holds the port for
    a moment: the start waits for it rather than failing to bind and reading as a crash."""
    port = free_port()
    holder = _hold_port(tmp_path, port, 1.5)
    try:
        lc, notes = _start(tmp_path, port, ready_timeout=20)
        from timmy_magic.servers.launch import Launcher
        assert isinstance(lc, Launcher), lc
        try:
            assert lc.state == "running" and lc.running()
            assert any(f"port {port} is still in use" in n for n in notes), notes
            assert holder.poll() is not None  # it started only once the holder had gone
        finally:
            lc.stop()
    finally:
        holder.kill()
        holder.wait()


def test_a_port_held_by_something_else_fails_the_start_with_the_port_named(tmp_path):
    from timmy_magic.servers.launch import LaunchError

    port = free_port()
    holder = _hold_port(tmp_path, port, 60)
    try:
        t0 = time.monotonic()
        exc, _notes = _start(tmp_path, port, ready_timeout=2)
        assert isinstance(exc, LaunchError), exc
        assert f"port {port} is in use by something that is not a healthy server" in str(exc)
        assert time.monotonic() - t0 < 10  # bounded by ready_timeout, not a hang
    finally:
        holder.kill()
        holder.wait()
