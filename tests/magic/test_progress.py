"""The progress displays of ``notebook.progress`` (what ``timmy_magic.map`` draws): a
widget bar where a front end shows displays, a display line updated in place without
ipywidgets, one rewritten terminal line otherwise."""

from __future__ import annotations

import builtins
import io
from typing import Any

import pytest
from IPython.utils.capture import capture_output

from timmy_magic.notebook.display.progress import (
    DisplayLine,
    TerminalLine,
    WidgetBar,
    make_progress,
)


def test_a_terminal_line_is_rewritten_in_place_and_ended_once() -> None:
    out = io.StringIO()
    line = TerminalLine("map", out)
    line.start(3)
    line.advance(1, "1/3 rows")
    line.finish(3, "3/3 rows · 0.1s")
    assert out.getvalue() == ("\rmap: 1/3 rows\033[K"
                              "\rmap: 3/3 rows · 0.1s\033[K\n")


def test_outside_a_front_end_the_display_is_a_terminal_line(shell: Any) -> None:
    assert isinstance(make_progress("map", shell), TerminalLine)


def test_in_a_front_end_the_display_is_a_widget_bar_green_at_the_end(shell: Any) -> None:
    with capture_output() as cap:
        bar = make_progress("map", shell)
        assert isinstance(bar, WidgetBar)
        bar.start(4)
        bar.advance(2, "2/4 rows · ETA 0:01")
        assert bar.bar.value == 2 and bar.bar.bar_style == ""
        bar.finish(4, "4/4 rows · 1 error <b>")
    assert len(cap.outputs) == 1  # one display: the bar and its label
    assert "application/vnd.jupyter.widget-view+json" in cap.outputs[0].data
    assert (bar.bar.value, bar.bar.max, bar.bar.description) == (4, 4, "map")
    assert bar.bar.bar_style == "success"
    assert "4/4 rows" in bar.label.value and "<b>" not in bar.label.value


def test_without_ipywidgets_the_display_is_one_line_updated_in_place(
        shell: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_widgets(name: str, *args: Any, **kw: Any) -> Any:
        if name == "ipywidgets":
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_widgets)
    with capture_output() as cap:
        line = make_progress("map", shell)
        assert isinstance(line, DisplayLine)
        line.start(2)
        line.advance(1, "1/2 rows")
        line.finish(2, "2/2 rows · 0.2s")
    ids = {o.transient["display_id"] for o in cap.outputs}
    assert len(ids) == 1 and cap.outputs[-1].update
    assert cap.outputs[-1].data == {"text/plain": "map: 2/2 rows · 0.2s"}


def test_a_run_that_stops_short_finishes_amber(shell: Any) -> None:
    with capture_output():
        bar = make_progress("map", shell)
        assert isinstance(bar, WidgetBar)
        bar.start(5)
        bar.finish(2, "2/5 rows · interrupted")
    assert bar.bar.bar_style == "warning" and bar.bar.value == 2


def test_a_bar_can_leave_its_last_line_as_text(shell: Any) -> None:
    """What ``%llm bench`` asks for: the saved notebook keeps ``bench: ...`` as text, not a
    closed widget it can no longer show."""
    with capture_output() as cap:
        bar = make_progress("bench", shell, leave_line=True)
        assert isinstance(bar, WidgetBar)
        bar.start(3)
        bar.advance(1, "1/3 requests · fast · c=1")
        bar.finish(3, "ran 3/3 requests in 0.4 s")
    first, last = cap.outputs
    assert "application/vnd.jupyter.widget-view+json" in first.data
    assert last.update and last.transient == first.transient
    assert last.data == {"text/plain": "bench: ran 3/3 requests in 0.4 s"}
    assert bar.bar.bar_style == "success" and bar.box.comm is None  # closed


def test_a_terminal_line_shows_a_name_as_text_on_one_line() -> None:
    out = io.StringIO()
    TerminalLine("bench", out).finish(1, "1/1 requests · evil\x1b[2J\nname")
    assert out.getvalue() == "\rbench: 1/1 requests · evil\ufffd[2J name\033[K\n"
