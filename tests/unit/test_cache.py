"""The answer cache's storage core: keys, values, TTL, eviction, damage, secrets."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from timmy_magic.cache import (
    ENV_VAR,
    PATH_VAR,
    AnswerCache,
    CachedAnswer,
    CacheSettingError,
    ReplayMiss,
    RequestFields,
    cell_mode,
    configured_mode,
    configured_path,
    default_path,
    request_key,
)
from timmy_magic.config import CacheConfig
from timmy_magic.model.chat import ChatRequest, Message, Result, RouteTrace, Timings, Usage
from timmy_magic.model.errors import InvalidRequest, TimmyError
from timmy_magic.privacy.redact import REDACT

DAY = 86400.0
T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(tmp_path: Path, clock: Clock):
    c = AnswerCache(tmp_path / "answers.sqlite3", clock=clock)
    yield c
    c.close()


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="timmy_magic.cache")
    return caplog


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "timmy_magic.cache" and r.levelno >= logging.WARNING]


def fields(prompt: str = "Explain a circuit breaker.", **kw) -> RequestFields:
    return RequestFields(messages=(Message("user", prompt),), **kw)


def answer(text: str = "It stops calling a failing service.", **kw) -> CachedAnswer:
    base = {"text": text, "provider": "local-gemma", "model": "gemma-3-270m",
            "usage": Usage(12, 34, estimated=True), "timings": Timings(0.25, 1.5, 22.5),
            "created": "2025-06-15T15:06:40+00:00", "summary": "Explain a circuit breaker."}
    return CachedAnswer(**{**base, **kw})


def result(text: str = "An answer.", error: str | None = None) -> Result:
    return Result(text=text, provider="local-gemma", model="gemma-3-270m",
                  usage=Usage(5, 7), timings=Timings(0.1, 0.9, 7.7), trace=RouteTrace(),
                  error=error)


# ---------------------------------------------------------------- hit and miss


def test_put_then_get_is_a_hit_with_every_field(cache: AnswerCache) -> None:
    key = request_key(fields())
    assert cache.get(key) is None
    assert cache.put(key, answer())
    got = cache.get(key)
    assert got == answer()
    assert got is not None and got.usage.estimated and got.timings.ttft_s == 0.25
    assert cache.get(request_key(fields("another question"))) is None
    s = cache.stats()
    assert (s.hits, s.misses, s.entries) == (1, 2, 1)
    assert s.available and s.bytes > len(answer().text) and s.file_bytes > 0


def test_put_replaces_the_same_key(cache: AnswerCache) -> None:
    key = request_key(fields())
    cache.put(key, answer("first"))
    cache.put(key, answer("second"))
    got = cache.get(key)
    assert got is not None and got.text == "second"
    assert cache.stats().entries == 1


def test_answers_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "answers.sqlite3"  # parents are created
    with AnswerCache(path) as c:
        c.put("k", answer())
    with AnswerCache(path) as c:
        assert c.get("k") == answer()
        assert c.available


def test_stats_reports_oldest_and_newest(cache: AnswerCache, clock: Clock) -> None:
    assert cache.stats().oldest is None
    cache.put("a", answer())
    clock.now += 2 * DAY
    cache.put("b", answer())
    s = cache.stats()
    assert s.oldest == "2025-06-15T15:06:40+00:00"
    assert s.newest == "2025-06-17T15:06:40+00:00"
    assert "2 answers" in "\n".join(s.lines())


def test_clear_removes_everything(cache: AnswerCache) -> None:
    for i in range(5):
        cache.put(f"k{i}", answer())
    assert cache.clear() == 5
    assert cache.get("k0") is None
    assert cache.stats().entries == 0
    assert cache.clear() == 0


def test_a_closed_cache_is_a_quiet_miss(cache: AnswerCache) -> None:
    cache.put("k", answer())
    cache.close()
    cache.close()
    assert cache.get("k") is None
    assert not cache.put("k", answer())
    assert cache.clear() == 0
    assert not cache.stats().available


def test_threads_share_one_cache(cache: AnswerCache) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                cache.put(f"{n}-{i}", answer(f"{n}-{i}"))
                assert cache.get(f"{n}-{i}") is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.stats().entries == 160


def test_default_path_is_in_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda app: str(tmp_path / app))
    assert default_path() == tmp_path / "timmy-magic" / "answers.sqlite3"
    assert configured_path(CacheConfig(), {}) == default_path()
    assert configured_path(CacheConfig(path="/x/y.db"), {}) == Path("/x/y.db")
    # $TIMMY_CACHE_PATH over the file's path, ~ expanded; an unknown ~user kept as written
    env = {PATH_VAR: "~/z.db"}
    assert configured_path(CacheConfig(path="/x/y.db"), env) == Path("~/z.db").expanduser()
    assert configured_path(CacheConfig(), {PATH_VAR: "~no-such-user-7f3a/c.db"}) \
        == Path("~no-such-user-7f3a/c.db")
    assert configured_path(CacheConfig(path="/x/y.db"), {PATH_VAR: ""}) == Path("/x/y.db")


# ---------------------------------------------------------------- ttl and eviction


def test_ttl_expires_entries_but_replay_ignores_it(tmp_path: Path, clock: Clock) -> None:
    with AnswerCache(tmp_path / "c.sqlite3", ttl_days=7, clock=clock) as c:
        c.put("k", answer())
        clock.now += 6.9 * DAY
        assert c.get("k") is not None
        clock.now += 0.2 * DAY
        assert c.get("k") is None
        assert c.get("k", ignore_ttl=True) is not None
        c.put(request_key(fields()), answer())
        clock.now += 30 * DAY
        assert c.lookup(fields(), "on") is None
        assert c.lookup(fields(), "replay") is not None


def test_without_ttl_nothing_expires(cache: AnswerCache, clock: Clock) -> None:
    cache.put("k", answer())
    clock.now += 3650 * DAY
    assert cache.get("k") is not None


def test_eviction_drops_least_recently_used_first(tmp_path: Path, clock: Clock) -> None:
    with AnswerCache(tmp_path / "c.sqlite3", max_mb=0.01, clock=clock) as c:  # 10 kB
        text = "x" * 1800
        for name in "abcd":
            clock.now += 3600
            assert c.put(name, answer(text))
        clock.now += 3600
        assert c.get("a") is not None  # a is now the most recently used
        for name in "ef":
            clock.now += 3600
            assert c.put(name, answer(text))
        s = c.stats()
        assert s.bytes <= 10_000
        present = {k for k in "abcdef" if c.get(k, ignore_ttl=True) is not None}
        assert "b" not in present and "a" in present and {"e", "f"} <= present


def test_eviction_keeps_the_total_under_the_cap_over_many_puts(tmp_path: Path,
                                                              clock: Clock) -> None:
    with AnswerCache(tmp_path / "c.sqlite3", max_mb=0.02, clock=clock) as c:
        for i in range(100):
            clock.now += 1
            c.put(f"k{i}", answer("y" * 900))
            assert c.stats().bytes <= 20_000
        assert c.get("k99") is not None and c.get("k0") is None


def test_an_answer_larger_than_the_cap_is_not_stored(tmp_path: Path,
                                                     warnings: pytest.LogCaptureFixture) -> None:
    with AnswerCache(tmp_path / "c.sqlite3", max_mb=0.001) as c:
        assert not c.put("k", answer("z" * 5000))
        assert c.get("k") is None
    assert any("larger than max_mb" in w for w in cache_warnings(warnings))


# ---------------------------------------------------------------- keys


def test_key_is_a_sha256_hex() -> None:
    key = request_key(fields())
    assert len(key) == 64 and int(key, 16) >= 0
    assert request_key(fields()) == key


def test_schema_key_order_and_layout_do_not_matter() -> None:
    a = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "string"}},
         "required": ["x"]}
    b = {"required": ["x"], "properties": {"y": {"type": "string"}, "x": {"type": "integer"}},
         "type": "object"}
    text = json.dumps(b, indent=4)
    keys = {request_key(fields(schema=s)) for s in (a, b, text)}
    assert len(keys) == 1
    c = {**a, "required": ["y"]}
    assert request_key(fields(schema=c)) not in keys
    assert request_key(fields()) not in keys


@pytest.mark.parametrize("change", [
    {"temperature": 0.7}, {"max_tokens": 64}, {"model": "other"}, {"provider": "openai"},
    {"format": "json"}, {"api_mode": "completion"}, {"options": {"stop": ["\n"]}},
])
def test_every_field_that_changes_the_answer_changes_the_key(change: dict) -> None:
    base = {"model": "gemma", "temperature": 0.2, "max_tokens": 32, "format": "markdown",
            "api_mode": "chat"}
    assert request_key(fields(**base)) != request_key(fields(**{**base, **change}))


def test_messages_change_the_key() -> None:
    one = fields("Hello")
    assert request_key(one) != request_key(fields("Hello "))
    sys_msg = RequestFields(messages=(Message("system", "Be brief."), Message("user", "Hello")))
    assert request_key(one) != request_key(sys_msg)
    as_assistant = RequestFields(messages=(Message("assistant", "Hello"),))
    assert request_key(one) != request_key(as_assistant)


def test_equal_requests_written_differently_have_one_key() -> None:
    base = request_key(fields("Hello world", temperature=0.0, provider=None))
    assert request_key(fields("Hello world", temperature=0, provider="cascade")) == base
    mapping = RequestFields(messages=({"content": "Hello world", "role": "user"},),
                            temperature=0.0)
    assert request_key(mapping) == base
    parts = RequestFields(messages=({"role": "user", "content": [
        {"type": "text", "text": "Hello "}, "world"]},), temperature=0.0)
    assert request_key(parts) == base
    opts = [request_key(fields(options={"stop": ["x"], "top_p": 0.9})),
            request_key(fields(options={"top_p": 0.9, "stop": ["x"]}))]
    assert opts[0] == opts[1]


def test_an_image_part_is_kept_in_the_key() -> None:
    img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_img = RequestFields(messages=({"role": "user", "content": ["Look", img]},))
    assert request_key(with_img) != request_key(fields("Look"))


def test_fields_of_a_chat_request() -> None:
    req = ChatRequest.of("Hello", system="Be brief.", temperature=0.3, max_tokens=9,
                         provider="local-gemma")
    f = RequestFields.of(req, model="gemma-3-270m", format="markdown")
    assert f.model == "gemma-3-270m" and f.provider == "local-gemma" and f.max_tokens == 9
    assert request_key(f) != request_key(RequestFields.of(req, model="other"))
    assert f.summary() == "Hello"


def test_a_request_json_cannot_hold_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        request_key(fields(options={"top_p": float("nan")}))


def test_summary_is_the_last_user_message_on_one_line() -> None:
    f = RequestFields(messages=(Message("user", "first"), Message("assistant", "reply"),
                                Message("user", "  second\n\nquestion  " + "z" * 300)))
    s = f.summary()
    assert s.startswith("second question z") and len(s) == 200 and s.endswith("…")


# ---------------------------------------------------------------- modes


def test_settings_validate_and_env_overrides_the_mode() -> None:
    s = CacheConfig(mode="on", ttl_days=3, max_mb=10)
    assert configured_mode(s, {}) == "on"
    assert configured_mode(s, {ENV_VAR: " Replay "}) == "replay"
    assert configured_mode(s, {ENV_VAR: ""}) == "on"
    assert configured_mode(CacheConfig(), {ENV_VAR: "off"}) == "off"
    for bad_env in ("replya", "true", "0"):  # CacheConfig's own rule decides
        with pytest.raises(CacheSettingError, match=f"TIMMY_CACHE_MODE='{bad_env}'") as err:
            configured_mode(s, {ENV_VAR: bad_env})
        assert "\n" not in str(err.value) and isinstance(err.value, TimmyError)
    # one settings type: CacheConfig validates the file's values (and holds the defaults)
    for bad in ({"mode": "sometimes"}, {"ttl_days": 0}, {"ttl_days": float("inf")},
                {"max_mb": -1}, {"max_mb": True}):
        with pytest.raises(ValueError):
            CacheConfig(**bad)
    assert AnswerCache.__init__.__kwdefaults__["max_mb"] == CacheConfig().max_mb


def test_resolve_mode_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "replay")
    assert configured_mode(CacheConfig()) == "replay"


def test_cell_flags() -> None:
    assert cell_mode("off", True) == "on"
    assert cell_mode("replay", True) == "replay"
    assert cell_mode("on", False) == "off"
    assert cell_mode("replay", False) == "off"
    assert cell_mode("replay", None) == "replay"


def test_lookup_and_record_follow_the_mode(cache: AnswerCache) -> None:
    f = fields()
    assert not cache.record(f, result(), "off")
    assert not cache.record(f, result(), "replay")
    assert cache.lookup(f, "off") is None
    assert cache.stats().misses == 0  # off does not touch the cache
    assert not cache.record(f, result("partial", error="idle timeout"), "on")
    assert cache.lookup(f, "on") is None
    assert cache.record(f, result(), "on")
    hit = cache.lookup(f, "replay")
    assert hit is not None and hit.text == "An answer." and hit.summary == f.summary()
    assert hit.created == "2025-06-15T15:06:40+00:00"


def test_a_replay_miss_says_what_and_how(cache: AnswerCache) -> None:
    f = fields("Summarise the quarterly report", provider="local-gemma", model="gemma-3")
    with pytest.raises(ReplayMiss) as err:
        cache.lookup(f, "replay")
    msg = str(err.value)
    assert isinstance(err.value, TimmyError) and "\n" not in msg
    for part in ("Summarise the quarterly report", "local-gemma", "gemma-3",
                 "%llm cache on", "TIMMY_CACHE_MODE=on"):
        assert part in msg
    cascade = str(ReplayMiss.for_request(fields("q")))
    assert "cascade" in cascade and "unavailable" not in msg
    long = str(ReplayMiss.for_request(fields("word " * 100)))
    assert "word " * 15 in long and "word " * 17 not in long and "…" in long


def test_a_hit_as_a_result() -> None:
    r = answer().to_result()
    assert r.ok and r.text == answer().text and r.provider == "local-gemma"
    assert r.usage == answer().usage and r.cached
    assert r.notes == ("answered from the cache: recorded 2025-06-15T"
                       + answer().created[11:16] + " UTC from local-gemma",)
    assert r.footer().startswith("cached · local-gemma · ")


# ---------------------------------------------------------------- secrets


def test_nothing_secret_reaches_the_file(tmp_path: Path) -> None:
    planted = "planted-SECRET-7f3a9c2e41b8d6"
    REDACT.add([planted])
    unregistered = "sk-ant-UNREGISTEREDabcdef123456"
    path = tmp_path / "answers.sqlite3"
    f = fields(f"My key is {planted}, repeat it")
    with AnswerCache(path) as c:
        echoed = result(f"Your key is {planted} and also {unregistered}.")
        assert c.record(f, echoed, "on")
        got = c.lookup(f, "on")
        assert got is not None and planted not in got.text and unregistered not in got.text
        assert planted not in got.summary
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert blob  # the file exists and holds the answer
    assert b"Your key is" in blob
    assert planted.encode() not in blob
    assert unregistered.encode() not in blob


# ---------------------------------------------------------------- damage


@pytest.fixture
def own_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Our own (the default) cache directory, in tmp_path: a damaged file there is ours."""
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda app: str(tmp_path / app))
    own = default_path().parent
    own.mkdir(parents=True)
    return own


