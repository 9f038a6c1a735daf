"""%%llm and %llm in an in-process IPython shell, against the fault server.

Display output is captured with ``capture_output``: a streamed answer is exactly one
display, then updates of the same display id, the last being the final render.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output

import timmy_magic
from tests.support.faultserver import Blackhole, FaultServer, closed_port
from timmy_magic import notebook as magics
from timmy_magic.notebook.display.css import unwrapped
from timmy_magic.notebook.display.render import Final, answer_markdown
from timmy_magic.notebook.display.tables import state_badge

from .conftest import WriteProviders, local, thread_names, wait_for


def load(ip: InteractiveShell) -> CapturedIO:
    with capture_output() as cap:
        ip.run_line_magic("load_ext", "timmy_magic")
    return cap


def run(ip: InteractiveShell, source: str, **kw: Any) -> tuple[Any, CapturedIO]:
    with capture_output() as cap:
        res = ip.run_cell(source, **kw)
    return res, cap


def chat_bodies(srv: FaultServer, n: int) -> list[dict[str, Any]]:
    return [r.json for r in srv.requests if r.path.endswith("chat/completions")][-n:]


def assert_one_streamed_display(cap: CapturedIO) -> list[dict[str, str]]:
    """One display, then only updates of its id; returns the data of every output."""
    outs = cap.outputs
    assert outs and outs[0].update is False
    display_id = outs[0].transient["display_id"]
    assert all(o.update for o in outs[1:])
    assert {o.transient["display_id"] for o in outs} == {display_id}
    return [o.data for o in outs]


@pytest.fixture
def ok_shell(shell: InteractiveShell, fault: FaultServer,
             write_providers: WriteProviders) -> InteractiveShell:
    write_providers([
        local("alpha", fault.base_url("ok", text="from alpha", delay=0.01)),
        local("beta", fault.base_url("ok", text="from beta"), priority=2),
        local("broken", fault.base_url("status", code=500), priority=3),
    ])
    load(shell)
    return shell


# ------------------------------------------------------------------ load / unload


def test_load_never_waits_for_health_checks_and_prints_one_line(
        shell: InteractiveShell, write_providers: WriteProviders) -> None:
    """A silent backend holds its health check for the full 5 s health timeout; loading
    returns long before (how fast it is, is measured in benchmarks/health_fanout.py)."""
    with Blackhole(cap=10) as hole:
        path = write_providers([local("refused", f"http://127.0.0.1:{closed_port()}"),
                                local("silent", hole.url, priority=2),
                                local("off", hole.url, priority=3, enabled=False)],
                               cascade={"health_timeout_seconds": 5})
        started = time.monotonic()
        cap = load(shell)
        elapsed = time.monotonic() - started
        assert elapsed < 2.5, "load waited for the health pass"
        assert cap.stdout == (f"timmy-magic: 3 providers (2 enabled) from {path} "
                              "(health checks running in background)\n")
        assert "llm" in shell.magics_manager.magics["cell"]
        assert "llm" in shell.magics_manager.magics["line"]


def test_the_user_config_is_named_as_the_user_knows_it(
        shell: InteractiveShell, write_providers: WriteProviders, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A providers.yaml under the home directory reads ``~/...`` (the user config file as
    the docs name it), in the load line and in ``%llm providers``; others as they are."""
    home = tmp_path / "home"
    user_file = home / ".config" / "timmy-magic" / "providers.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_bytes(write_providers([local("a", "http://127.0.0.1:9")]).read_bytes())
    monkeypatch.delenv("TIMMY_PROVIDERS")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.chdir(home)
    assert load(shell).stdout.startswith(
        "timmy-magic: 1 provider (1 enabled) from ~/.config/timmy-magic/providers.yaml (")
    _, cap = run(shell, "%llm providers")
    shown = cap.outputs[0].data
    assert shown["text/plain"].startswith("1 provider from ~/.config/timmy-magic/providers.yaml")
    assert str(home) not in shown["text/markdown"]


def test_bad_providers_yaml_loads_empty_with_one_line_then_reload_fixes_it(
        shell: InteractiveShell, tmp_path: Path, fault: FaultServer,
        write_providers: WriteProviders) -> None:
    path = write_providers([])
    path.write_text("providers:\n  - name: x\n    type: nope\n")
    cap = load(shell)
    lines = cap.stdout.splitlines()
    assert len(lines) == 1 and "Traceback" not in cap.stdout + cap.stderr
    assert f"timmy-magic: {path}: provider 'x': field 'type': unknown type 'nope'" in lines[0]
    assert lines[0].endswith("(loaded with no providers: fix it, then %llm reload)")
    res, cap = run(shell, "%%llm\nhello")
    assert res.error_in_exec is None
    assert "No providers are configured" in cap.outputs[-1].data["text/markdown"]
    write_providers([local("alpha", fault.base_url("ok", text="fixed"))])
    res, cap = run(shell, "%llm reload")
    assert cap.stdout == f"Reloaded 1 provider from {path}.\n"
    run(shell, "%%llm\nhello")
    assert timmy_magic.last().text == "fixed"


