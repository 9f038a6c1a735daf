"""Completion mode (issue 15), the pure parts: a model's ``mode``, ``temperature``,
``stop`` and ``params`` in providers.yaml; the shipped ``local-gemma``; the prompt a
completion-mode model gets (``completion_prompt``). The wire and the servers are tested in
tests/reliability/test_completion_wire.py and tests/integration/test_completion_mode.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from timmy_magic.config import load_config, packaged_default, parse_config
from timmy_magic.model.chat import Message
from timmy_magic.model.errors import ConfigError
from timmy_magic.providers.openai_compat import TRANSCRIPT_STOP, completion_prompt

ROOT = Path(__file__).resolve().parents[2]


def one_model(fields: str, env: dict[str, str] | None = None):
    cfg = parse_config("providers:\n  - name: local\n    type: llama_cpp\n"
                       f"    models: [{{name: m, {fields}}}]\n", env=env or {})
    return cfg.providers[0].models[0]


def test_defaults_are_chat_with_nothing_extra() -> None:
    m = one_model("default: true")
    assert m.mode == "chat" and m.temperature is None and m.stop == () and m.params == {}


def test_mode_temperature_stop_and_params_are_read() -> None:
    m = one_model('mode: completion, temperature: 0, stop: ["\\n\\n", "<end_of_turn>"], '
                  "params: {repeat_penalty: 1.1, top_k: 40, seed: 7, ignore_eos: false, "
                  "grammar: 'root ::= \"a\"', logit_bias_ids: [1, 2], min_p: null}")
    assert m.mode == "completion" and m.temperature == 0.0
    assert m.stop == ("\n\n", "<end_of_turn>")
    assert m.params == {"repeat_penalty": 1.1, "top_k": 40, "seed": 7, "ignore_eos": False,
                        "grammar": 'root ::= "a"', "logit_bias_ids": [1, 2], "min_p": None}


def test_one_stop_string_is_a_list_of_one() -> None:
    assert one_model('stop: "\\n"').stop == ("\n",)


def test_a_param_from_the_environment_is_read_as_a_number() -> None:
    m = one_model("params: {repeat_penalty: '${PENALTY:-1.1}', tag: '${TAG:-x}'}",
                  env={"PENALTY": "1.3"})
    assert m.params == {"repeat_penalty": 1.3, "tag": "x"}


@pytest.mark.parametrize("fields, where, words", [
    ("mode: completions", "models.0.mode", "must be chat or completion (got 'completions')"),
    ("mode: true", "models.0.mode", "must be chat or completion"),
    ("temperature: -0.1", "models.0.temperature", "must be from 0 to 2"),
    ("temperature: '0.2'", "models.0.temperature", "remove the quotes"),
    ("temperature: .nan", "models.0.temperature", "must be a finite number"),
    ("stop: []", "models.0.stop", "a list of 1 to 16 strings"),
    ("stop: ['']", "models.0.stop", "strings of 1 to 64 characters"),
    ("stop: [" + ", ".join(["x"] * 17) + "]", "models.0.stop", "1 to 16 strings"),
    ("stop: {a: b}", "models.0.stop", "must be a string or a list"),
    ("params: [1]", "models.0.params", "must be a mapping of body fields"),
    ("params: {temperature: 0.1}", "models.0.params", "has its own field"),
    ("params: {stop: x}", "models.0.params", "has its own field"),
    ("params: {max_tokens: 9}", "models.0.params", "has its own field"),
    ("params: {prompt: x}", "models.0.params", "is set by the router"),
    ("params: {messages: x}", "models.0.params", "is set by the router"),
    ("params: {'bad key': 1}", "models.0.params", "is not a field name"),
    ("params: {top_k: .inf}", "models.0.params", "'top_k' must be a finite number"),
    ("params: {top_k: 1.0e+300}", "models.0.params", "'top_k' must be a finite number"),
    ("params: {x: {y: 1}}", "models.0.params", "not a mapping"),
    ("params: {x: [[1]]}", "models.0.params", "not a list"),
    ("params: {x: [" + ", ".join(["1"] * 65) + "]}", "models.0.params", "more than 64"),
    ("params: {" + ", ".join(f"k{i}: 1" for i in range(33)) + "}", "models.0.params",
     "more than 32 fields"),
])
def test_bad_model_fields_are_one_line_naming_the_field(fields: str, where: str,
                                                        words: str) -> None:
    with pytest.raises(ConfigError) as err:
        one_model(fields)
    msg = str(err.value)
    assert "\n" not in msg and "provider 'local'" in msg and f"'{where}'" in msg, msg
    assert words in msg, msg


def test_the_shipped_local_gemma_is_a_completion_model_with_defaults_that_suit_it() -> None:
    assert (ROOT / "providers.yaml").read_bytes() == packaged_default().read_bytes()
    m = load_config(packaged_default()).provider("local-gemma").models[0]  # type: ignore[union-attr]
    assert m.name == "gemma-3-270m" and m.default and m.mode == "completion"
    assert m.temperature is not None and m.temperature <= 0.2
    assert "\n\n" in m.stop and "<end_of_turn>" in m.stop
    assert m.params == {"repeat_penalty": 1.1}
    assert m.max_tokens is not None and m.max_tokens <= 256


def u(text: str) -> Message:
    return Message("user", text)


def test_one_message_is_the_prompt_as_written() -> None:
    assert completion_prompt((u("The three primary colors are"),)) == \
        ("The three primary colors are", ())
    assert completion_prompt((u("  ends in a space "),)) == ("  ends in a space ", ())


def test_a_system_prompt_goes_before_it() -> None:
    msgs = (Message("system", "Answer in French."), u("The capital of France is"))
    assert completion_prompt(msgs) == ("Answer in French.\n\nThe capital of France is", ())


def test_history_is_a_plain_transcript_and_stops_the_next_turn() -> None:
    msgs = (Message("system", "Be brief."), u("My name is Ada. I like"),
            Message("assistant", " to read books."), u("Ada likes"))
    prompt, stops = completion_prompt(msgs)
    assert prompt == ("Be brief.\n\nUser: My name is Ada. I like\nAssistant:  to read books."
                      "\n\nAda likes")
    assert stops == (TRANSCRIPT_STOP,)
