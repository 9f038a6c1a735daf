"""``timmy_magic.evaluate`` against the real llama-server with Gemma 3 270M (a base model)
on the labelled dataset the tutorial uses (notebooks/data/capitals.csv): the same model
asked two ways, as a plain completion (how the shipped local-gemma asks it) and as a
chat (a template the base model was never trained on). The evaluation must show the
difference, with real latencies, no cost, and the cascade advice naming the completion
model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.notebooks.replay import shipped_gemma_model
from tests.support.servers import ManagedServer
from timmy_magic import Router
from timmy_magic.config import parse_config
from timmy_magic.notebook.api import evaluate

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "notebooks" / "data" / "capitals.csv"
COMPLETION, CHAT = "local-gemma:gemma-3-270m", "local-gemma:gemma-3-270m-chat"


def two_ways(url: str) -> Router:
    model = shipped_gemma_model()
    chat = {**model, "name": "gemma-3-270m-chat", "mode": "chat", "default": False}
    doc = {"cascade": {"first_token_timeout_seconds": 60, "timeout_seconds": 120},
           "providers": [{"name": "local-gemma", "type": "llama_cpp", "base_url": url,
                          "models": [model, chat]}]}
    return Router(parse_config(json.dumps(doc), source="test.yaml", env={}))


def test_gemma_asked_two_ways_on_a_labelled_dataset(llama_server: ManagedServer) -> None:
    capitals = pd.read_csv(DATA)
    with two_ways(llama_server.base_url) as router:
        ev = evaluate(capitals, "Q: What is the capital of {country}?\nA:",
                      [COMPLETION, CHAT], "contains:capital", max_tokens=10, concurrency=4,
                      router=router, progress=False)
    table = ev.to_pandas()
    assert len(table) == 2 * len(capitals) and table.error.isna().all(), \
        table[table.error.notna()][["target", "error"]].to_dict("records")
    assert set(table.provider) == {"local-gemma"}
    summary = ev.summary()
    done, chat = summary.loc[COMPLETION], summary.loc[CHAT]
    # the base model continues a Q/A as a completion; as a chat it does not answer
    assert done.score_mean >= 0.3 and done.score_mean > chat.score_mean, summary
    assert done.score_low <= done.score_mean <= done.score_high
    assert 0 < done.latency_p50_s <= done.latency_p95_s
    assert (summary.cost_usd == 0).all() and (summary.errors == 0).all()
    right = table[(table.target == COMPLETION) & (table.score == 1.0)]
    assert all(cap.lower() in text.lower() for cap, text in zip(
        capitals.capital[right.row], right.text))
    advice = ev.cascade(min_score=0.3)
    assert advice.order == ["local-gemma"]
    assert "(model gemma-3-270m: make it default)" in advice.yaml
    assert f"# left out: {CHAT}: score" in advice.yaml
