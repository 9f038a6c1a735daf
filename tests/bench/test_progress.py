"""How a benchmark reports its progress (``model.progress.Progress``): the words, the
display ``bench.run`` picks by itself (no notebook layer: a terminal line or nothing), and
what a display is told during a real run against the fault server."""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.bench.conftest import MakeRouter, fault_provider
from tests.support.faultserver import FaultServer
from timmy_magic import bench
from timmy_magic.bench.progress import pick_progress, progress_line, summary_line
from timmy_magic.model.progress import TerminalLine


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Recorder:
    """A display that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def start(self, total: int) -> None:
        self.calls.append(("start", total))

    def advance(self, done: int, line: str) -> None:
        self.calls.append(("advance", done, line))

    def finish(self, done: int, line: str) -> None:
        self.calls.append(("finish", done, line))


def test_the_lines_say_how_far_and_where() -> None:
    assert progress_line(12, 40, "fast · c=4 · 3/8") == "12/40 requests · fast · c=4 · 3/8"
    assert summary_line(27, 27, 5.71, False) == "ran 27/27 requests in 5.7 s"
    assert summary_line(3, 12, 2.5, True) == "interrupted after 3/12 requests in 2.5 s"


def test_auto_is_a_terminal_line_on_a_terminal_and_nothing_elsewhere() -> None:
    tty = Tty()
    line = pick_progress("auto", tty)
    assert isinstance(line, TerminalLine) and line.stream is tty
    assert pick_progress("auto", io.StringIO()) is None  # a kernel's stderr, a pipe, a file
    for quiet in ("none", False, None):
        assert pick_progress(quiet) is None
    for text in ("text", True):
        assert isinstance(pick_progress(text, io.StringIO()), TerminalLine)
    mine = Recorder()
    assert pick_progress(mine) is mine


def test_an_unknown_mode_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"progress='widget': expected 'auto', 'text'.*"
                                         r"make_progress\('bench'\)"):
        pick_progress("widget")  # type: ignore[arg-type]


def test_a_run_starts_advances_and_finishes_its_display(fault: FaultServer,
                                                        make_router: MakeRouter) -> None:
    router = make_router([fault_provider(fault, "a", tokens=3, delay=0.05)])
    shown = Recorder()
    res = bench.run(router, ["a"], concurrency=(1, 2), n=3, max_tokens=3, warmup=1,
                    progress=shown)
    assert [r["completed"] for r in res.records] == [3, 3]
    first, *middle, last = shown.calls
    assert first == ("start", 7)
    assert middle, "the display was never redrawn"
    assert all(c[0] == "advance" and c[2].startswith(f"{c[1]}/7 requests · ")
               for c in middle)
    assert len({c[2] for c in middle}) == len(middle)  # redrawn only when the line changed
    assert [c[1] for c in middle] == sorted(c[1] for c in middle)
    assert last[:2] == ("finish", 7) and last[2].startswith("ran 7/7 requests in ")


def test_text_mode_leaves_one_terminal_line(fault: FaultServer, make_router: MakeRouter,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    router = make_router([fault_provider(fault, "a", tokens=2)])
    bench.run(router, ["a"], n=2, max_tokens=2, warmup=0, progress="text")
    err = capsys.readouterr().err
    assert err.startswith("\r") and err.endswith("\033[K\n") and err.count("\n") == 1
    assert err.rsplit("\r", 1)[1].startswith("bench: ran 2/2 requests in ")
