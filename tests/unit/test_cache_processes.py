"""Two (here three) kernels on one cache file at once: separate processes create it, write
and read at the same time. No "database is locked" reaches a caller, no warning is
logged, and nothing written is lost."""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
from pathlib import Path
from typing import Any

from timmy_magic.cache import AnswerCache, CachedAnswer
from timmy_magic.model.chat import Timings, Usage

WORKERS = 3
PUTS = 150
ROUNDS = 60


def _answer(text: str) -> CachedAnswer:
    return CachedAnswer(text=text, provider="p", model="m", usage=Usage(1, 2),
                        timings=Timings(0.1, 0.2, 10.0), created="2025-01-01T00:00:00+00:00",
                        summary="q")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())


def _kernel(path: str, n: int, barrier: Any, out: Any) -> None:
    """One kernel: opens the (maybe not yet existing) file when all start, then puts its
    own answers and reads its own and the others' as they appear."""
    handler = _Collect()
    logging.getLogger("timmy_magic.cache").addHandler(handler)
    report: dict[str, Any] = {"n": n, "errors": [], "own_misses": 0, "seen_others": 0}
    try:
        barrier.wait(timeout=60)
        with AnswerCache(Path(path)) as cache:
            report["available"] = cache.available
            rng = random.Random(n)
            for i in range(PUTS):
                key = f"{n}-{i}"
                if not cache.put(key, _answer(f"answer {key}")):
                    report["errors"].append(f"put {key} failed")
                got = cache.get(key)
                if got is None or got.text != f"answer {key}":
                    report["own_misses"] += 1
                peer = rng.choice([w for w in range(WORKERS) if w != n])
                other = f"{peer}-{rng.randrange(i + 1)}"
                if cache.get(other) is not None:
                    report["seen_others"] += 1
            report["stats_entries"] = cache.stats().entries
    except BaseException as exc:
        report["errors"].append(f"{type(exc).__name__}: {exc}")
    report["warnings"] = handler.messages
    out.put(report)


def _in_processes(target: Any, where: str) -> list[dict[str, Any]]:
    """``target(where, n, barrier, out)`` in WORKERS spawned processes (separate kernels,
    held at one barrier); their reports, each process checked to have exited cleanly."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(where, n, barrier, out))
             for n in range(WORKERS)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return reports


def test_three_processes_write_and_read_one_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "answers.sqlite3"
    reports = _in_processes(_kernel, str(path))
    for r in reports:
        assert r["available"], r
        assert r["errors"] == [], r
        assert r["warnings"] == [], r
        assert r["own_misses"] == 0, r
    assert sum(r["seen_others"] for r in reports) > 0  # they really overlapped
    with AnswerCache(path) as cache:
        assert cache.stats().entries == WORKERS * PUTS
        for n in range(WORKERS):
            for i in range(PUTS):
                got = cache.get(f"{n}-{i}")
                assert got is not None and got.text == f"answer {n}-{i}"
    assert not list(path.parent.glob("*.corrupt-*"))


def _opener(root: str, n: int, barrier: Any, out: Any) -> None:
    """One kernel opening a fresh file each round, when all the others do."""
    handler = _Collect()
    logging.getLogger("timmy_magic.cache").addHandler(handler)
    failures: list[str] = []
    try:
        for round_ in range(ROUNDS):
            barrier.wait(timeout=60)
            with AnswerCache(Path(root) / f"r{round_}" / "answers.sqlite3") as cache:
                if not cache.available or cache.read_only:
                    failures.append(f"round {round_}: {cache.problem}")
                elif not cache.put(f"{n}", _answer(f"{n}")):
                    failures.append(f"round {round_}: put failed")
    except BaseException as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
    out.put({"n": n, "failures": failures, "warnings": handler.messages})


def test_kernels_creating_one_file_at_the_same_instant_all_get_it(tmp_path: Path) -> None:
    """Kernels opening a file that does not exist yet at the same instant: one creates it
    and switches it to WAL, and SQLite may answer another's switch with "database is
    locked" at once, without its busy handler (CI saw it: a kernel whose cache was off for
    the session). Opening waits that out: every kernel, every round, gets the cache."""
    for r in _in_processes(_opener, str(tmp_path)):
        assert r["failures"] == [] and r["warnings"] == [], r
    for round_ in range(ROUNDS):
        with AnswerCache(tmp_path / f"r{round_}" / "answers.sqlite3") as cache:
            assert cache.stats().entries == WORKERS
