"""Assistant's tasks and base models: ``%llm fix`` and ``explain`` go to a model that
follows instructions; a ``mode: completion`` model (a base model, as the shipped Gemma 3
270M) is skipped for them with the reason. With only base models, ``fix`` asks as code to
continue, and a proposed cell is inserted only if it parses and changes something (also
for ``-f code``). Against loopback servers that record what they were asked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import WriteProviders, local
from tests.support.scriptserver import ScriptServer, sse

DONE = b"data: [DONE]\n\n"


def completion(text: str) -> list[bytes]:
    return [sse({"model": "base", "choices": [{"text": text, "finish_reason": "stop"}]}),
            DONE]


def chat(text: str) -> list[bytes]:
    return [sse({"model": "inst", "choices": [{"delta": {"content": text},
                                               "finish_reason": "stop"}]}), DONE]


def run(shell: InteractiveShell, source: str) -> str:
    with capture_output() as cap:
        shell.run_cell(source, store_history=True)
    return cap.stdout + cap.stderr + "".join(repr(o.data) for o in cap.outputs)


def base_model() -> dict[str, object]:
    return {"name": "base", "default": True, "mode": "completion", "stop": ["\n\n"]}


@pytest.fixture
def base() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


@pytest.fixture
def inst() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


@pytest.fixture
def inserted(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    cells: list[str] = []
    monkeypatch.setattr(shell, "set_next_input",
                        lambda text, replace=False: cells.append(text))
    return cells


def typo(shell: InteractiveShell) -> None:
    run(shell, "import pandas as pd\n"
               "df = pd.DataFrame({'country': ['a', 'b'], 'population_m': [1.5, 2.5]})")
    run(shell, "df['populaton_m'].mean()")


def test_only_base_models_fix_asks_code_to_continue_and_inserts_a_parsing_change(
        shell: InteractiveShell, base: ScriptServer, write_providers: WriteProviders,
        inserted: list[str]) -> None:
    write_providers([local("g", base.url, models=[base_model()])])
    run(shell, "%load_ext timmy_magic")
    typo(shell)
    base.script(completion("population_m'].mean()\n# Failing cell:"))
    shown = run(shell, "%llm fix")
    url, body = base.last_post  # type: ignore[misc]
    assert url == "/v1/completions"
    prompt = str(body["prompt"])
    # no instructions: code to continue, with the columns and the close name
    assert prompt.startswith("# A Jupyter notebook cell that failed")
    # ... and the fixed cell started up to the missing name, for the model to go on
    assert prompt.endswith("# Fixed cell:\ndf['") and "df['populaton_m'].mean()" in prompt
    assert "population_m (a column of df)" in prompt and "country" in prompt
    assert inserted == ["df['population_m'].mean()"]
    assert "fix proposed in a new cell below" in shown and "base models" in shown


@pytest.mark.parametrize(("answer", "why"), [
    ("df[population_m.mean(", "not valid Python"),
    ("populaton_m'].mean()", "the failing cell unchanged"),
    ("populaton_m'].sum()", "still uses 'populaton_m'"),
    ("", "holds no code"),
    ("\n# just a comment", "holds no code"),
])
def test_a_base_model_fix_that_would_not_help_inserts_nothing_and_says_why(
        shell: InteractiveShell, base: ScriptServer, write_providers: WriteProviders,
        inserted: list[str], answer: str, why: str) -> None:
    write_providers([local("g", base.url, models=[base_model()])])
    run(shell, "%load_ext timmy_magic")
    typo(shell)
    base.script(completion(answer))
    shown = run(shell, "%llm fix")
    assert inserted == [] and why in shown and "no cell was inserted" in shown
    assert "Traceback" not in shown


def test_explain_skips_a_base_model_with_the_reason_and_asks_nothing(
        shell: InteractiveShell, base: ScriptServer, write_providers: WriteProviders) -> None:
    write_providers([local("g", base.url, models=[base_model()])])
    run(shell, "%load_ext timmy_magic")
    typo(shell)
    posts = base.chats
    shown = run(shell, "%llm explain")
    assert base.chats == posts  # the base model was not asked to do what it cannot
    assert "completion model" in shown and "does not follow instructions" in shown
    assert "Add a chat model to providers.yaml" in shown and "Traceback" not in shown
    shown = run(shell, "%llm explain -p g")  # pinned: still not asked, and said why
    assert base.chats == posts and "cannot follow instructions" in shown


def test_fix_and_explain_go_to_the_instruction_model_past_a_first_base_model(
        shell: InteractiveShell, base: ScriptServer, inst: ScriptServer,
        write_providers: WriteProviders, inserted: list[str]) -> None:
    write_providers([local("g", base.url, priority=1, models=[base_model()]),
                     local("i", inst.url, priority=2,
                           models=[{"name": "inst", "default": True}])])
    run(shell, "%load_ext timmy_magic")
    typo(shell)
    inst.script(chat("Use the column's real name.\n```python\ndf['population_m'].mean()\n```"))
    shown = run(shell, "%llm fix")
    assert base.chats == 0 and inst.chats == 1
    url, body = inst.last_post  # type: ignore[misc]
    assert url == "/v1/chat/completions"
    user = body["messages"][-1]["content"]  # type: ignore[index]
    # what the failing cell referenced goes with it: df's columns, and the close name
    assert "### Variable `df`" in user and "country" in user
    assert "population_m (a column of df)" in user
    assert inserted == ["df['population_m'].mean()"]
    assert "fix proposed" in shown
    import timmy_magic

    last = timmy_magic.last()
    assert last is not None and last.provider == "i"
    assert [(s.provider, s.reason) for s in last.trace.skipped] == [("g", "completion_model")]


def test_a_code_answer_that_does_not_parse_is_not_inserted(
        shell: InteractiveShell, inst: ScriptServer, write_providers: WriteProviders,
        inserted: list[str]) -> None:
    write_providers([local("i", inst.url, models=[{"name": "inst", "default": True}])])
    run(shell, "%load_ext timmy_magic")
    inst.script(chat("```python\nx = [1, 2\n```"))
    shown = run(shell, "%%llm -f code\na list of two numbers")
    assert inserted == [] and "not valid Python" in shown and "no cell was inserted" in shown
    inst.script(chat("```python\n%time x = [1, 2]\n```"))  # IPython's own syntax parses
    run(shell, "%%llm -f code\na list of two numbers, timed")
    assert inserted == ["%time x = [1, 2]"]


@pytest.mark.parametrize(("prompt", "noted"), [
    ("Summarize this DataFrame in two sentences.", True),
    ("what does df hold", True),
    ("Is this right?", True),
    ("The three primary colors are", False),
    ("def reverse(s):", False),
])
def test_a_question_to_a_base_model_says_why_the_answer_may_not_answer_it(
        shell: InteractiveShell, base: ScriptServer, write_providers: WriteProviders,
        prompt: str, noted: bool) -> None:
    write_providers([local("g", base.url, models=[base_model()])])
    run(shell, "%load_ext timmy_magic")
    base.script(completion(" and so on"))
    shown = run(shell, f"%%llm\n{prompt}")
    assert base.last_post is not None and base.last_post[1]["prompt"] == prompt
    assert ("base is a base model (mode: completion)" in shown) is noted, shown
