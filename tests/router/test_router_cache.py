"""The answer cache from plain Python: ``Router.complete``, ``acomplete``, ``stream`` and
``astream`` honour ``cache:`` in providers.yaml, against a real loopback server that
counts the requests that really went out (no mocks)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.faultserver import FaultServer, closed_port
from timmy_magic.cache import PATH_VAR, ReplayMiss
from timmy_magic.model.chat import Delta, Done, Result
from timmy_magic.routing.router import Router

ANSWER = "a recorded answer"
_keys = itertools.count()


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    with FaultServer(cap=20) as s:
        yield s


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)
    monkeypatch.delenv(PATH_VAR, raising=False)


class Server:
    """One test's view of the shared server: its own URL, and its chat requests only."""

    def __init__(self, srv: FaultServer) -> None:
        self.srv, self.key = srv, str(next(_keys))
        self.url = srv.base_url("ok", text=ANSWER, key=self.key)

    def chats(self) -> int:
        return sum(1 for r in self.srv.requests if r.path.endswith("chat/completions")
                   and r.params.get("key") == self.key)


@pytest.fixture
def server(srv: FaultServer) -> Server:
    return Server(srv)


def router_for(tmp_path: Path, url: str, mode: str | None, *,
               cache_path: Path | None = None) -> Router:
    """``Router.from_config`` on a providers.yaml with one provider and ``cache:``."""
    doc: dict[str, Any] = {
        "cascade": {"first_token_timeout_seconds": 5, "max_retries_per_provider": 0,
                    "connect_timeout_seconds": 1},
        "providers": [{"name": "alpha", "type": "llama_cpp", "base_url": url}]}
    if mode is not None:
        doc["cache"] = {"mode": mode, "path": str(cache_path or tmp_path / "answers.sqlite3")}
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return Router.from_config(str(path))


def test_on_records_and_a_repeated_request_sends_nothing(tmp_path: Path,
                                                         server: Server) -> None:
    with router_for(tmp_path, server.url, "on") as r:
        first = r.complete("What is a cache?")
        assert first.text == ANSWER and not first.cached and server.chats() == 1
        again = r.complete("What is a cache?")
        assert server.chats() == 1  # no second request
        assert again.cached and again.text == ANSWER and again.provider == "alpha"
        assert any("answered from the cache" in n for n in again.notes)
        assert not again.trace.attempts  # nothing was routed
        r.complete("Another question?")  # another prompt goes out
        assert server.chats() == 2
        assert r.cache.store().stats().entries == 2


def test_replay_misses_with_nothing_sent_and_hits_offline(tmp_path: Path,
                                                          server: Server) -> None:
    answers = tmp_path / "recorded.sqlite3"
    with router_for(tmp_path, server.url, "on", cache_path=answers) as r:
        r.complete("Name a colour.")
    assert server.chats() == 1
    # the provider now at a closed port: replay must never need it
    offline = f"http://127.0.0.1:{closed_port()}/v1"
    with router_for(tmp_path, offline, "replay", cache_path=answers) as r:
        hit = r.complete("Name a colour.")
        assert hit.cached and hit.text == ANSWER
        with pytest.raises(ReplayMiss, match="Name a shape") as miss:
            r.complete("Name a shape.")
        assert "provider cascade" in str(miss.value)
        assert "`cache: {mode: on}` in providers.yaml" in str(miss.value)  # not a cell's hint
    with router_for(tmp_path, server.url, "replay", cache_path=answers) as r:
        with pytest.raises(ReplayMiss):
            r.complete("Never recorded.")
        with pytest.raises(ReplayMiss):
            r.stream("Never recorded.")  # looked up at the call, before any iteration
    assert server.chats() == 1  # a replay miss sends nothing


def test_off_sends_every_request_and_stores_nothing(tmp_path: Path, server: Server) -> None:
    with router_for(tmp_path, server.url, "off") as r:
        assert not r.complete("What is a cache?").cached
        assert not r.complete("What is a cache?").cached
    assert server.chats() == 2
    assert not (tmp_path / "answers.sqlite3").exists()  # never even opened


def test_no_cache_section_is_off(tmp_path: Path, server: Server) -> None:
    with router_for(tmp_path, server.url, None) as r:
        r.complete("hi")
        r.complete("hi")
    assert server.chats() == 2