def test_reload_with_a_bad_file_keeps_the_previous_config_and_says_why(
        ok_shell: InteractiveShell, write_providers: WriteProviders) -> None:
    path = write_providers([])
    path.write_text("providers: [oops\n")
    res, cap = run(ok_shell, "%llm reload")
    assert res.error_in_exec is None and "Traceback" not in cap.stderr
    md = cap.outputs[0].data["text/markdown"]
    assert "reload failed; the previous config is kept" in md and "YAML syntax error" in md
    assert "Still using 3 providers" in md
    assert magics.get_router().names == ["alpha", "beta", "broken"]


def test_reload_ext_closes_the_previous_router_and_leaks_no_threads(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    write_providers([local("alpha", fault.base_url("ok"))])
    baseline = thread_names()
    load(shell)
    first = magics.get_router()
    for _ in range(3):
        with capture_output():
            shell.run_line_magic("reload_ext", "timmy_magic")
    assert magics.get_router() is not first
    run(shell, "%%llm\nhi")
    assert timmy_magic.last().ok
    assert thread_names().count("timmy-magic-loop") == 1
    assert len(shell.configurables) == len({id(c) for c in shell.configurables})
    assert sum(isinstance(c, magics.TimmyMagics) for c in shell.configurables) == 1
    shell.run_line_magic("unload_ext", "timmy_magic")
    assert wait_for(lambda: thread_names() == baseline), (thread_names(), baseline)
    assert "llm" not in shell.magics_manager.magics["cell"]
    with pytest.raises(RuntimeError, match="not loaded"):
        timmy_magic.last()


def test_loads_through_interactive_shell_app_extensions_in_a_terminal(
        tmp_path: Path, fault: FaultServer, write_providers: WriteProviders) -> None:
    """A real terminal IPython: the extension comes from the config, tokens go to stdout."""
    import subprocess

    write_providers([local("alpha", fault.base_url("ok", text="one two three four",
                                                    delay=0.02))])
    cell = "%%llm\nsay four words"
    proc = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "--colors=nocolor",
         "--InteractiveShellApp.extensions=['timmy_magic']", "--TimmyMagics.show_trace=True",
         "-c", cell],
        capture_output=True, text=True, timeout=60, check=False,
        env={**__import__("os").environ, "IPYTHONDIR": str(tmp_path / "ipy")})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "timmy-magic: 1 provider (1 enabled)" in out
    assert "one two three four\n— alpha · fault-model · TTFT" in out
    assert "route:\n  considered: alpha" in out
    assert "Traceback" not in out + proc.stderr


# ------------------------------------------------------------------ streaming display


def test_stream_is_one_display_updated_in_place_ending_with_the_final_render(
        ok_shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders
) -> None:
    write_providers([local("alpha", fault.base_url("ok", tokens=6, delay=0.04))])
    run(ok_shell, "%llm reload")
    ok_shell.run_line_magic("config", "TimmyMagics.updates_per_second = 1000")
    res, cap = run(ok_shell, "%%llm\nhello")
    assert res.error_in_exec is None
    data = assert_one_streamed_display(cap)
    final = Final(timmy_magic.last()).bundle()
    assert data[0] == {"text/markdown": "*waiting for an answer…*",
                       "text/plain": "waiting for an answer…"}
    live = data[1:-1]
    # "asking alpha…" while no token has come (under load the kernel thread may drain
    # the Trying and the first tokens at once: then the text is the first update)
    if live and live[0]["text/plain"] == "asking alpha…":
        live = live[1:]
    texts = [d["text/plain"] for d in live]
    # each update is the text so far, growing a token or more at a time (tokens the
    # kernel thread drains within one throttle interval, as under load, are one update)
    prefixes = ["tok0 tok1 tok2 tok3 tok4 tok5 "[: 5 * n] for n in range(1, 7)]
    assert texts and all(t in prefixes for t in texts), texts
    assert texts == sorted(set(texts), key=len)
    assert all(d["text/markdown"].endswith("▌") for d in live)
    assert data[-1] == final
    assert unwrapped(data[-1]["text/markdown"]).startswith(
        "tok0 tok1 tok2 tok3 tok4 tok5 \n\n---\n*alpha · fault-model · TTFT")


