"""A completion-mode model from a cell (issue 15): a pinned ``%%llm`` cell goes to
``/v1/completions`` with the prompt as written, renders with the usual footer, and the
mode is part of the answer cache's key (the same prompt asked as chat is another answer).
Against a loopback server that records what it was asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import WriteProviders, local
from tests.support.scriptserver import ScriptServer, sse

DONE = b"data: [DONE]\n\n"
COMPLETION = [sse({"model": "m", "choices": [{"text": " red, blue and yellow.",
                                              "finish_reason": "stop"}]}),
              sse({"choices": [], "usage": {"prompt_tokens": 6, "completion_tokens": 7}}),
              DONE]
CHAT = [sse({"model": "m", "choices": [{"delta": {"content": "blue"},
                                        "finish_reason": "stop"}]}), DONE]


def run(shell: InteractiveShell, source: str) -> str:
    with capture_output() as cap:
        res = shell.run_cell(source)
    assert res.error_in_exec is None, res.error_in_exec
    return cap.stdout + cap.stderr + "".join(repr(o.data) for o in cap.outputs)


@pytest.fixture
def server() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


def model(mode: str) -> dict[str, object]:
    return {"name": "m", "default": True, "mode": mode, "temperature": 0, "stop": ["\n\n"]}


def test_a_pinned_cell_asks_a_completion_model_and_the_mode_is_in_the_cache_key(
        shell: InteractiveShell, server: ScriptServer, write_providers: WriteProviders,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timmy_magic

    monkeypatch.setenv("TIMMY_CACHE_PATH", str(tmp_path / "answers.sqlite3"))
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)
    path = write_providers([local("g", server.url, models=[model("completion")])])
    run(shell, "%load_ext timmy_magic")
    run(shell, "%llm cache on")
    server.script(COMPLETION)
    shown = run(shell, "%%llm -p g\nThe three primary colors are")
    assert server.chats == 1 and "red, blue and yellow." in shown
    assert "g · m · TTFT" in shown and "7 tok" in shown
    url, body = server.last_post  # type: ignore[misc]
    assert url == "/v1/completions" and body["prompt"] == "The three primary colors are"
    assert body["temperature"] == 0 and body["stop"] == ["\n\n"]
    run(shell, "%%llm -p g\nThe three primary colors are")
    last = timmy_magic.last()
    assert server.chats == 1 and last is not None and last.cached  # a hit: no request
    # the same model, now asked as chat: another answer, so another key
    write_providers([local("g", server.url, models=[model("chat")])])
    run(shell, f"%llm reload {path}")
    server.script(CHAT)
    shown = run(shell, "%%llm -p g\nThe three primary colors are")
    assert server.chats == 2 and server.last_post[0] == "/v1/chat/completions"  # type: ignore[index]
    last = timmy_magic.last()
    assert last is not None and not last.cached and last.text == "blue"
