"""How a side-by-side comparison is shown: ``GridView`` in a notebook (one HTML grid in
one display, redrawn in place by one throttle for all columns together, not one timer per
column), ``BlocksView`` in a terminal (labelled blocks at the end), and
``comparison_html`` for a ``Comparison`` displayed later (registered with IPython's HTML
formatter when the extension loads). Every string in the grid (labels, answers, errors,
footers) goes through ``markup``; the best TTFT and tokens/s of the columns that answered
are in bold.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from timmy_magic.compare import Column, Comparison
from timmy_magic.model.chat import Delta, Discard, Event, Result, Status, Trying
from timmy_magic.notebook.display.render import Throttle, display
from timmy_magic.text.markup import html, plain

CURSOR = "▌"
_CELL_CSS = (".tm-col{border:1px solid #ddd;border-radius:4px;padding:6px}"
             ".tm-head{font-weight:bold;margin-bottom:4px}.tm-body{white-space:pre-wrap;"
             "font-family:var(--jp-code-font-family,monospace);font-size:90%}"
             ".tm-foot{margin-top:6px;font-size:85%;color:#555}")


def comparison_html(comparison: Comparison) -> str:
    """A finished comparison as one HTML grid, the best figures in bold."""
    return grid_html(comparison.columns, [r.text for r in comparison.results],
                     comparison.results, comparison.best(), live=False)


def _footer(result: Result | None, best: dict[str, str | None], label: str) -> str:
    if result is None:
        return ""
    if result.error and not result.text:  # no answer: its figures would only read "~0 tok"
        return (f"<div class='tm-foot'><span style='color:#b00'>no answer: "
                f"{html(result.error)}</span></div>")
    parts = [html(p) for p in result.footer().split(" · ")]
    t, tps = result.timings.ttft_s, result.timings.output_tokens_per_s
    for i, p in enumerate(parts):  # highlight the winning figures
        if best.get("ttft") == label and t is not None and p == html(f"TTFT {t:.2f}s"):
            parts[i] = f"<b>{p}</b>"
        if (best.get("tok_s") == label and tps is not None
                and p == html(f"{tps:.1f} tok/s")):
            parts[i] = f"<b>{p}</b>"
    tail = " · ".join(parts)
    if result.error:
        tail += f"<br><span style='color:#b00'>{html(result.error)}</span>"
    return f"<div class='tm-foot'>{tail}</div>"


def grid_html(columns: Iterable[Column], texts: list[str], results: Sequence[Result | None],
              best: dict[str, str | None], live: bool,
              status: list[str] | None = None) -> str:
    cols = list(columns)
    cells = []
    for i, col in enumerate(cols):
        body = texts[i] + (CURSOR if live and results[i] is None and texts[i] else "")
        if not body and status and status[i]:
            body_html = f"<i>{html(status[i])}</i>"
        else:
            body_html = html(body)
        cells.append(f"<div class='tm-col'><div class='tm-head'>{html(col.label)}</div>"
                     f"<div class='tm-body'>{body_html}</div>"
                     f"{_footer(results[i], best, col.label)}</div>")
    style = (f"<style>.tm-grid{{display:grid;gap:12px;grid-template-columns:repeat("
             f"{max(1, len(cols))},minmax(0,1fr))}}{_CELL_CSS}</style>")
    return f"{style}<div class='tm-grid'>{''.join(cells)}</div>"


def grid_plain(columns: Iterable[Column], texts: list[str],
               results: Sequence[Result | None]) -> str:
    out = []
    for i, col in enumerate(columns):
        out.append(f"== {plain(col.label)} ==\n{texts[i]}")
        res = results[i]
        if res is not None:
            out.append(f"— {plain(res.footer())}"
                       + (f"\n[{plain(res.error)}]" if res.error else ""))
    return "\n".join(out)


class GridView:
    """One display: the grid, redrawn by one throttle for every column together."""

    def __init__(self, columns: tuple[Column, ...], per_second: float = 10.0,
                 live: bool = True) -> None:
        self.columns = columns
        self.live = live
        self.throttle = Throttle(per_second if live else 0.0)
        self.texts = ["" for _ in columns]
        self.status = ["waiting…" for _ in columns]
        self.results: list[Result | None] = [None for _ in columns]
        self._handle: Any = None
        self.updates = 0

    def _bundle(self, best: dict[str, str | None] | None = None) -> dict[str, str]:
        b = best or {"ttft": None, "tok_s": None}
        return {"text/html": grid_html(self.columns, self.texts, self.results, b, self.live,
                                       self.status),
                "text/plain": grid_plain(self.columns, self.texts, self.results)}

    def _show(self, bundle: dict[str, str]) -> None:
        self.updates += 1
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def start(self, now: float) -> None:
        self._show(self._bundle())
        self.throttle.flushed(now)

    def event(self, i: int, ev: Event, now: float) -> None:
        if isinstance(ev, Delta):
            self.texts[i] += ev.text
            self.throttle.note(sum(map(len, self.texts)))
        elif isinstance(ev, Trying):
            self.status[i] = f"asking {ev.provider}…"
            self.throttle.note()
        elif isinstance(ev, Status):
            self.status[i] = f"{ev.provider}: {ev.message}"
            self.throttle.note()
        elif isinstance(ev, Discard):
            self.texts[i] = ""
            self.status[i] = f"{ev.provider}: {ev.reason}; asking again…"
            self.throttle.note()
        self.tick(now)

    def done(self, i: int, result: Result) -> None:
        self.results[i] = result
        self.texts[i] = result.text
        self.status[i] = ""  # "asking ..." is over, answered or not

    def tick(self, now: float) -> None:
        if self.live and self.throttle.due(now):
            self._show(self._bundle())
            self.throttle.flushed(now)

    def finish(self, comparison: Comparison, notes: tuple[str, ...] = ()) -> None:
        self.live = False
        self.status = [""] * len(self.status)
        self.results = list(comparison.results)
        self.texts = [r.text for r in comparison.results]
        bundle = self._bundle(comparison.best())
        if notes:
            bundle["text/html"] += "".join(f"<p><em>{html(n)}</em></p>" for n in notes)
            bundle["text/plain"] += "".join(f"\n{plain(n)}" for n in notes)
        self._show(bundle)


class BlocksView(GridView):
    """A terminal: nothing while streaming, then one labelled block per column."""

    def start(self, now: float) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def finish(self, comparison: Comparison, notes: tuple[str, ...] = ()) -> None:
        text = grid_plain(self.columns, [r.text for r in comparison.results],
                          list(comparison.results))
        sys.stdout.write(text + "".join(f"\n{plain(n)}" for n in notes) + "\n")
        sys.stdout.flush()
