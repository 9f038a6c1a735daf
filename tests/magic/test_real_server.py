"""%%llm against a real llama-server (Gemma 3 270M, real text, ~60 tok/s here)."""

from __future__ import annotations

import _thread
import threading
import time
from typing import Any

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell

from tests.support.servers import ManagedServer
from timmy_magic import notebook as magics

from .conftest import WriteProviders, wait_for
from .test_magics import assert_one_streamed_display, load, run

pytestmark = pytest.mark.integration


@pytest.fixture
def llama_shell(shell: InteractiveShell, llama_server: ManagedServer,
                write_providers: WriteProviders) -> InteractiveShell:
    write_providers([{"name": "llama-server", "type": "llama_cpp",
                      "base_url": llama_server.base_url}],
                    cascade={"first_token_timeout_seconds": 30, "timeout_seconds": 60})
    load(shell)
    return shell


def busy_slots(srv: ManagedServer) -> int:
    slots: list[dict[str, Any]] = httpx.get(srv.base_url + "/slots", timeout=5).json()
    return sum(bool(s.get("is_processing")) for s in slots)


def test_a_real_answer_streams_into_one_display_with_its_footer(
        llama_shell: InteractiveShell) -> None:
    res, cap = run(llama_shell, "%%llm --max-tokens 24 -o r\nThe capital of France is")
    assert res.error_in_exec is None
    r = llama_shell.user_ns["r"]
    assert r.ok and r.provider == "llama-server" and r.text.strip()
    assert r.model == "gemma-3-270m" and 0 < (r.usage.output_tokens or 0) <= 24
    assert r.timings.ttft_s is not None and r.timings.ttft_s < r.timings.total_s
    data = assert_one_streamed_display(cap)
    assert len(data) >= 3  # placeholder, at least one live update, final
    assert data[-1]["text/markdown"].startswith(r.text)
    assert f"*llama-server · gemma-3-270m · TTFT {r.timings.ttft_s:.2f}s" in \
        data[-1]["text/markdown"]


def test_interrupting_a_real_stream_keeps_the_partial_answer_and_frees_the_server(
        llama_shell: InteractiveShell, llama_server: ManagedServer) -> None:
    ext = magics.extension()
    fired: dict[str, float] = {}

    def interrupt_after_five_tokens() -> None:
        if wait_for(lambda: ext.active is not None and len(ext.active.parts) >= 5, 30):
            fired["at"] = time.monotonic()
            _thread.interrupt_main()

    threading.Thread(target=interrupt_after_five_tokens, daemon=True).start()
    res, cap = run(llama_shell, "%%llm --max-tokens 2000 -t 0.7\n"
                                "Count from 1 to 1000, one number per line:\n1\n2\n3\n")
    stopped = time.monotonic()
    assert isinstance(res.error_in_exec, magics.StreamInterrupted), cap.stdout
    assert stopped - fired["at"] < 2.0  # promptly
    last = magics.last()
    assert last.error == "interrupted by the user" and last.text
    assert 5 <= (last.usage.output_tokens or 0) < 2000
    final = assert_one_streamed_display(cap)[-1]["text/markdown"]
    assert "· interrupted*" in final and "Stream interrupted" not in final  # said once
    assert "Traceback" not in cap.stdout + cap.stderr
    # the server stops generating: its slot is released
    assert wait_for(lambda: busy_slots(llama_server) == 0, 5)
    # and the router answers the next request
    res, _ = run(llama_shell, "%%llm --max-tokens 8\nHello")
    assert res.error_in_exec is None and magics.last().ok and magics.last().text


def test_fix_and_explain_on_the_real_base_model_never_insert_junk(
        shell: InteractiveShell, llama_server: ManagedServer,
        write_providers: WriteProviders, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped default's model settings (a base model, ``mode: completion``), real
    Gemma 3 270M: ``explain`` is not asked of it (one line says why and what to add);
    ``fix`` asks it as code to continue, and what it proposes becomes a cell only if it
    parses and changes the failing cell, else the note says why nothing was inserted."""
    from IPython.core.inputtransformer2 import TransformerManager

    import timmy_magic

    gemma = {"name": "gemma-3-270m", "default": True, "mode": "completion",
             "temperature": 0, "max_tokens": 64, "stop": ["\n\n", "<end_of_turn>"],
             "params": {"repeat_penalty": 1.1}}
    write_providers([{"name": "local-gemma", "type": "llama_cpp",
                      "base_url": llama_server.base_url, "models": [gemma]}],
                    cascade={"first_token_timeout_seconds": 30, "timeout_seconds": 60})
    load(shell)
    inserted: list[str] = []
    monkeypatch.setattr(shell, "set_next_input", lambda text, replace=False: inserted.append(text))
    run(shell, "import pandas as pd\n"
               "df = pd.DataFrame({'country': ['Chile', 'Peru'], 'population_m': [19.6, 34.0]})")
    res, _ = run(shell, "df['populaton_m'].mean()")
    assert isinstance(res.error_in_exec, KeyError)
    _, cap = run(shell, "%llm explain")
    shown = cap.stdout + "".join(str(o.data) for o in cap.outputs)
    assert "does not follow instructions" in shown and "Add a chat model" in shown
    _, cap = run(shell, "%llm fix")
    shown = cap.stdout + "".join(str(o.data) for o in cap.outputs)
    last = timmy_magic.last()
    assert last is not None and last.provider == "local-gemma" and last.ok
    assert "base models" in shown
    if inserted:  # what it proposed parses and is not the failing cell
        [cell] = inserted
        compile(TransformerManager().transform_cell(cell), "<fix>", "exec")
        assert cell.strip() != "df['populaton_m'].mean()"
        assert "fix proposed in a new cell below" in shown
    else:
        assert "no cell was inserted" in shown
    print(f"real base-model fix: inserted={inserted!r} answer={last.text[:80]!r}")
