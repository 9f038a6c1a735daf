"""The answer cache from a notebook's side (issue 15): ``%llm cache``, ``--cache`` /
``--no-cache``, ``$TIMMY_CACHE_MODE`` / ``$TIMMY_CACHE_PATH``, replay with the server
gone, a replay miss. The loopback server counts the requests that really went out."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import WriteProviders, local
from tests.support.faultserver import FaultServer


def run(shell: InteractiveShell, source: str) -> tuple[object, str]:
    with capture_output() as cap:
        res = shell.run_cell(source)
    shown = cap.stdout + cap.stderr + "".join(repr(o.data) for o in cap.outputs)
    return res, shown


@pytest.fixture
def cached_shell(shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    monkeypatch.setenv("TIMMY_CACHE_PATH", str(tmp_path / "answers.sqlite3"))
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)
    write_providers([local("alpha", fault.base_url("ok", text="a recorded answer"))])
    run(shell, "%load_ext timmy_magic")
    fault.reset()
    return shell


def chats(fault: FaultServer) -> int:
    return sum(1 for r in fault.requests if r.path.endswith("/chat/completions"))


def test_on_records_then_answers_from_the_cache_without_a_request(
        cached_shell: InteractiveShell, fault: FaultServer) -> None:
    import timmy_magic

    _, shown = run(cached_shell, "%llm cache on")
    assert "Answer cache: on" in shown
    _, first = run(cached_shell, "%%llm -p alpha\nWhat is a cache?")
    assert "a recorded answer" in first and chats(fault) == 1
    assert timmy_magic.last() is not None and not timmy_magic.last().cached
    res, again = run(cached_shell, "%%llm -p alpha\nWhat is a cache?")
    assert res.error_in_exec is None and chats(fault) == 1  # no second request
    last = timmy_magic.last()
    assert last is not None and last.cached and last.text == "a recorded answer"
    assert "cached · alpha" in again
    assert again.count("answered from the cache") == 2  # once in markdown, once in plain
    # another prompt, another temperature, --no-cache: each goes out
    run(cached_shell, "%%llm -p alpha\nWhat is a cache, really?")
    run(cached_shell, "%%llm -p alpha -t 0.5\nWhat is a cache?")
    run(cached_shell, "%%llm -p alpha --no-cache\nWhat is a cache?")
    assert chats(fault) == 4
    _, stats = run(cached_shell, "%llm cache stats")
    assert "Answer cache mode: on" in stats and "3 answers" in stats, stats
    assert "this session: 1 hits, 3 misses" in stats, stats
    _, cleared = run(cached_shell, "%llm cache clear")
    assert "3 answers removed" in cleared, cleared


def test_replay_answers_with_the_server_gone_and_a_miss_is_one_block(
        cached_shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        tmp_path: Path) -> None:
    import timmy_magic

    run(cached_shell, "%llm cache on")
    run(cached_shell, "%%llm\nName a colour.")
    assert chats(fault) == 1
    # the provider now points at a closed port: replay must never need it
    write_providers([local("alpha", "http://127.0.0.1:9/v1")],
                    name="providers.yaml")
    run(cached_shell, f"%llm reload {tmp_path / 'providers.yaml'}")
    _, shown = run(cached_shell, "%llm cache replay")
    assert "only from recorded answers" in shown
    res, hit = run(cached_shell, "%%llm\nName a colour.")
    assert res.error_in_exec is None and "a recorded answer" in hit
    assert timmy_magic.last().cached
    res, miss = run(cached_shell, "%%llm\nName a shape.")
    assert res.error_in_exec is None and "Traceback" not in miss
    assert "replay: no recorded answer" in miss and "Name a shape." in miss
    assert "%llm cache on" in miss and chats(fault) == 1


def test_the_environment_sets_the_mode_and_a_bad_value_is_one_line(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMMY_CACHE_PATH", str(tmp_path / "c.sqlite3"))
    monkeypatch.setenv("TIMMY_CACHE_MODE", "replay")
    write_providers([local("alpha", fault.base_url("ok", text="live"))])
    run(shell, "%load_ext timmy_magic")
    fault.reset()
    _, miss = run(shell, "%%llm\nhello")
    assert "replay: no recorded answer" in miss and chats(fault) == 0
    _, live = run(shell, "%%llm --no-cache\nhello")  # the author asked for a live answer
    assert "live" in live and chats(fault) == 1
    monkeypatch.setenv("TIMMY_CACHE_MODE", "sometimes")
    _, bad = run(shell, "%%llm\nhello")
    assert "TIMMY_CACHE_MODE='sometimes' is not a cache mode" in bad
    assert "Traceback" not in bad and chats(fault) == 1


def test_cache_section_in_providers_yaml(shell: InteractiveShell, fault: FaultServer,
                                         write_providers: WriteProviders, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIMMY_CACHE_PATH", raising=False)
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)
    path = tmp_path / "from-config.sqlite3"
    write_providers([local("alpha", fault.base_url("ok", text="configured"))],
                    cache={"mode": "on", "path": str(path), "ttl_days": 30})
    run(shell, "%load_ext timmy_magic")
    fault.reset()
    run(shell, "%%llm\nhello")
    run(shell, "%%llm\nhello")
    assert path.is_file() and chats(fault) == 1


def test_a_cell_and_the_router_share_one_cache_and_record_once(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``cache: on`` in providers.yaml the router's calls use the cache too: a cell
    looks up once (keyed with its format), asks the router with ``cache=False``, and
    records once; ``--no-cache`` and ``%llm cache off`` reach the server whatever the
    file says; a Python call in the kernel uses the same file."""
    import timmy_magic

    monkeypatch.delenv("TIMMY_CACHE_PATH", raising=False)
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)
    path = tmp_path / "shared.sqlite3"
    write_providers([local("alpha", fault.base_url("ok", text="configured"))],
                    cache={"mode": "on", "path": str(path)})
    run(shell, "%load_ext timmy_magic")
    fault.reset()
    run(shell, "%%llm\nhello")
    router = timmy_magic.get_router()
    assert router.cache.store().stats().entries == 1 and chats(fault) == 1
    run(shell, "%%llm --no-cache\nhello")
    run(shell, "%llm cache off")
    run(shell, "%%llm\nhello")
    assert chats(fault) == 3 and router.cache.store().stats().entries == 1
    assert not router.complete("hello").cached  # no format in its key: its own entry
    assert router.complete("hello").cached and chats(fault) == 4
    assert router.cache.store().path == path
    assert router.cache.store().stats().entries == 2


def test_a_changed_model_setting_misses_instead_of_replaying(
        cached_shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        tmp_path: Path) -> None:
    def config(temperature: float, stop: list[str]) -> None:
        write_providers([local("alpha", fault.base_url("ok", text="a recorded answer"),
                               models=[{"name": "m", "temperature": temperature,
                                        "stop": stop}])])
        run(cached_shell, f"%llm reload {tmp_path / 'providers.yaml'}")

    config(0.0, ["\n\n"])
    run(cached_shell, "%llm cache on")
    run(cached_shell, "%%llm -p alpha\nhello")
    run(cached_shell, "%%llm -p alpha\nhello")
    assert chats(fault) == 1
    config(0.7, ["\n\n"])  # another temperature: asked again
    run(cached_shell, "%%llm -p alpha\nhello")
    config(0.7, ["END"])  # another stop: asked again
    run(cached_shell, "%%llm -p alpha\nhello")
    assert chats(fault) == 3
    config(0.0, ["\n\n"])  # back as recorded: a hit
    run(cached_shell, "%%llm -p alpha\nhello")
    assert chats(fault) == 3