def test_a_garbage_file_in_our_cache_dir_is_moved_aside(
        own_dir: Path, warnings: pytest.LogCaptureFixture) -> None:
    path = own_dir / "answers.sqlite3"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    with AnswerCache(path) as c:
        assert c.available
        assert c.put("k", answer()) and c.get("k") == answer()
    aside = list(own_dir.glob("answers.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    found = cache_warnings(warnings)
    assert len(found) == 1 and "moved aside" in found[0] and aside[0].name in found[0]


def test_a_text_file_in_our_cache_dir_is_moved_aside_too(
        own_dir: Path, warnings: pytest.LogCaptureFixture) -> None:
    path = own_dir / "answers.sqlite3"
    path.write_text("this is not a database\n" * 50)
    with AnswerCache(path) as c:
        assert c.put("k", answer())
    assert len(list(own_dir.glob("*.corrupt-*"))) == 1
    assert len(cache_warnings(warnings)) == 1


def test_a_file_elsewhere_that_is_not_ours_is_left_alone(
        tmp_path: Path, warnings: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "answers.sqlite3"
    path.write_text("this is not a database\n" * 50)
    with AnswerCache(path) as c:
        assert not c.available and not c.put("k", answer())
    assert path.read_text() == "this is not a database\n" * 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.sqlite3"]
    found = cache_warnings(warnings)
    assert len(found) == 1 and "left as it is" in found[0]


def test_another_programs_database_is_left_alone(tmp_path: Path,
                                                 warnings: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "answers.sqlite3"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    other.execute("INSERT INTO invoices VALUES (1, 9.5)")
    other.commit()
    other.close()
    with AnswerCache(path) as c:
        assert not c.available and "another program" in (c.problem or "")
        assert not c.put("k", answer())
    assert sqlite3.connect(path).execute("SELECT total FROM invoices").fetchone() == (9.5,)
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert len(cache_warnings(warnings)) == 1


def test_an_unreadable_entry_is_a_miss_and_is_dropped(cache: AnswerCache,
                                                      warnings: pytest.LogCaptureFixture) -> None:
    cache.put("k", answer())
    raw = sqlite3.connect(cache.path)
    raw.execute("UPDATE answers SET value = '{\"text\": 3}'")
    raw.commit()
    raw.close()
    assert cache.get("k") is None
    assert cache.stats().entries == 0
    assert any("unreadable entry" in w for w in cache_warnings(warnings))


@pytest.mark.parametrize("where", ["parent_is_a_file", "path_is_a_directory"])
def test_a_cache_that_cannot_open_is_off(tmp_path: Path, where: str,
                                         warnings: pytest.LogCaptureFixture) -> None:
    if where == "parent_is_a_file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "answers.sqlite3"
    else:
        path = tmp_path / "answers.sqlite3"
        path.mkdir()
    with AnswerCache(path) as c:
        assert not c.available and c.problem
        assert c.get("k") is None and not c.put("k", answer()) and c.clear() == 0
        s = c.stats()
        assert not s.available and "unavailable" in s.lines()[0]
        with pytest.raises(ReplayMiss, match="the cache is unavailable"):
            c.lookup(fields(), "replay")
        assert c.lookup(fields(), "on") is None
    assert len(cache_warnings(warnings)) == 1
    assert path.is_dir() or not path.exists()  # nothing moved, nothing made


_READ_ONLY_CHECK = textwrap.dedent("""
    import json, logging, sys
    from pathlib import Path
    from timmy_magic.cache import AnswerCache, CachedAnswer
    from timmy_magic.model.chat import Timings, Usage
    records = []
    class H(logging.Handler):
        def emit(self, r): records.append(r.getMessage())
    logging.getLogger("timmy_magic.cache").addHandler(H())
    out = {}
    for name in sys.argv[1:]:
        records.clear()
        a = CachedAnswer("t", "p", "m", Usage(), Timings(None, 1.0, None), "2025-01-01")
        c = AnswerCache(Path(name))
        out[name] = {"available": c.available, "put": c.put("k", a),
                     "get": c.get("old") is not None, "warnings": len(records)}
        c.close()
    print(json.dumps(out))
""")


def test_a_read_only_directory_never_raises(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    existing = ro / "existing.sqlite3"
    with AnswerCache(existing) as c:
        c.put("old", answer())
    fresh = ro / "fresh.sqlite3"
    ro.chmod(0o555)
    existing.chmod(0o444)
    try:
        cmd = [sys.executable, "-c", _READ_ONLY_CHECK, str(fresh), str(existing)]
        if os.geteuid() == 0:  # root writes anywhere: drop the capability that allows it
            cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                   "--inh-caps", "-dac_override,-dac_read_search", *cmd]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).parents[2])
    finally:
        ro.chmod(0o755)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out[str(fresh)] == {"available": False, "put": False, "get": False, "warnings": 1}
    assert not fresh.exists()
    old = out[str(existing)]
    assert old == {"available": True, "put": False, "get": True, "warnings": 1}


def test_a_lock_held_past_the_timeout_is_a_warning(tmp_path: Path, clock: Clock,
                                                   warnings: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "answers.sqlite3"
    with AnswerCache(path, busy_timeout_s=0.2, clock=clock) as c:
        c.put("k", answer())
        other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another kernel mid-write, for too long
        try:
            assert not c.put("k2", answer())
            clock.now += DAY
            assert c.get("k") == answer()  # WAL: reads go on; the last-used touch is lost
            assert c.clear() == 0
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert any("locked" in w for w in cache_warnings(warnings))
        assert c.put("k2", answer()) and c.stats().entries == 2


def test_a_full_disk_is_a_warning(cache: AnswerCache,
                                  warnings: pytest.LogCaptureFixture) -> None:
    cache.put("small", answer())
    assert cache._conn is not None
    pages = cache._conn.execute("PRAGMA page_count").fetchone()[0]
    cache._conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    assert not cache.put("big", answer("w" * 200_000))
    assert any("full" in w for w in cache_warnings(warnings))
    assert cache.get("small") == answer()
    assert cache.get("big") is None


def test_from_settings_and_a_value_with_no_counts(tmp_path: Path) -> None:
    s = CacheConfig(path=str(tmp_path / "c.sqlite3"), mode="on", ttl_days=1.5, max_mb=3)
    with AnswerCache.from_settings(s, env={}) as c:
        assert (c.path, c.ttl_days, c.max_mb) == (tmp_path / "c.sqlite3", 1.5, 3)
        bare = answer("Les trois couleurs : 红, 蓝 et jaune.", provider=None, model=None,
                      usage=Usage(), timings=Timings(None, 0.0, None))
        assert c.put("k", bare) and c.get("k") == bare


# ---------------------------------------------------------------- the package


def test_the_public_surface_does_not_drift() -> None:
    from timmy_magic import cache

    assert sorted(cache.__all__) == [
        "APPLICATION_ID", "AnswerCache", "CacheMode", "CacheSettingError", "CacheStats",
        "CachedAnswer", "ENV_VAR", "MODES", "PATH_VAR", "ReplayMiss", "RequestCache",
        "RequestFields", "SUMMARY_CHARS", "canonical_json", "cell_mode", "configured_mode",
        "configured_path", "default_path", "request_key", "request_summary", "sent_settings"]
    assert all(hasattr(cache, name) for name in cache.__all__)


def test_the_cache_imports_nothing_above_it() -> None:
    """Below routing and the features: not even inside a function (grimp sees those)."""
    import grimp

    graph = grimp.build_graph("timmy_magic", cache_dir=None)
    above = ("routing", "context", "batch", "compare", "bench", "notebook")
    for module in graph.find_descendants("timmy_magic.cache") | {"timmy_magic.cache"}:
        imported = graph.find_modules_directly_imported_by(module)
        bad = sorted(m for m in imported
                     if any(m == f"timmy_magic.{a}" or m.startswith(f"timmy_magic.{a}.")
                            for a in above))
        assert not bad, f"{module} imports {bad}"


def test_an_answer_cut_at_the_token_limit_says_so_when_replayed() -> None:
    from timmy_magic.model.chat import Result, RouteTrace
    from timmy_magic.providers.base import LIMIT_NOTE

    cut = Result(text="A circuit breaker stops", provider="p", model="m", usage=Usage(3, 4),
                 trace=RouteTrace(),
                 timings=Timings(0.1, 1.0, 10.0), notes=(LIMIT_NOTE,))
    stored = CachedAnswer.from_result(cut, fields())
    assert stored is not None and stored.at_limit
    replayed = CachedAnswer.from_json(stored.to_json()).to_result()
    assert replayed.cached and LIMIT_NOTE in replayed.notes
    whole = CachedAnswer.from_result(dataclasses.replace(cut, notes=()), fields())
    assert whole is not None and not whole.at_limit
    assert '"at_limit"' not in whole.to_json()  # an answer that was not cut is stored as before
    assert LIMIT_NOTE not in CachedAnswer.from_json(whole.to_json()).to_result().notes
