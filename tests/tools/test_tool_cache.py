"""A tool conversation in the answer cache: each model turn is keyed on the conversation
so far, tool results included; in replay the tools still run (and are approved), and a
tool that now returns something else is a replay miss, not a wrong answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.scriptserver import ScriptServer
from timmy_magic.cache import ReplayMiss
from timmy_magic.routing.router import Router

from .wire import openai_calls, openai_text

PRICES = {"tea": 3}


def price(item: str) -> int:
    """The price of an item."""
    return PRICES[item]


def router_for(tmp_path: Path, url: str, mode: str) -> Router:
    doc: dict[str, Any] = {
        "cascade": {"first_token_timeout_seconds": 5, "max_retries_per_provider": 0},
        "cache": {"mode": mode, "path": str(tmp_path / "answers.sqlite3")},
        "providers": [{"name": "a", "type": "llama_cpp", "base_url": url,
                       "models": [{"name": "m", "default": True, "capabilities": ["tools"]}]}]}
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return Router.from_config(str(path))


def test_tool_turns_are_recorded_and_replayed_with_the_tools_run_again(tmp_path):
    with ScriptServer() as srv:
        srv.turns(openai_calls(("c1", "price", '{"item": "tea"}')), openai_text("Tea is 3."))
        with router_for(tmp_path, srv.url, "on") as r:
            live = r.complete("What does tea cost?", tools=[price])
        assert live.text == "Tea is 3." and srv.chats == 2
        asked: list[str] = []

        def approve(call: Any) -> bool:
            asked.append(call.line)
            return True

        with router_for(tmp_path, srv.url, "replay") as r:
            again = r.complete("What does tea cost?", tools=[price], approve=approve)
            assert srv.chats == 2 and again.cached and again.text == "Tea is 3."
            assert asked == ["price(item='tea')"] and again.tool_calls[0].result == "3"
            PRICES["tea"] = 4  # the tool's result changed: the next turn was never asked
            try:
                with pytest.raises(ReplayMiss):
                    r.complete("What does tea cost?", tools=[price])
            finally:
                PRICES["tea"] = 3
            with pytest.raises(ReplayMiss):  # other tools offered: another request
                r.complete("What does tea cost?", tools=[price, approve])