def test_updates_are_throttled_and_deltas_coalesced(
        ok_shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders
) -> None:
    write_providers([local("alpha", fault.base_url("ok", tokens=60, delay=0.01))])
    run(ok_shell, "%llm reload")
    ok_shell.run_line_magic("config", "TimmyMagics.updates_per_second = 5")
    started = time.monotonic()
    _, cap = run(ok_shell, "%%llm\nhello")
    elapsed = time.monotonic() - started
    data = assert_one_streamed_display(cap)
    live = data[1:-1]
    assert len(live) <= elapsed * 5 + 2, (len(live), elapsed)
    assert len(live) < 60 / 3
    assert data[-1]["text/plain"].startswith("tok0 tok1 ") and "tok59" in data[-1]["text/plain"]


@pytest.mark.parametrize("setup", ["%config TimmyMagics.updates_per_second = 0", ""])
def test_zero_rate_or_no_stream_is_one_placeholder_and_one_final_update(
        ok_shell: InteractiveShell, setup: str) -> None:
    if setup:
        ok_shell.run_line_magic("config", setup.split(" ", 1)[1])
    _, cap = run(ok_shell, "%%llm" + ("" if setup else " --no-stream") + "\nhello")
    data = assert_one_streamed_display(cap)
    assert len(data) == 2 and data[0]["text/plain"] == "waiting for an answer…"
    assert data[1] == Final(timmy_magic.last()).bundle()


def test_terminal_fallback_prints_tokens_as_they_arrive(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        monkeypatch: pytest.MonkeyPatch) -> None:
    write_providers([local("alpha", fault.base_url("ok", tokens=5, delay=0.1))])
    load(shell)

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[tuple[float, str]] = []

        def write(self, text: str) -> int:
            self.writes.append((time.monotonic(), text))
            return len(text)

        def flush(self) -> None:
            pass

    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    res = shell.run_cell("%%llm\nhello")
    monkeypatch.undo()
    assert res.error_in_exec is None
    pieces = [t for _, t in rec.writes]
    assert pieces[:5] == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 "]
    assert rec.writes[4][0] - rec.writes[0][0] > 0.3  # printed as they came, not at the end
    assert "".join(pieces[5:]).startswith("\n— alpha · fault-model · TTFT")


def test_display_mode_trait_forces_the_terminal_view(ok_shell: InteractiveShell) -> None:
    ok_shell.run_line_magic("config", "TimmyMagics.display_mode = 'terminal'")
    _, cap = run(ok_shell, "%%llm\nhello")
    assert cap.outputs == [] and cap.stdout.startswith("from alpha\n— alpha")


# ------------------------------------------------------------------ options


def test_cascade_pins_and_default_provider(ok_shell: InteractiveShell) -> None:
    def answered_by(cell: str) -> str | None:
        res, cap = run(ok_shell, cell)
        assert res.error_in_exec is None, cap.stderr
        return timmy_magic.last().provider

    assert answered_by("%%llm\nhi") == "alpha"
    assert answered_by("%%llm -p beta\nhi") == "beta"
    assert answered_by("%%llm --provider beta\nhi") == "beta"
    _, cap = run(ok_shell, "%llm pin beta")
    assert cap.stdout.startswith("Pinned to beta")
    assert answered_by("%%llm\nhi") == "beta"
    _, cap = run(ok_shell, "%llm unpin")
    assert cap.stdout == "Unpinned beta: the cascade chooses again.\n"
    assert answered_by("%%llm\nhi") == "alpha"
    ok_shell.run_line_magic("config", "TimmyMagics.default_provider = 'beta'")
    assert answered_by("%%llm\nhi") == "beta"
    assert answered_by("%%llm -p alpha\nhi") == "alpha"


