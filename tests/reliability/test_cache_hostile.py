"""The answer cache can't hurt (issue 20): faults a hostile tester reproduced, each tested
as a class.

1. A file that is not ours is never moved, renamed or written, whichever way its path
   came (an untrusted ``./providers.yaml`` cannot even name one: ``cache.path``,
   ``cache.mode`` and ``cache.max_mb`` are held back from it, and said so). Only a file
   provably ours (our SQLite application id, or a damaged SQLite-named file in our own
   cache directory) is moved aside.
2. The cache never breaks a cell: any exception inside it (a path it cannot use, an entry
   nested past the recursion limit, any failure at all) is one warning line and a miss;
   the answer comes live (in replay, a replay miss saying why).
3. No wrong answer is replayed: the key covers the request as the server receives it
   (any two requests the server sees differently have different keys), and an answer
   with no text, a failed, invalid or interrupted one is never recorded.
4. A new cache file is 0600 in directories we make 0700.
5. An entry's summary (a replay miss names it) is the user's request, masked, not the
   notebook context put before it.

Real SQLite files in temporary directories; cells run in a real ``InteractiveShell``
against the loopback fault server (and the script server for a reasoning-only stream).
"""

from __future__ import annotations

import _thread
import errno
import json
import logging
import os
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import FAST_CASCADE, local, sent, wait_for
from tests.support.faultserver import FaultServer
from tests.support.scriptserver import ScriptServer, sse
from timmy_magic import cache as cache_mod
from timmy_magic.cache import (
    AnswerCache,
    CachedAnswer,
    ReplayMiss,
    RequestFields,
    request_key,
)
from timmy_magic.cache import store as store_mod
from timmy_magic.config import parse_config, trust
from timmy_magic.context import INTRO, Context
from timmy_magic.context.items import VarItem
from timmy_magic.model.chat import ChatRequest, Message, Result, RouteTrace, Timings, Usage
from timmy_magic.privacy.redact import REDACT
from timmy_magic.routing.router import Router