def test_stream_records_at_done_and_answers_from_the_cache(tmp_path: Path,
                                                           server: Server) -> None:
    with router_for(tmp_path, server.url, "on") as r:
        live = list(r.stream("Stream it."))
        assert isinstance(live[-1], Done) and not live[-1].result.cached
        cached = list(r.stream("Stream it."))
        assert server.chats() == 1
        assert [type(e) for e in cached] == [Delta, Done]
        assert isinstance(cached[0], Delta) and cached[0].text == ANSWER
        assert isinstance(cached[1], Done) and cached[1].result.cached
        # complete and stream key alike: the same request, one entry
        assert r.complete("Stream it.").cached and server.chats() == 1


def test_a_stream_closed_early_records_nothing(tmp_path: Path, server: Server) -> None:
    with router_for(tmp_path, server.url, "on") as r:
        events = r.stream("Stop early.")
        assert any(isinstance(ev, Delta) for ev in events)  # the first text, then stop
        events.close()  # type: ignore[attr-defined]
        assert not r.complete("Stop early.").cached
    assert server.chats() == 2


def test_async_calls_record_and_answer_from_the_cache(tmp_path: Path,
                                                      server: Server) -> None:
    async def ask(r: Router) -> tuple[Result, Result, list[Any]]:
        first = await r.acomplete("Async?")
        second = await r.acomplete("Async?")
        events = [ev async for ev in r.astream("Async?")]
        return first, second, events

    with router_for(tmp_path, server.url, "on") as r:
        first, second, events = asyncio.run(ask(r))
        assert not first.cached and second.cached and second.text == ANSWER
        assert [type(e) for e in events] == [Delta, Done] and events[-1].result.cached
        streamed = asyncio.run(_collect(r, "Async, streamed?"))
        assert isinstance(streamed[-1], Done) and not streamed[-1].result.cached
        assert r.complete("Async, streamed?").cached  # astream recorded it
    assert server.chats() == 2


async def _collect(r: Router, prompt: str) -> list[Any]:
    return [ev async for ev in r.astream(prompt)]


def test_the_cache_argument_acts_as_the_cell_flags(tmp_path: Path, server: Server) -> None:
    with router_for(tmp_path, server.url, "off") as r:
        r.complete("Flagged.", cache=True)  # on for this request: recorded
        assert r.complete("Flagged.", cache=True).cached
        assert not r.complete("Flagged.").cached  # the configured mode: off
    assert server.chats() == 2
    with router_for(tmp_path, server.url, "on") as r:
        assert not r.complete("Flagged.", cache=False).cached  # not touched: live
        assert r.complete("Flagged.").cached
    assert server.chats() == 3


def test_python_calls_follow_providers_yaml_not_the_notebook_switch(
        tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$TIMMY_CACHE_MODE`` is the cells' switch: a notebook replayed with it still makes
    its Python calls live (the tutorials show failures with them)."""
    monkeypatch.setenv("TIMMY_CACHE_MODE", "replay")
    with router_for(tmp_path, server.url, "off") as r:
        assert not r.complete("Live anyway.").cached
    assert server.chats() == 1


def test_the_cache_path_from_the_environment_wins(tmp_path: Path, server: Server,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere" / "answers.sqlite3"
    monkeypatch.setenv(PATH_VAR, str(elsewhere))
    with router_for(tmp_path, server.url, "on") as r:
        r.complete("Where?")
        assert r.cache.store().path == elsewhere
    assert elsewhere.exists() and not (tmp_path / "answers.sqlite3").exists()


def test_a_schema_answer_is_validated_again_on_a_hit(tmp_path: Path, srv: FaultServer) -> None:
    server = Server(srv)
    server.url = srv.base_url("ok", text='{"colour": "red"}', key=server.key)
    schema = {"type": "object", "properties": {"colour": {"type": "string"}},
              "required": ["colour"]}
    with router_for(tmp_path, server.url, "on") as r:
        live = r.complete("A colour as JSON.", schema=schema)
        hit = r.complete("A colour as JSON.", schema=schema)
    assert live.data == {"colour": "red"} and not live.cached
    assert hit.cached and hit.data == {"colour": "red"}
    assert server.chats() == 1