def test_request_options_reach_the_server(shell: InteractiveShell, fault: FaultServer,
                                          write_providers: WriteProviders) -> None:
    write_providers([local("alpha", fault.base_url("ok"),
                           models=[{"name": "my-model"}, {"name": "other"}])])
    load(shell)
    ok_shell = shell
    res, _ = run(ok_shell, '%%llm -m my-model -s "Be terse." -t 0.2 --max-tokens 7\nQuestion?')
    assert res.error_in_exec is None
    body = chat_bodies(fault, 1)[0]
    assert body["model"] == "my-model" and body["temperature"] == 0.2
    assert body["max_tokens"] == 7
    assert body["messages"] == [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": "Question?"}]
    ok_shell.run_line_magic("config", "TimmyMagics.max_tokens = 11")
    ok_shell.run_line_magic("config", "TimmyMagics.temperature = 0.5")
    ok_shell.run_line_magic("config", "TimmyMagics.default_model = 'other'")
    run(ok_shell, "%%llm\nQ")
    body = chat_bodies(fault, 1)[0]
    assert (body["max_tokens"], body["temperature"], body["model"]) == (11, 0.5, "other")


def test_out_stores_the_result_and_last_returns_it(ok_shell: InteractiveShell) -> None:
    run(ok_shell, "%%llm -o answer\nhi")
    answer = ok_shell.user_ns["answer"]
    assert answer is timmy_magic.last() and answer is magics.last()
    assert (answer.text, answer.provider, answer.model, answer.error) == (
        "from alpha", "alpha", "fault-model", None)
    assert answer.usage.output_tokens == 2 and answer.timings.total_s > 0
    assert answer.trace.answered_by == "alpha" and "alpha · fault-model" in \
        answer_markdown(answer)


def test_last_is_kept_even_when_the_final_display_fails(
        ok_shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Final) -> dict[str, str]:
        raise RuntimeError("front end went away")

    monkeypatch.setattr(Final, "bundle", broken)
    res, _ = run(ok_shell, "%%llm -o kept\nhi")
    assert isinstance(res.error_in_exec, RuntimeError)
    assert timmy_magic.last().text == "from alpha" and ok_shell.user_ns["kept"].ok


@pytest.mark.parametrize("line, message", [
    ("-p nobody", "no provider named 'nobody'; configured: alpha, beta, broken"),
    ("-t hot", "argument -t/--temperature: invalid float value: 'hot'"),
    ("-t -1", "the temperature cannot be negative"),
    ("--max-tokens 0", "--max-tokens 0: must be at least 1"),
    ("-o 1x", "-o 1x: not a valid Python variable name"),
    ("-o class", "not a valid Python variable name"),
    ("-f pdf", "argument -f/--format: invalid choice: 'pdf'"),
    ("--bogus", "unrecognized arguments: --bogus"),
])
def test_bad_options_are_usage_errors_without_traceback(ok_shell: InteractiveShell,
                                                        line: str, message: str) -> None:
    res, cap = run(ok_shell, f"%%llm {line}\nhi")
    assert isinstance(res.error_in_exec, UsageError)
    assert message in cap.stderr and "Traceback" not in cap.stderr + cap.stdout
    assert cap.outputs == []


def test_empty_prompt_is_a_usage_error(ok_shell: InteractiveShell) -> None:
    res, cap = run(ok_shell, "%%llm\n   \n")
    assert isinstance(res.error_in_exec, UsageError) and "no prompt" in cap.stderr


# ------------------------------------------------------------------ formats


def test_format_code_puts_the_code_block_into_a_new_cell(ok_shell: InteractiveShell,
                                                        fault: FaultServer,
                                                        write_providers: WriteProviders
                                                        ) -> None:
    answer = "Here you go:\n```python\nimport math\nprint(math.pi)\n```\nEnjoy."
    write_providers([local("alpha", fault.base_url("ok", text=answer))])
    run(ok_shell, "%llm reload")
    _, cap = run(ok_shell, "%%llm -f code\nprint pi")
    assert ok_shell.rl_next_input == "import math\nprint(math.pi)"
    md = cap.outputs[-1].data["text/markdown"]
    assert unwrapped(md).startswith(answer) and "> code inserted into a new cell below" in md


@pytest.mark.parametrize("text, expect", [
    ('```json\n{"name": "x", "n": [1, 2]}\n```', '```json\n{\n  "name": "x",'),
    ("this is not json", "> the answer is not valid JSON: Expecting value at line 1 column 1"),
])
def test_format_json_pretty_prints_or_says_why_not(
        ok_shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        text: str, expect: str) -> None:
    write_providers([local("alpha", fault.base_url("ok", text=text))])
    run(ok_shell, "%llm reload")
    res, cap = run(ok_shell, "%%llm -f json\ngive json")
    assert res.error_in_exec is None and "Traceback" not in cap.stderr
    assert expect in cap.outputs[-1].data["text/markdown"]


def test_format_html_and_text_and_default_format(ok_shell: InteractiveShell,
                                                 fault: FaultServer,
                                                 write_providers: WriteProviders) -> None:
    write_providers([local("alpha", fault.base_url("ok", text="<b>bold</b>"))])
    run(ok_shell, "%llm reload")
    _, cap = run(ok_shell, "%%llm -f html\nhtml please")
    final = cap.outputs[-1].data
    assert final["text/html"].startswith("<b>bold</b><hr>") and "text/markdown" not in final
    _, cap = run(ok_shell, "%%llm -f text\nplain")
    assert set(cap.outputs[-1].data) == {"text/plain"}
    ok_shell.run_line_magic("config", "TimmyMagics.default_format = 'text'")
    _, cap = run(ok_shell, "%%llm\nplain")
    assert set(cap.outputs[-1].data) == {"text/plain"}
    assert set(cap.outputs[0].data) == {"text/markdown", "text/plain"}  # placeholder


def test_trace_option_shows_the_route(ok_shell: InteractiveShell) -> None:
    _, cap = run(ok_shell, "%%llm --trace\nhi")
    md = cap.outputs[-1].data["text/markdown"]
    assert "<summary>route</summary>" in md and "considered: alpha, beta, broken" in md


# ------------------------------------------------------------------ interpolation


def test_interpolation_replaces_references_and_leaves_code_alone(ok_shell: InteractiveShell,
                                                                 fault: FaultServer) -> None:
    ok_shell.user_ns.update(topic="JSON", data={"k": [1, 2]})
    cell = 'Explain {topic} with {data["k"][1]}: {"a": {"b": 1}} and {{topic}} }'
    res, _ = run(ok_shell, f"%%llm -s 'About {{topic}}'\n{cell}")
    assert res.error_in_exec is None
    msgs = chat_bodies(fault, 1)[0]["messages"]
    assert msgs == [{"role": "system", "content": "About JSON"},
                    {"role": "user",
                     "content": 'Explain JSON with 2: {"a": {"b": 1}} and {topic} }'}]
    run(ok_shell, f"%%llm --no-interpolate\n{cell}")
    assert chat_bodies(fault, 1)[0]["messages"][-1]["content"] == cell


def test_undefined_name_is_a_usage_error_naming_it(ok_shell: InteractiveShell,
                                                   fault: FaultServer) -> None:
    before = len(fault.requests)
    res, cap = run(ok_shell, "%%llm\nTell me about {nowhere}")
    assert isinstance(res.error_in_exec, UsageError)
    assert "{nowhere}: name 'nowhere' is not defined" in cap.stderr
    assert "Traceback" not in cap.stderr and len(fault.requests) == before


# ------------------------------------------------------------------ conversation


def test_chat_memory_with_per_cell_turn_replacement(ok_shell: InteractiveShell,
                                                    fault: FaultServer) -> None:
    def sent(cell: str, **kw: Any) -> list[tuple[str, str]]:
        res, cap = run(ok_shell, cell, **kw)
        assert res.error_in_exec is None, cap.stderr
        return [(m["role"], m["content"]) for m in chat_bodies(fault, 1)[0]["messages"]]

    assert sent("%%llm --chat\nfirst") == [("user", "first")]
    assert sent("%%llm --chat\nsecond") == [("user", "first"), ("assistant", "from alpha"),
                                            ("user", "second")]
    assert sent("%%llm\nstateless") == [("user", "stateless")]
    # re-running the first cell replaces its turn and sees nothing before it
    assert sent("%%llm --chat\nfirst") == [("user", "first")]
    ext = magics.extension()
    assert [t.prompt for t in ext.conversation.turns] == ["first", "second"]
    # with a front-end cell id, an edited cell still replaces its own turn
    assert sent("%%llm --chat\nthird", cell_id="c3")[-1] == ("user", "third")
    assert sent("%%llm --chat\nthird, edited", cell_id="c3")[:4] == [
        ("user", "first"), ("assistant", "from alpha"), ("user", "second"),
        ("assistant", "from alpha")]
    assert [t.prompt for t in ext.conversation.turns] == ["first", "second", "third, edited"]
    _, cap = run(ok_shell, "%llm history")
    assert "3. **you:** third, edited" in cap.outputs[0].data["text/markdown"]
    assert sent("%%llm --new\nfresh") == [("user", "fresh")]
    assert len(ext.conversation) == 1
    _, cap = run(ok_shell, "%llm reset")
    assert cap.stdout == "Conversation cleared (1 turn).\n" and len(ext.conversation) == 0


# ------------------------------------------------------------------ failures


def test_pinned_provider_down_is_one_readable_block(ok_shell: InteractiveShell) -> None:
    res, cap = run(ok_shell, "%%llm -p broken\nhi")
    assert res.error_in_exec is None and "Traceback" not in cap.stdout + cap.stderr
    data = assert_one_streamed_display(cap)
    md = data[-1]["text/markdown"]
    assert unwrapped(md).startswith(
        "**timmy-magic: pinned provider 'broken' did not answer**")
    assert "broken#1 failed: " in md and "HTTP 500" in md
    assert "drop `-p broken` to let the cascade choose" in md
    assert "route:" in data[-1]["text/plain"]


def test_pinned_to_a_server_that_is_not_running_is_one_attempt_naming_its_address(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    port = closed_port()
    write_providers([local("a", fault.base_url("ok"), priority=1),
                     local("b", fault.base_url("ok"), priority=2),
                     local("c", fault.base_url("ok"), priority=3),
                     local("gone", f"http://127.0.0.1:{port}", priority=4)])
    load(shell)
    res, cap = run(shell, "%%llm -p gone\nhi")
    assert res.error_in_exec is None and "Traceback" not in cap.stdout + cap.stderr
    data = assert_one_streamed_display(cap)
    text = data[-1]["text/plain"]
    assert "skipped (pinned to gone): a, b, c" in text  # one line, not one per provider
    assert "pinned elsewhere" not in text
    assert text.count("gone#") == 1  # refused: one attempt, not three
    assert f"Nothing is listening at http://127.0.0.1:{port}: start gone there" in text
    md = data[-1]["text/markdown"]
    assert f"Nothing is listening at `http://127.0.0.1:{port}`: start gone there" in md
    m = magics.get_router().metrics()["gone"]
    assert (m.requests, m.failures) == (1, 1)
    assert magics.get_router().health()["gone"].circuit == "closed"  # not opened by one cell


def test_no_provider_healthy_is_one_readable_block(shell: InteractiveShell,
                                                   fault: FaultServer,
                                                   write_providers: WriteProviders) -> None:
    write_providers([local("down", f"http://127.0.0.1:{closed_port()}"),
                     local("erroring", fault.base_url("status", code=503), priority=2)])
    load(shell)
    res, cap = run(shell, "%%llm\nhi")
    assert res.error_in_exec is None and "Traceback" not in cap.stdout + cap.stderr
    md = cap.outputs[-1].data["text/markdown"]
    assert unwrapped(md).startswith("**timmy-magic: no provider could answer**")
    assert "considered: down, erroring" in md
    assert "Start one of the local servers listed by `%llm providers`" in md


def test_cloud_gate_closed_says_so(shell: InteractiveShell, fault: FaultServer,
                                  write_providers: WriteProviders) -> None:
    write_providers([{"name": "cloud", "type": "openai", "api_key": "sk-test-0123456789",
                      "base_url": fault.base_url("ok") + "/v1",
                      "models": [{"name": "m", "default": True}]}],
                    cloud_gate={"local_only": True})
    load(shell)
    res, cap = run(shell, "%%llm\nhi")
    md = cap.outputs[-1].data["text/markdown"]
    assert res.error_in_exec is None
    assert "cloud skipped (cloud gate" in md
    assert "The cloud gate is closed (local-only mode)" in md and "%llm local-only off" in md
    assert "sk-test-0123456789" not in md
    _, cap = run(shell, "%llm local-only off")
    assert cap.stdout == "local-only: off; cloud gate open.\n"
    _, cap = run(shell, "%llm local-only on")
    assert cap.stdout == "local-only: on; cloud gate closed (local-only mode).\n"


def test_stream_broken_after_first_token_keeps_the_partial_answer(
        ok_shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders
) -> None:
    write_providers([local("alpha", fault.base_url("drop_mid_stream", tokens=3))])
    run(ok_shell, "%llm reload")
    res, cap = run(ok_shell, "%%llm\nhi")
    assert res.error_in_exec is None and "Traceback" not in cap.stderr
    last = timmy_magic.last()
    assert last.text == "tok0 tok1 tok2 " and last.error
    assert "**Stream interrupted:**" in cap.outputs[-1].data["text/markdown"]


# ------------------------------------------------------------------ line commands


def test_status_table_after_a_fresh_check(ok_shell: InteractiveShell) -> None:
    res, cap = run(ok_shell, "%llm status")
    assert res.error_in_exec is None
    plain = cap.outputs[0].data["text/plain"].splitlines()
    assert plain[0] == "cloud gate: open · spent today $0.00 · pinned: none (cascade)"
    rows = {ln.split()[0]: ln.split()[1] for ln in plain[2:]}
    assert rows == {"alpha": "healthy", "beta": "healthy", "broken": "healthy"}
    assert f"| alpha | {state_badge('healthy')} |" in cap.outputs[0].data["text/markdown"]
    res, cap = run(ok_shell, "%llm status --cached")
    assert res.error_in_exec is None and len(cap.outputs) == 1
    res, cap = run(ok_shell, "%llm status --bogus")
    assert isinstance(res.error_in_exec, UsageError)


def test_providers_table(ok_shell: InteractiveShell, fault: FaultServer) -> None:
    run(ok_shell, "%llm pin beta")
    _, cap = run(ok_shell, "%llm providers")
    plain = cap.outputs[0].data["text/plain"].splitlines()
    assert plain[0].startswith("3 providers from ") and plain[0].endswith("providers.yaml")
    assert plain[1].split() == ["provider", "type", "priority", "enabled", "where", "url",
                                "default", "model"]
    assert plain[3].split()[:6] == ["beta", "(pinned)", "llama_cpp", "2", "yes", "local"]


def test_help_unknown_and_future_commands(ok_shell: InteractiveShell) -> None:
    _, cap = run(ok_shell, "%llm help")
    assert "%llm status" in cap.stdout and "--no-interpolate" in cap.stdout
    _, cap2 = run(ok_shell, "%llm")
    assert cap2.stdout == cap.stdout
    res, cap = run(ok_shell, "%llm ask something")
    assert isinstance(res.error_in_exec, UsageError)
    assert "unknown command 'ask'" in cap.stderr and "start a cell with %%llm" in cap.stderr
    res, cap = run(ok_shell, "%llm pin")
    assert isinstance(res.error_in_exec, UsageError) and "usage: %llm pin NAME" in cap.stderr
    res, cap = run(ok_shell, "%llm pin ghost")
    assert "no provider named 'ghost'" in cap.stderr
    res, cap = run(ok_shell, "%llm start alpha")
    assert isinstance(res.error_in_exec, UsageError) and "has no `launch:` section" in cap.stderr
    res, cap = run(ok_shell, "%llm stop alpha")
    assert res.error_in_exec is None
    assert cap.stdout == "alpha: nothing to stop (no server started from here).\n"
    res, cap = run(ok_shell, "%llm stop")
    assert "usage: %llm stop NAME" in cap.stderr


@pytest.mark.parametrize("line, says", [
    ("%llm status --bogus", "%llm status: unrecognized arguments: --bogus (usage: %llm "  # noqa: ISC004
                            "status [--cached])"),
    ("%llm pin alpha beta", "%llm pin: unrecognized arguments: beta (usage: %llm pin NAME)"),
    ("%llm local-only maybe", "invalid choice: 'maybe'"),
    ("%llm reload a b", "%llm reload: unrecognized arguments: b"),
    ("%llm trust --lst", "%llm trust: unrecognized arguments: --lst"),
    ("%llm 'unclosed", "%llm: cannot parse"),
])
def test_every_command_has_a_parser_whose_errors_name_it(ok_shell: InteractiveShell,
                                                         line: str, says: str) -> None:
    res, cap = run(ok_shell, line)
    assert isinstance(res.error_in_exec, UsageError), (line, res.error_in_exec)
    assert says in cap.stderr and "Traceback" not in cap.stderr, cap.stderr
    assert cap.stderr.count("\n") <= 1  # one line


def test_help_lists_every_command_aligned_and_each_has_its_own_help(
        ok_shell: InteractiveShell) -> None:
    from timmy_magic.notebook import extension

    _, cap = run(ok_shell, "%llm help")
    rows = [ln for ln in cap.stdout.splitlines() if ln.startswith("  %")]
    names = extension().commands.commands()
    assert {r.split()[1] for r in rows[1:]} == set(names) and rows[0].startswith("  %%llm")
    gaps = {len(r) - len(r[2:].split("  ", 1)[1].lstrip()) for r in rows}
    assert len(gaps) == 1, rows  # the descriptions start in one column
    for name in ("status", "pin", "trust", "start"):
        res, cap = run(ok_shell, f"%llm {name} --help")
        assert res.error_in_exec is None and cap.stdout.startswith(f"usage: %llm {name}")


def test_config_lists_the_traits(ok_shell: InteractiveShell) -> None:
    _, cap = run(ok_shell, "%config TimmyMagics")
    for trait in ("default_provider", "default_model", "default_format", "updates_per_second",
                  "max_tokens", "temperature", "show_trace"):
        assert trait in cap.stdout


def test_panel_is_displayed_and_closed_on_unload(ok_shell: InteractiveShell) -> None:
    _, cap = run(ok_shell, "%llm panel")
    assert "application/vnd.jupyter.widget-view+json" in cap.outputs[0].data
    widget = magics.extension()._panels[0]
    assert widget is not None and magics.panel() is not widget
    shell_widgets = list(magics.extension()._panels)
    ok_shell.run_line_magic("unload_ext", "timmy_magic")
    assert all(w.closed for w in shell_widgets)


def test_bench_dispatch_and_missing_bench(ok_shell: InteractiveShell,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, str]] = []
    fake = ModuleType("timmy_magic.notebook.magics.bench")
    fake.bench_line = lambda ext, line: calls.append((ext, line)) or "bench table"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timmy_magic.bench", ModuleType("timmy_magic.bench"))
    monkeypatch.setitem(sys.modules, "timmy_magic.notebook.magics.bench", fake)
    _, cap = run(ok_shell, "%llm bench -n 3 alpha")
    assert calls == [(magics.session(), "-n 3 alpha")]
    assert cap.outputs[0].data["text/plain"] == "'bench table'"
    monkeypatch.setitem(sys.modules, "timmy_magic.notebook.magics.bench", None)
    res, cap = run(ok_shell, "%llm bench")
    assert res.error_in_exec is None and cap.stdout.startswith("bench not available")


# ------------------------------------------------------------------ interrupt


@pytest.mark.parametrize("scenario, params, kept", [
    ("hang_mid_stream", {"tokens": 2}, "tok0 tok1 "),
    ("drip", {"tokens": 40, "interval": 0.15}, "tok0 tok1 "),
])
def test_interrupt_keeps_the_partial_answer_closes_the_stream_and_router_recovers(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        scenario: str, params: dict[str, Any], kept: str) -> None:
    import _thread

    write_providers([local("slow", fault.base_url(scenario, **params)),
                     local("fine", fault.base_url("ok", text="still here"), priority=2)])
    load(shell)
    ext = magics.extension()
    seen: dict[str, int] = {}

    def interrupt_after_two_tokens() -> None:
        if wait_for(lambda: ext.active is not None and len(ext.active.parts) >= 2, 10):
            seen["connections"] = fault.open_connections
            _thread.interrupt_main()

    threading.Thread(target=interrupt_after_two_tokens, daemon=True).start()
    started = time.monotonic()
    res, cap = run(shell, "%%llm -p slow -o partial\nwrite a lot")
    assert time.monotonic() - started < 5
    assert isinstance(res.error_in_exec, magics.StreamInterrupted)
    assert "StreamInterrupted: interrupted by the user" in cap.stdout + cap.stderr
    assert "Traceback" not in cap.stdout + cap.stderr
    last = timmy_magic.last()
    assert last is shell.user_ns["partial"]
    assert last.text.startswith(kept) and last.error == "interrupted by the user"
    assert last.provider == "slow" and last.trace.attempts[0].outcome == "broken"
    data = assert_one_streamed_display(cap)
    assert unwrapped(data[-1]["text/markdown"]).startswith(last.text)
    # reported once, by the cell's error line; the footer marks the answer as partial
    assert "· interrupted*" in data[-1]["text/markdown"]
    assert "Stream interrupted" not in data[-1]["text/markdown"]
    # the server saw the connection go away; the router is healthy and answers again
    assert wait_for(lambda: fault.open_connections < seen["connections"], 3), seen
    st = magics.get_router().provider("slow")
    assert st.endpoints[0].outstanding == 0 and st.endpoints[0].breaker.state(
        time.monotonic()) == "closed"
    assert magics.get_router().metrics()["slow"].cancelled == 1
    res, _ = run(shell, "%%llm -p fine\nagain")
    assert res.error_in_exec is None and timmy_magic.last().text == "still here"


def test_views_show_progress_events_before_the_first_token(
        shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    import itertools

    from timmy_magic.model.chat import Delta, Done, RouteTrace, Status, Timings, Trying, Usage
    from timmy_magic.model.chat import Result as R
    from timmy_magic.notebook.display.render import (
        AnswerCollector,
        NotebookView,
        TerminalView,
        consume,
    )

    done = R("hi", "g", "m", Usage(1, 1), Timings(0.1, 0.2, 5.0), RouteTrace())
    events = [Trying("g", "http://x", 1), Status("g", "starting the server…"), Delta("hi"),
              Done(done)]
    with capture_output() as cap:
        view = NotebookView(per_second=1000)
        view.start(0.0)
        clock = itertools.count(1.0).__next__
        assert consume(iter(events), view, AnswerCollector(0.0), clock) is done
    assert [o.data["text/plain"] for o in cap.outputs] == [
        "waiting for an answer…", "asking g…", "g: starting the server…", "hi"]
    from timmy_magic.notebook.display.render import Final

    term = TerminalView()
    consume(iter(events), term, AnswerCollector(0.0), itertools.count(1.0).__next__)
    term.finish(Final(done))  # (a tail that could start a configured key waits for it)
    out = capsys.readouterr()
    assert out.err == "[g: starting the server…]\n" and out.out.startswith("hi\n")


def test_no_stream_in_a_terminal_prints_the_answer_once_complete(
        ok_shell: InteractiveShell) -> None:
    ok_shell.run_line_magic("config", "TimmyMagics.display_mode = 'terminal'")
    _, cap = run(ok_shell, "%%llm --no-stream\nhello")
    assert cap.outputs == [] and cap.stdout.startswith("from alpha\n— alpha · fault-model")
