"""``%%llm --tools f,g`` in a real IPython shell, against a loopback server that plays an
OpenAI-compatible model turn by turn: each call asked through stdin (yes / no / always),
``--yes`` and ``%config TimmyMagics.approve_tools``, no stdin to ask on, every call shown
in the cell's output and kept in ``-o VAR``, and one-line errors for bad options."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import WriteProviders, local
from tests.support.scriptserver import ScriptServer
from tests.tools.wire import openai_calls, openai_text

SETUP = '''
RAN = []
def add(a: int, b: int) -> int:
    """Add two integers."""
    RAN.append((a, b))
    return a + b
def mean(xs: list[float]) -> float:
    """The mean of numbers."""
    return sum(xs) / len(xs)
Shape = {"type": "object"}
'''


@pytest.fixture
def server() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


@pytest.fixture
def ip(shell: InteractiveShell, server: ScriptServer, write_providers: WriteProviders,
       monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)
    write_providers([local("g", server.url, models=[
        {"name": "m", "default": True, "capabilities": ["tools"]}])])
    run(shell, "%load_ext timmy_magic")
    run(shell, SETUP)
    return shell


def run(shell: InteractiveShell, source: str) -> str:
    with capture_output() as cap:
        res = shell.run_cell(source)
    assert res.error_in_exec is None, res.error_in_exec
    return cap.stdout + cap.stderr + "".join(v for o in cap.outputs for v in o.data.values())


def answers(monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    """The user's answers on stdin, one line each, read by the real ``input()``; after
    them, end of file."""
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{ln}\n" for ln in lines)))


def prompts(shown: str) -> list[str]:
    return re.findall(r"run [^\n]*?\? \[y\]es / \[n\]o / \[a\]lways \w+: ", shown)


def two_calls(server: ScriptServer, answer: str = "5 and 2.0") -> None:
    server.turns(openai_calls(("c1", "add", '{"a": 2, "b": 3}'),
                              ("c2", "mean", '{"xs": [1, 2, 3]}')), openai_text(answer))


def test_each_call_is_asked_on_stdin_and_shown_with_its_result(ip, server, monkeypatch):
    answers(monkeypatch, "y", "n")
    two_calls(server)
    shown = run(ip, "%%llm --tools add,mean -o r\nadd 2 and 3, and the mean of 1 2 3")
    assert prompts(shown) == ["run add(a=2, b=3)? [y]es / [n]o / [a]lways add: ",
                       "run mean(xs=[1.0, 2.0, 3.0])? [y]es / [n]o / [a]lways mean: "]
    assert ip.user_ns["RAN"] == [(2, 3)]
    r = ip.user_ns["r"]
    assert r.text == "5 and 2.0" and r.rounds == 1
    assert [(c.name, c.approved, c.result, c.error) for c in r.tool_calls] == [
        ("add", True, "5", None), ("mean", False, None, "denied by the user")]
    final = shown[shown.rindex("**Tool calls**"):]  # the last render (the Markdown)
    final = re.sub(r"\(\d+\.\d\ds\)", "(Ns)", final)
    assert final.startswith("**Tool calls**\n\n- add(a=2, b=3) → 5 (Ns)\n"
                            "- mean(xs=\\[1.0, 2.0, 3.0\\]) ✗ denied by the user\n\n"
                            "5 and 2.0\n\n---\n*g · m")
    assert "[tool] add(a=2, b=3) → 5 (Ns)\n[tool] mean(xs=[1.0, 2.0, 3.0]) ✗" in final
    assert "2 tool calls in 1 round" in shown
    sent = server.posts[1][1]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "c2",
                        "content": "error: denied by the user"}


def test_always_approves_that_function_for_the_session(ip, server, monkeypatch):
    answers(monkeypatch, "always", "y")
    two_calls(server)
    assert len(prompts(run(ip, "%%llm --tools add,mean\ngo"))) == 2  # add: always; mean: y
    server.turns(openai_calls(("c1", "add", '{"a": 1, "b": 1}'),
                              ("c2", "mean", '{"xs": [4]}')), openai_text("ok"))
    answers(monkeypatch, "n")
    shown = run(ip, "%%llm --tools add,mean -o r\ngo again")
    assert [p.split("?")[0] for p in prompts(shown)] == ["run mean(xs=[4.0])"]
    assert [c.approved for c in ip.user_ns["r"].tool_calls] == [True, False]


def test_yes_and_the_session_setting_run_every_call_without_asking(ip, server, monkeypatch):
    answers(monkeypatch)
    two_calls(server)
    shown = run(ip, "%%llm --tools add,mean --yes -o r\ngo")
    assert prompts(shown) == [] and all(c.approved for c in ip.user_ns["r"].tool_calls)
    run(ip, "%config TimmyMagics.approve_tools = 'always'")
    two_calls(server)
    shown = run(ip, "%%llm --tools add,mean -o r\ngo")
    assert prompts(shown) == [] and ip.user_ns["RAN"] == [(2, 3), (2, 3)]


def test_without_stdin_a_call_is_denied_and_the_cell_says_how_to_approve(ip, server,
                                                                        monkeypatch):
    answers(monkeypatch)  # EOF at once
    two_calls(server, "could not")
    shown = run(ip, "%%llm --tools add,mean -o r\ngo")
    assert "no stdin to ask on: add(a=2, b=3) denied (approve with --yes" in shown
    assert ip.user_ns["RAN"] == [] and ip.user_ns["r"].text == "could not"


def test_the_round_limit_is_one_clear_line(ip, server, monkeypatch):
    answers(monkeypatch)
    server.script(openai_calls(("c1", "add", '{"a": 1, "b": 1}')))
    shown = run(ip, "%%llm --tools add --yes --max-tool-rounds 2 -o r\nloop")
    assert server.chats == 3 and ip.user_ns["RAN"] == [(1, 1), (1, 1)]
    assert "stopped after 2 tool rounds (max\\_tool\\_rounds=2)" in shown


@pytest.mark.parametrize("line,message", [
    ("--tools nope", "--tools nope: no function 'nope' in the kernel"),
    ("--tools RAN", "--tools RAN: a tool is a function or a method, not list"),
    ("--yes", "--yes approves tool calls: it needs --tools f,g"),
    ("--tools add --max-tool-rounds 0", "--max-tool-rounds 0: must be at least 1"),
    ("--tools add --schema Shape", "--tools and --schema do not go together"),
    ("--tools add -p g,g", "--tools does not apply side by side"),
    ("--tools add --bg", "--tools runs in the foreground"),
])
def test_bad_options_are_one_line_errors(ip, server, line, message):
    with capture_output() as cap:
        res = ip.run_cell(f"%%llm {line}\ngo")
    assert res.error_in_exec is not None and message in str(res.error_in_exec)
    assert "Traceback" not in cap.stdout + cap.stderr
    assert server.chats == 0


def test_no_provider_that_can_call_tools_is_one_block_with_the_fix(
        shell, server, write_providers, monkeypatch):
    write_providers([local("g", server.url, models=[{"name": "m", "default": True}])])
    run(shell, "%load_ext timmy_magic")
    run(shell, SETUP)
    shown = run(shell, "%%llm --tools add\ngo")
    assert "g skipped (no tools: model m lacks capabilities: [tools])" in shown
    assert "Add `capabilities: [tools]` to a model that can" in shown
    assert server.chats == 0


def test_in_a_terminal_each_call_is_a_line_before_the_answer(ip, server, monkeypatch):
    answers(monkeypatch)
    run(ip, "%config TimmyMagics.display_mode = 'terminal'")
    two_calls(server)
    shown = run(ip, "%%llm --tools add,mean --yes\ngo")
    assert ("[tool] add(a=2, b=3) → 5 (Ns)\n"
            "[tool] mean(xs=[1.0, 2.0, 3.0]) → 2.0 (Ns)\n5 and 2.0") in re.sub(
                r"\(\d+\.\d\ds\)", "(Ns)", shown)