SQLITE_MAGIC = b"SQLite format 3\x00"
LIVE = "a live answer"
SLOW_OK = settings(max_examples=40, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def fault() -> Iterator[FaultServer]:
    with FaultServer(cap=20) as srv:
        yield srv


@pytest.fixture
def own_dir(tmp_path_factory: pytest.TempPathFactory,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    """Our own (the default) cache directory, in a temporary directory of its own."""
    import platformdirs

    root = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda app: str(root / app))
    return cache_mod.default_path().parent


@contextmanager
def cache_warnings() -> Iterator[list[str]]:
    """The warning lines the cache logs inside the block."""
    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                got.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("timmy_magic.cache")
    logger.addHandler(handler)
    try:
        yield got
    finally:
        logger.removeHandler(handler)


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int, int, int]]:
    """Every entry under ``root``: its bytes (files), mode, inode and mtime."""
    out: dict[str, tuple[bytes | None, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            s = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(s.st_mode) else None
            out[str(p.relative_to(root))] = (data, s.st_mode, s.st_ino, s.st_mtime_ns)
    return out


def fields(prompt: str = "What is a cache?") -> RequestFields:
    return RequestFields(messages=(Message("user", prompt),), provider="alpha", model="m")


def answer(text: str = "It keeps answers.") -> CachedAnswer:
    return CachedAnswer(text=text, provider="alpha", model="m", usage=Usage(3, 4),
                        timings=Timings(0.1, 0.2, 20.0), created="2025-06-15T00:00:00+00:00",
                        summary="What is a cache?")


def result(text: str = "It keeps answers.", error: str | None = None) -> Result:
    return Result(text=text, provider="alpha", model="m", usage=Usage(3, 4),
                  timings=Timings(0.1, 0.2, 20.0), trace=RouteTrace(), error=error)


def exercise(c: AnswerCache) -> None:
    """Every public method once: none may raise (a ReplayMiss in replay is an answer)."""
    f = fields()
    c.put("k", answer())
    c.get("k")
    c.lookup(f, "on")
    c.record(f, result(), "on")
    try:
        c.lookup(f, "replay")
    except ReplayMiss:
        pass
    c.stats().lines()
    c.clear()
    c.close()


def entries(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM answers").fetchone()[0])


def sqlite_bytes(build: Callable[[sqlite3.Connection], object]) -> bytes:
    """A real SQLite database made by ``build``, as bytes."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "db"
        conn = sqlite3.connect(p)
        build(conn)
        conn.commit()
        conn.close()
        return p.read_bytes()


FOREIGN_DBS = {
    "invoices": sqlite_bytes(lambda c: c.executescript(
        "CREATE TABLE invoices (id INTEGER, total REAL); INSERT INTO invoices VALUES (1, 9.5);")),
    "empty with a header": sqlite_bytes(lambda c: c.execute("PRAGMA user_version = 3")),
    "another application id": sqlite_bytes(lambda c: c.execute("PRAGMA application_id = 7")),
    "an answers table, no application id": sqlite_bytes(lambda c: c.execute(
        "CREATE TABLE answers (key TEXT PRIMARY KEY, value TEXT)")),
}

NOT_OURS = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=1000).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=300).map(lambda b: SQLITE_MAGIC + b),
    st.sampled_from(sorted(FOREIGN_DBS)).map(FOREIGN_DBS.__getitem__),
)


def run(shell: InteractiveShell, source: str) -> tuple[Any, str]:
    with capture_output() as cap:
        res = shell.run_cell(source)  # type: ignore[no-untyped-call]
    return res, cap.stdout + cap.stderr + "".join(repr(o.data) for o in cap.outputs)


def write_config(path: Path, providers: list[dict[str, Any]], **top: Any) -> Path:
    doc = {"cascade": {**FAST_CASCADE, **top.pop("cascade", {})}, **top,
           "providers": providers}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def chats(srv: FaultServer) -> int:
    return len(sent(srv))


# ------------------------------------------------------------------ 1. not ours: untouched


@given(content=NOT_OURS, name=st.sampled_from(
    ["notes.txt", "answers.sqlite3", "data.db", ".bashrc", "report.sqlite"]))
@SLOW_OK
def test_a_file_that_is_not_ours_is_never_moved_renamed_or_written(
        own_dir: Path, content: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / name).write_bytes(content)
        before = snapshot(root)
        with cache_warnings() as warned:
            c = AnswerCache(root / name)
            available = c.available
            exercise(c)
        assert snapshot(root) == before  # not moved, renamed, written, nothing beside it
        assert not available
        opened = [w for w in warned if "cannot be used" in w]
        assert len(opened) == 1 and "left as it is" in opened[0], warned
        assert all("\n" not in w for w in warned)


def test_a_damaged_cache_of_ours_is_moved_aside_wherever_it_is(tmp_path: Path) -> None:
    """Ours by its header (our application id), the rest damaged: moved aside whole."""
    path = tmp_path / "anywhere.bin"
    with AnswerCache(path) as c:
        for i in range(50):
            c.put(f"k{i}", answer("x" * 500))
    data = bytearray(path.read_bytes())
    assert int.from_bytes(data[68:72], "big") == cache_mod.APPLICATION_ID
    data[100:1024] = b"\xff" * 924  # page 1 (the schema) destroyed, the header kept
    path.write_bytes(bytes(data))
    with cache_warnings() as warned, AnswerCache(path) as c:
        assert c.available and c.put("k", answer()) and c.get("k") == answer()
    aside = list(tmp_path.glob("anywhere.bin.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data)
    assert len(warned) == 1 and "moved aside" in warned[0], warned


@given(content=st.one_of(st.binary(max_size=2000), st.just(b""),
                         st.binary(max_size=200).map(lambda b: SQLITE_MAGIC + b)),
       name=st.sampled_from(["answers.sqlite3", "tutorial.sqlite3", "old.db"]))
@SLOW_OK
def test_a_damaged_file_in_our_own_cache_dir_is_moved_aside(own_dir: Path, content: bytes,
                                                            name: str) -> None:
    own_dir.mkdir(parents=True, exist_ok=True)
    path = own_dir / name
    path.write_bytes(content)
    try:
        with cache_warnings() as warned, AnswerCache(path) as c:
            assert c.available and c.put("k", answer()) and c.get("k") == answer()
        aside = list(own_dir.glob(f"{name}.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == content
        assert len(warned) == 1 and "moved aside" in warned[0], warned
    finally:
        for p in own_dir.iterdir():
            p.unlink()


@pytest.mark.parametrize("name, content", [
    ("gemma-3-270m-q4_k_m.gguf", b"GGUF" + bytes(range(256)) * 4),  # local.py keeps it here
    ("answers.sqlite3", FOREIGN_DBS["invoices"]),  # a real database, not ours: not damaged
    ("answers.sqlite3", FOREIGN_DBS["another application id"]),
])
def test_what_is_not_a_damaged_cache_stays_even_in_our_own_cache_dir(
        own_dir: Path, name: str, content: bytes) -> None:
    own_dir.mkdir(parents=True)
    (own_dir / name).write_bytes(content)
    before = snapshot(own_dir)
    with cache_warnings() as warned:
        c = AnswerCache(own_dir / name)
        assert not c.available
        exercise(c)
    assert snapshot(own_dir) == before
    assert len(warned) == 1 and "left as it is" in warned[0]


CACHE_KEYS = st.fixed_dictionaries({}, optional={
    "path": st.sampled_from(["~/notes.txt", "/etc/passwd", "answers.sqlite3"]),
    "mode": st.sampled_from(["on", "replay", "off", True, False]),
    "max_mb": st.sampled_from([0.01, 5, 200]),
    "ttl_days": st.sampled_from([1, 30]),
})


@given(cache=CACHE_KEYS)
@settings(max_examples=60, deadline=None)
def test_an_untrusted_file_cannot_set_the_cache_path_mode_or_size(cache: dict[str, Any]) -> None:
    doc = yaml.safe_dump({"cache": cache, "providers": []})
    untrusted = parse_config(doc, source="clone/providers.yaml", trusted=False)
    c = untrusted.cache
    assert (c.path, c.mode, c.max_mb) == (None, "off", 200.0)
    assert c.ttl_days == cache.get("ttl_days")  # harmless: it only decides what is served
    held = {h for h in untrusted.held_back if h.startswith("cache ")}
    expected = {f"cache {k}" for k in ("path", "mode", "max_mb") if k in cache
                and not (k == "mode" and cache[k] in (False, "off"))}
    assert held == expected
    if held:
        line = untrusted.held_back_line
        assert "is not trusted: held back" in line and "%llm trust" in line
        assert all(h in line for h in held)
    trusted = parse_config(doc, source="mine.yaml", trusted=True)
    assert not trusted.held_back
    assert trusted.cache.path == cache.get("path")
    assert trusted.cache.max_mb == float(cache.get("max_mb", 200.0))


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_dir: Path) -> Path:
    """A user's home (``~``) holding notes.txt, a private config dir (the trust store),
    and the kernel in a cloned repository: no TIMMY_PROVIDERS, no cache variables."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("my notes, not a database\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for var in ("TIMMY_PROVIDERS", "TIMMY_CACHE_PATH", "TIMMY_CACHE_MODE"):
        monkeypatch.delenv(var, raising=False)
    assert trust.config_dir().is_relative_to(tmp_path)
    work = tmp_path / "clone"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def test_a_cloned_repos_config_cannot_point_the_cache_at_a_users_file(
        shell: InteractiveShell, fault: FaultServer, clone: Path, own_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    write_config(Path("providers.yaml"), [local("alpha", fault.base_url("ok", text=LIVE))],
                 cache={"path": "~/notes.txt", "mode": "on"})
    before = snapshot(clone)
    fault.reset()
    _, loaded = run(shell, "%load_ext timmy_magic")
    assert "held back cache path, cache mode" in loaded and "%llm trust" in loaded, loaded
    for _ in range(2):
        res, shown = run(shell, "%%llm\nWhat is a cache?")
        assert res.error_in_exec is None and LIVE in shown and "Traceback" not in shown
    assert chats(fault) == 2  # the cache is off: both went out
    assert snapshot(clone) == before and not own_dir.exists()

    # trusted, the file may name the path; the file there is not ours: still untouched
    caplog.set_level(logging.WARNING, logger="timmy_magic.cache")
    _, trusted = run(shell, "%llm trust")
    assert "Trusted " in trusted, trusted
    for _ in range(2):
        res, shown = run(shell, "%%llm\nWhat is a cache?")
        assert res.error_in_exec is None and LIVE in shown and "Traceback" not in shown
    assert chats(fault) == 4
    assert snapshot(clone) == before
    said = [r.getMessage() for r in caplog.records if r.name == "timmy_magic.cache"]
    assert len(said) == 1 and "notes.txt" in said[0] and "left as it is" in said[0], said


def test_the_cache_path_variable_naming_a_users_file_leaves_it_alone(
        shell: InteractiveShell, fault: FaultServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    notes = tmp_path / "docs" / "notes.md"
    notes.parent.mkdir()
    notes.write_text("# my notes\n")
    before = snapshot(notes.parent)
    monkeypatch.setenv("TIMMY_CACHE_PATH", str(notes))
    monkeypatch.setenv("TIMMY_CACHE_MODE", "on")
    monkeypatch.setenv("TIMMY_PROVIDERS", str(write_config(
        tmp_path / "p.yaml", [local("alpha", fault.base_url("ok", text=LIVE))])))
    caplog.set_level(logging.WARNING, logger="timmy_magic.cache")
    run(shell, "%load_ext timmy_magic")
    res, shown = run(shell, "%%llm\nhello")
    assert res.error_in_exec is None and LIVE in shown
    _, stats = run(shell, "%llm cache stats")
    assert "unavailable" in stats and "left as it is" in stats, stats
    assert snapshot(notes.parent) == before


# ------------------------------------------------------------------ 2. never breaks a cell


def _too_long_name(root: Path) -> Path:
    return root / ("n" * 300 + ".sqlite3")


def _too_long_dir(root: Path) -> Path:
    return root / ("d" * 256) / "answers.sqlite3"


def _under_a_file(root: Path) -> Path:
    (root / "plain-file").write_text("x")
    return root / "plain-file" / "sub" / "answers.sqlite3"


def _a_directory(root: Path) -> Path:
    (root / "answers.sqlite3").mkdir()
    return root / "answers.sqlite3"


def _a_fifo(root: Path) -> Path:
    os.mkfifo(root / "answers.sqlite3")
    return root / "answers.sqlite3"


def _unknown_user(root: Path) -> Path:
    return Path("~no-such-user-7f3a/answers.sqlite3")


def _nul_byte(root: Path) -> Path:
    return root / "ans\x00wers.sqlite3"


def _dangling_link(root: Path) -> Path:
    (root / "answers.sqlite3").symlink_to(root / "missing" / "target.sqlite3")
    return root / "answers.sqlite3"


BAD_PATHS = [_too_long_name, _too_long_dir, _under_a_file, _a_directory, _a_fifo,
             _unknown_user, _nul_byte, _dangling_link]


@pytest.mark.parametrize("make", BAD_PATHS, ids=lambda f: f.__name__.strip("_"))
def test_a_path_the_cache_cannot_use_is_one_warning_and_every_call_a_miss(
        tmp_path: Path, make: Callable[[Path], Path]) -> None:
    """Root gets past permissions, so these are paths nobody can use as a file."""
    path = make(tmp_path)
    before = snapshot(tmp_path)
    with cache_warnings() as warned:
        c = AnswerCache(path)
        assert not c.available and c.problem
        assert c.lookup(fields(), "on") is None and not c.record(fields(), result(), "on")
        with pytest.raises(ReplayMiss, match="the cache is unavailable"):
            c.lookup(fields(), "replay")
        exercise(c)
    assert len(warned) == 1 and "cannot be used" in warned[0], warned
    assert snapshot(tmp_path) == before


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
HOSTILE_VALUE = st.one_of(
    st.integers(2_000, 200_000).map(lambda n: "[" * n + "]" * n),
    st.integers(2_000, 100_000).map(lambda n: json.dumps({"text": "x"})[:-1] + ', "usage": '
                                    + "{\"a\":" * n + "1" + "}" * n + "}"),
    st.integers(2_000, 50_000).map(lambda n: '{"text": ' + "[" * n + "]" * n + "}"),
    _JSON.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.integers(-2**63, 2**63 - 1),  # what a SQLite INTEGER holds (an author can write)
    st.floats(allow_nan=False),  # SQLite stores NaN as NULL, which the column refuses
    st.just(answer("").to_json()),
    st.just(answer(" \n\t ").to_json()),
)
HOSTILE_TIME = st.one_of(st.floats(allow_nan=False), st.integers(-2**62, 2**62),
                         st.text(max_size=10), st.binary(max_size=10))


@given(value=HOSTILE_VALUE, created=HOSTILE_TIME, last_used=HOSTILE_TIME)
@SLOW_OK
def test_a_hostile_entry_in_a_replay_file_is_a_miss_never_an_exception(
        value: Any, created: Any, last_used: Any) -> None:
    """A replay file committed to a repository holds whatever its author put there."""
    f = fields()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "replay.sqlite3"
        with AnswerCache(path):
            pass
        with sqlite3.connect(path) as raw:
            raw.execute("INSERT INTO answers (key, value, created, last_used, size) VALUES "
                        "(?, ?, ?, ?, 1)", (request_key(f), value, created, last_used))
        with AnswerCache(path) as c:
            hit = c.lookup(f, "on")
            assert hit is None or hit.text.strip()
            try:
                hit = c.lookup(f, "replay")
                assert hit is not None and hit.text.strip()
            except ReplayMiss:
                pass
            exercise(c)
        with AnswerCache(path) as c:  # and the file still works
            assert c.put("k", answer()) and c.get("k") == answer()


FAILURES = [OSError(errno.ENAMETOOLONG, "File name too long"), RecursionError("deep"),
            sqlite3.DatabaseError("database disk image is malformed"), ValueError("v"),
            TypeError("t"), KeyError("k"), RuntimeError("r\nwith a second line"),
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
            AttributeError("a"), MemoryError()]
# (public call, the private step made to fail, what the call gives instead)
CALLS: list[tuple[str, Callable[[AnswerCache], Any], str, Any]] = [
    ("get", lambda c: c.get("k"), "_get", None),
    ("put", lambda c: c.put("k", answer()), "_evict", False),  # inside the transaction
    ("lookup", lambda c: c.lookup(fields(), "on"), "_get", None),
    ("record", lambda c: c.record(fields(), result(), "on"), "_evict", False),
    ("clear", lambda c: c.clear(), "_write", 0),
    ("stats", lambda c: c.stats().entries, "_file_bytes", 0),
]


@given(failure=st.sampled_from(FAILURES), call=st.sampled_from(CALLS))
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_exception_inside_the_cache_is_one_warning_line_and_a_miss(
        monkeypatch: pytest.MonkeyPatch, failure: BaseException,
        call: tuple[str, Callable[[AnswerCache], Any], str, Any]) -> None:
    name, do, step, instead = call

    def fail(*_a: Any, **_k: Any) -> Any:
        raise failure

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.sqlite3"
        with AnswerCache(path) as c:
            c.put("k", answer())
            c.record(fields(), result(), "on")
            with monkeypatch.context() as m, cache_warnings() as warned:
                m.setattr(AnswerCache, step, fail)
                assert do(c) == instead
                if name in ("get", "lookup"):
                    with pytest.raises(ReplayMiss):
                        c.lookup(fields(), "replay")
            assert len(warned) >= 1 and all("\n" not in w for w in warned), warned
            # nothing left locked or half done: another kernel writes, this one still works
            other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            other.close()
            assert c.put("k2", answer()) and c.get("k2") == answer()


def test_a_failing_lookup_in_replay_is_a_replay_miss_that_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deep(*_a: Any) -> str:
        raise RecursionError("maximum recursion depth exceeded")

    with AnswerCache(tmp_path / "c.sqlite3") as c:
        monkeypatch.setattr(store_mod, "request_key", deep)
        assert c.lookup(fields(), "on") is None
        with pytest.raises(ReplayMiss, match="maximum recursion depth"):
            c.lookup(fields(), "replay")


@pytest.fixture
def loaded(shell: InteractiveShell, fault: FaultServer, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], InteractiveShell]:
    """The extension loaded with the cache at the path given, on, and one provider."""
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)

    def load(path: Path) -> InteractiveShell:
        monkeypatch.setenv("TIMMY_CACHE_PATH", str(path))
        monkeypatch.setenv("TIMMY_PROVIDERS", str(write_config(
            tmp_path / "providers.yaml", [local("alpha", fault.base_url("ok", text=LIVE))])))
        run(shell, "%load_ext timmy_magic")
        run(shell, "%llm cache on")
        fault.reset()
        return shell

    return load


@pytest.mark.parametrize("make", [_too_long_name, _under_a_file, _unknown_user],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_cell_with_a_cache_it_cannot_use_answers_live(
        loaded: Callable[[Path], InteractiveShell], fault: FaultServer, tmp_path: Path,
        make: Callable[[Path], Path]) -> None:
    shell = loaded(make(tmp_path))
    for source in ("%%llm\nWhat is a cache?", "%%llm -p alpha\nWhat is a cache?"):
        res, shown = run(shell, source)
        assert res.error_in_exec is None and LIVE in shown and "Traceback" not in shown
    assert chats(fault) == 2
    for line in ("%llm cache stats", "%llm cache clear"):
        res, shown = run(shell, line)
        assert res.error_in_exec is None and "Traceback" not in shown, shown
    run(shell, "%llm cache replay")
    res, shown = run(shell, "%%llm\nWhat is a cache?")
    assert res.error_in_exec is None and "replay: no recorded answer" in shown
    assert "unavailable" in shown and chats(fault) == 2


def test_a_recorded_entry_nested_past_the_limit_is_a_miss_in_the_cell(
        loaded: Callable[[Path], InteractiveShell], fault: FaultServer,
        tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite3"
    shell = loaded(path)
    run(shell, "%%llm\nWhat is a cache?")
    assert chats(fault) == 1 and entries(path) == 1
    with sqlite3.connect(path) as raw:  # a replay file someone committed
        raw.execute("UPDATE answers SET value = ?", ("[" * 100_000 + "]" * 100_000,))
    res, shown = run(shell, "%%llm\nWhat is a cache?")
    assert res.error_in_exec is None and LIVE in shown and "Traceback" not in shown
    assert chats(fault) == 2  # asked live
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE answers SET value = ?", ("[" * 100_000 + "]" * 100_000,))
    run(shell, "%llm cache replay")
    res, shown = run(shell, "%%llm\nWhat is a cache?")
    assert res.error_in_exec is None and "replay: no recorded answer" in shown
    assert "Traceback" not in shown and chats(fault) == 2


# ------------------------------------------------------------------ 3. no wrong answer


MODEL = st.fixed_dictionaries({"name": st.just("m")}, optional={
    "max_tokens": st.sampled_from([5, 500]),
    "temperature": st.sampled_from([0.0, 0.7]),
    "stop": st.sampled_from([["\n\n"], ["END"]]),
    "params": st.sampled_from([{"top_k": 1}, {"seed": 7}]),
})
SETUP = st.tuples(
    MODEL,
    st.fixed_dictionaries({}, optional={"default_max_tokens": st.sampled_from([None, 5, 500])}),
    st.fixed_dictionaries({}, optional={"max_tokens": st.sampled_from([5, 64]),
                                        "temperature": st.sampled_from([0.0, 0.7])}),
    st.booleans(),  # pinned to the provider, or through the cascade
)


@given(a=SETUP, b=SETUP)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_two_requests_the_server_sees_differently_never_share_a_key(
        fault: FaultServer, a: Any, b: Any,
        seen: dict[str, tuple[Any, str]]) -> None:
    """The key covers the request as sent: every default applied (the model's
    max_tokens and temperature, cascade.default_max_tokens), the model's stop and params.
    The body is what the loopback server received from the real router."""
    body_a, key_a = _sent_and_key(fault, a, seen)
    body_b, key_b = _sent_and_key(fault, b, seen)
    if body_a != body_b:
        assert key_a != key_b, (body_a, body_b)


@pytest.fixture(scope="module")
def seen() -> dict[str, tuple[Any, str]]:
    """(body, key) of each set-up already sent (each costs a router and a request)."""
    return {}


def _sent_and_key(fault: FaultServer, setup: Any,
                  seen: dict[str, tuple[Any, str]]) -> tuple[Any, str]:
    memo = json.dumps(setup, sort_keys=True)
    if memo in seen:
        return seen[memo]
    model, cascade, ask, pinned = setup
    doc = {"cascade": {**FAST_CASCADE, **cascade},
           "providers": [local("alpha", fault.base_url("ok", text=LIVE), models=[model])]}
    cfg = parse_config(yaml.safe_dump(doc), source="p.yaml")
    req = ChatRequest((Message("user", "What is a cache?"),),
                      provider="alpha" if pinned else None, **ask)
    router = Router(cfg)
    try:
        fault.reset()
        assert router.complete(req).text == LIVE
        body = sent(fault)[-1]
    finally:
        router.close()
    seen[memo] = body, request_key(RequestFields.resolved(req, cfg, "markdown"))
    return seen[memo]


CHANGES = [  # (what, the setting as recorded, the setting changed)
    ("model max_tokens", {"models": [{"name": "m", "max_tokens": 5}]},
     {"models": [{"name": "m", "max_tokens": 500}]}),
    ("cascade default_max_tokens", {"cascade": {"default_max_tokens": 5}},
     {"cascade": {"default_max_tokens": 500}}),
    ("model temperature", {"models": [{"name": "m", "temperature": 0.0}]},
     {"models": [{"name": "m", "temperature": 0.9}]}),
    ("model stop", {"models": [{"name": "m", "stop": ["\n\n"]}]},
     {"models": [{"name": "m", "stop": ["END"]}]}),
    ("model params", {"models": [{"name": "m", "params": {"top_k": 1}}]},
     {"models": [{"name": "m", "params": {"top_k": 40}}]}),
    ("default model", {"models": [{"name": "m"}, {"name": "n"}]},
     {"models": [{"name": "m"}, {"name": "n", "default": True}]}),
]


@pytest.mark.parametrize("cell", ["%%llm -p alpha\nWhat is a cache?",
                                  "%%llm\nWhat is a cache?"], ids=["pinned", "cascade"])
@pytest.mark.parametrize("what, recorded, changed", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_changed_setting_then_reload_asks_again_instead_of_replaying(
        shell: InteractiveShell, fault: FaultServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, cell: str, what: str,
        recorded: dict[str, Any], changed: dict[str, Any]) -> None:
    monkeypatch.setenv("TIMMY_CACHE_PATH", str(tmp_path / "answers.sqlite3"))
    monkeypatch.setenv("TIMMY_CACHE_MODE", "on")
    path = tmp_path / "providers.yaml"

    def config(setting: dict[str, Any]) -> None:
        top = {k: v for k, v in setting.items() if k == "cascade"}
        extra = {k: v for k, v in setting.items() if k != "cascade"}
        write_config(path, [local("alpha", fault.base_url("ok", text=LIVE), **extra)], **top)

    config(recorded)
    monkeypatch.setenv("TIMMY_PROVIDERS", str(path))
    run(shell, "%load_ext timmy_magic")
    fault.reset()
    run(shell, cell)
    run(shell, cell)
    assert chats(fault) == 1  # recorded, then a hit
    config(changed)
    run(shell, f"%llm reload {path}")
    res, shown = run(shell, cell)
    assert res.error_in_exec is None and "cached ·" not in shown
    assert chats(fault) == 2, f"{what}: the answer recorded before was replayed"
    assert sent(fault)[0] != sent(fault)[1]  # the server saw another request
    config(recorded)
    run(shell, f"%llm reload {path}")
    run(shell, cell)
    assert chats(fault) == 2  # as recorded again: a hit


REASONING_ONLY = [
    sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
    sse({"choices": [{"index": 0, "delta": {"reasoning_content": "Let me think. "}}]}),
    sse({"choices": [{"index": 0, "delta": {"reasoning_content": "Done thinking."}}]}),
    sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
    sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 64}}),
    b"data: [DONE]\n\n",
]


@pytest.fixture(scope="module")
def script() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        srv.script(REASONING_ONLY)
        yield srv


@pytest.mark.parametrize("kind", ["usage only", "whitespace only", "end marker only",
                                  "reasoning only", "failed midway", "invalid for the schema",
                                  "interrupted"])
def test_an_answer_without_text_or_not_whole_is_never_recorded(
        shell: InteractiveShell, fault: FaultServer, script: ScriptServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    url = {"usage only": fault.base_url("ok", text=""),
           "whitespace only": fault.base_url("ok", text=" \n\n "),
           "end marker only": fault.base_url("empty_stream"),
           "reasoning only": script.url,
           "failed midway": fault.base_url("drop_mid_stream", tokens=2),
           "invalid for the schema": fault.base_url("sequence", texts='["not json"]'),
           "interrupted": fault.base_url("drip", tokens=40, interval=0.15)}[kind]
    cache_path = tmp_path / "answers.sqlite3"
    monkeypatch.setenv("TIMMY_CACHE_PATH", str(cache_path))
    monkeypatch.setenv("TIMMY_CACHE_MODE", "on")
    monkeypatch.setenv("TIMMY_PROVIDERS", str(write_config(
        tmp_path / "providers.yaml", [local("alpha", url)])))
    run(shell, "%load_ext timmy_magic")
    shell.user_ns["shape"] = {"type": "object", "properties": {"a": {"type": "integer"}},
                              "required": ["a"]}
    cell = ("%%llm -p alpha --schema shape\nGive a." if kind == "invalid for the schema"
            else "%%llm -p alpha\nWhat is a cache?")
    fault.reset()
    before = script.chats
    for _ in range(2):
        if kind == "interrupted":
            _interrupt_after_two_tokens()
        _, shown = run(shell, cell)
        assert "cached ·" not in shown
    asked = script.chats - before if kind == "reasoning only" else chats(fault)
    if kind == "invalid for the schema":
        asked //= 2  # asked again once with the error, each time
    assert asked == 2, f"{kind}: the second run was answered from the cache"
    assert entries(cache_path) == 0


def _interrupt_after_two_tokens() -> None:
    from timmy_magic import notebook as magics

    ext = magics.extension()

    def interrupt() -> None:
        if wait_for(lambda: ext.active is not None and len(ext.active.parts) >= 2, 10):
            _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()


@given(text=st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2028\u3000", max_size=20))
@settings(max_examples=30, deadline=None)
def test_no_text_is_never_a_value(text: str) -> None:
    assert CachedAnswer.from_result(result(text), fields()) is None
    with tempfile.TemporaryDirectory() as d, AnswerCache(Path(d) / "c.sqlite3") as c:
        assert not c.record(fields(), result(text), "on")
        assert c.stats().entries == 0


# ------------------------------------------------------------------ 4. file modes


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_a_new_cache_is_0600_in_directories_made_0700(tmp_path: Path, umask: int) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "a" / "b" / "answers.sqlite3"
    old = os.umask(umask)
    try:
        with AnswerCache(path) as c:
            assert c.put("k", answer())
            made = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
            assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in made} == {
                p.name: 0o600 for p in made}
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # not ours to change
    assert sorted(p.name for p in path.parent.iterdir()) == ["answers.sqlite3"]


# ------------------------------------------------------------------ 5. the summary


VAR_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=300)


@given(prompt=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=400)
       .filter(lambda p: "### Request" not in p and p.strip()),
       values=st.lists(st.tuples(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
                                 VAR_TEXT), max_size=3))
@settings(max_examples=80, deadline=None)
def test_the_summary_is_the_users_request_not_the_context(
        prompt: str, values: list[tuple[str, str]]) -> None:
    items = tuple(VarItem(name=n, text=t) for n, t in values)
    ctx = Context(prompt, items=items, system="Be brief.")
    summary = RequestFields(messages=ctx.as_messages()).summary()
    expected = " ".join(REDACT(prompt).split())
    if len(expected) > cache_mod.SUMMARY_CHARS:
        expected = expected[: cache_mod.SUMMARY_CHARS - 1] + "…"
    assert summary == expected
    assert not summary.startswith(INTRO[:20]) or prompt.startswith(INTRO[:20])


def test_a_secret_in_the_request_is_masked_in_the_summary() -> None:
    planted = "planted-SUMMARY-SECRET-9c1e77ab"
    REDACT.add([planted])
    f = RequestFields(messages=Context(f"use {planted} please", items=(
        VarItem(name="x", text="1"),)).as_messages())
    assert planted not in f.summary() and f.summary().startswith("use ")
    assert planted not in str(ReplayMiss.for_request(f))


def test_a_replay_miss_names_the_users_request(
        shell: InteractiveShell, fault: FaultServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMMY_CACHE_PATH", str(tmp_path / "answers.sqlite3"))
    monkeypatch.setenv("TIMMY_CACHE_MODE", "replay")
    monkeypatch.setenv("TIMMY_PROVIDERS", str(write_config(
        tmp_path / "providers.yaml", [local("alpha", fault.base_url("ok", text=LIVE))])))
    run(shell, "%load_ext timmy_magic")
    shell.user_ns["rows"] = list(range(50))
    res, shown = run(shell, "%%llm --vars rows\nHow many rows are there?")
    assert res.error_in_exec is None and "replay: no recorded answer" in shown
    assert "How many rows are there?" in shown and "Context from the user" not in shown
