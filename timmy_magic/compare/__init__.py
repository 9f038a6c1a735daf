"""Side by side: one prompt to several providers (``-p a,b,c``) or models (``-m x,y``),
streamed at once into columns, with the numbers under each (issue 16).

``Comparison`` is the result (pure data): one ``Result`` per column in the order given,
indexed by position or label, ``to_pandas()``, ``keep(label)`` to continue a ``--chat``
conversation with the answer chosen. ``GridView`` shows it in a notebook: one HTML grid in
one display, redrawn in place by one throttle for all columns together (not one timer per
column); ``BlocksView`` prints labelled blocks in a terminal. Every string in the grid
(labels, answers, errors, footers) goes through ``markup``; the best TTFT and tokens/s of
the columns that answered are highlighted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from timmy_magic.text.markup import html, plain
from timmy_magic.notebook.render import AnswerCollector, Throttle, display
from timmy_magic.routing.runner import Tick
from timmy_magic.model.chat import Delta, Discard, Done, Event, Failed, Result, Status, Trying

CURSOR = "▌"


@dataclass(frozen=True)
class Column:
    """What one column asks: a label (the provider, or the model), provider, model."""

    label: str
    provider: str | None
    model: str | None


@dataclass
class Comparison:
    """The answers of one side-by-side cell, one per column, in the order given."""

    columns: tuple[Column, ...]
    results: list[Result]
    errors: dict[str, str] = field(default_factory=dict)
    """label -> why that column got no answer (its Result then has ``error`` set)."""
    keep_turn: Callable[[Result], None] | None = None

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.columns]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)

    def __getitem__(self, key: int | str) -> Result:
        if isinstance(key, int):
            return self.results[key]
        for col, res in zip(self.columns, self.results):
            if key in (col.label, col.provider, col.model):
                return res
        raise KeyError(f"no column {key!r}; columns: {', '.join(self.labels)}")

    def keep(self, key: int | str) -> Result:
        """Continue the ``--chat`` conversation with this column's answer."""
        res = self[key]
        if self.keep_turn is None:
            raise ValueError("this cell was not asked with --chat: nothing to continue")
        if not res.ok:
            raise ValueError(f"column {key!r} has no complete answer to keep")
        self.keep_turn(res)
        return res

    def best(self) -> dict[str, str | None]:
        """The label with the best TTFT and the best tokens/s among answered columns."""
        ok = [(c.label, r) for c, r in zip(self.columns, self.results) if r.ok]
        ttft = [(r.timings.ttft_s, lbl) for lbl, r in ok if r.timings.ttft_s is not None]
        tps = [(r.timings.output_tokens_per_s, lbl) for lbl, r in ok
               if r.timings.output_tokens_per_s is not None]
        return {"ttft": min(ttft)[1] if len(ttft) > 1 else None,
                "tok_s": max(tps)[1] if len(tps) > 1 else None}

    def rows(self) -> list[dict[str, Any]]:
        return [{"column": c.label, "provider": r.provider, "model": r.model,
                 "text": r.text, "ttft_s": r.timings.ttft_s, "total_s": r.timings.total_s,
                 "output_tokens": r.usage.output_tokens,
                 "tok_s": r.timings.output_tokens_per_s, "cost_usd": r.cost_usd,
                 "cached": r.cached, "error": r.error}
                for c, r in zip(self.columns, self.results)]

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows())

    def _repr_html_(self) -> str:
        return grid_html(self.columns, [r.text for r in self.results], self.results,
                         self.best(), live=False)

    def __repr__(self) -> str:
        cols = ", ".join(f"{c.label}: {'ok' if r.ok else 'failed'}"
                         for c, r in zip(self.columns, self.results))
        return f"<Comparison {cols}>"


# ------------------------------------------------------------------ rendering


def _footer(result: Result | None, best: dict[str, str | None], label: str) -> str:
    if result is None:
        return ""
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
    style = ("<style>.tm-grid{display:grid;gap:12px;grid-template-columns:repeat(%d,"
             "minmax(0,1fr))}.tm-col{border:1px solid #ddd;border-radius:4px;padding:6px}"
             ".tm-head{font-weight:bold;margin-bottom:4px}.tm-body{white-space:pre-wrap;"
             "font-family:var(--jp-code-font-family,monospace);font-size:90%%}"
             ".tm-foot{margin-top:6px;font-size:85%%;color:#555}</style>" % max(1, len(cols)))
    return f"{style}<div class='tm-grid'>{''.join(cells)}</div>"


def grid_plain(columns: Iterable[Column], texts: list[str],
               results: Sequence[Result | None]) -> str:
    out = []
    for i, col in enumerate(columns):
        out.append(f"== {plain(col.label)} ==\n{texts[i]}")
        if results[i] is not None:
            out.append(f"— {plain(results[i].footer())}"  # type: ignore[union-attr]
                       + (f"\n[{plain(results[i].error)}]" if results[i].error else ""))  # type: ignore[union-attr]
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

    def tick(self, now: float) -> None:
        if self.live and self.throttle.due(now):
            self._show(self._bundle())
            self.throttle.flushed(now)

    def finish(self, comparison: Comparison, notes: tuple[str, ...] = ()) -> None:
        self.live = False
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


class ColumnSink(Protocol):
    """What ``run_columns`` feeds: a grid, or a part of one."""

    def event(self, i: int, ev: Event, now: float) -> None: ...
    def done(self, i: int, result: Result) -> None: ...
    def tick(self, now: float) -> None: ...


def run_columns(events: Iterable[tuple[int, Event | Failed] | Tick], view: ColumnSink,
                columns: tuple[Column, ...], clock: Callable[[], float],
                t0: float) -> tuple[list[Result], dict[str, str], bool]:
    """Feed merged column events to ``view``. Returns the results in column order, the
    errors by label, and whether it was interrupted (the partial answers are kept)."""
    got = [AnswerCollector(t0) for _ in columns]
    results: list[Result | None] = [None for _ in columns]
    errors: dict[str, str] = {}
    interrupted = False
    try:
        for item in events:
            now = clock()
            if isinstance(item, Tick):
                view.tick(now)
                continue
            i, ev = item
            if isinstance(ev, Failed):
                errors[columns[i].label] = str(ev.error)
                # the route's own trace: every attempt and why it failed, in the
                # server's words, not only the last attempt the column saw
                results[i] = replace(got[i].partial(str(ev.error), columns[i].model, now),
                                     trace=ev.error.trace)
                view.done(i, results[i])  # type: ignore[arg-type]
            elif isinstance(ev, Done):
                results[i] = ev.result
                view.done(i, ev.result)
            else:
                if isinstance(ev, Trying):
                    got[i].trying(ev, now)
                elif isinstance(ev, Delta):
                    got[i].delta(ev.text, now)
                elif isinstance(ev, Discard):
                    got[i].discard()
                view.event(i, ev, now)
    except KeyboardInterrupt:
        interrupted = True
    now = clock()
    final = [r if r is not None else got[i].partial(
        "interrupted by the user" if interrupted else "no answer", columns[i].model, now)
        for i, r in enumerate(results)]
    return final, errors, interrupted

