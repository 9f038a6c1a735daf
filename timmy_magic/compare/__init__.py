"""Side by side: one prompt to several providers (``-p a,b,c``) or models (``-m x,y``),
streamed at once into columns, with the numbers under each.

``Comparison`` is the result (pure data): one ``Result`` per column in the order given,
indexed by position or label, ``to_pandas()``, ``keep(label)`` to continue a ``--chat``
conversation with the answer chosen, ``best()`` the columns with the best TTFT and
tokens/s. ``run_columns`` feeds the merged events of the columns to a ``ColumnSink`` and
makes each column's Result (a partial one for a column that failed or was interrupted).
How a comparison is shown (a grid in a notebook, blocks in a terminal) is the notebook
layer's (``timmy_magic.notebook.display.compare_view``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from timmy_magic.model.chat import Delta, Discard, Done, Event, Failed, Result, Trying
from timmy_magic.model.partial import AnswerCollector
from timmy_magic.routing.runner import Tick


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

    def __repr__(self) -> str:
        cols = ", ".join(f"{c.label}: {'ok' if r.ok else 'failed'}"
                         for c, r in zip(self.columns, self.results))
        return f"<Comparison {cols}>"


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
    feed = ColumnFeed(view, columns, t0)
    interrupted = False
    try:
        for item in events:
            feed(item, clock())
    except KeyboardInterrupt:
        interrupted = True
    return feed.final(interrupted, clock()), feed.errors, interrupted


class ColumnFeed:
    """Merged column events into ``view``, one at a time (``run_columns`` and the
    background form of a side-by-side cell share it); ``final`` the results."""

    def __init__(self, view: ColumnSink, columns: tuple[Column, ...], t0: float) -> None:
        self.view, self.columns = view, columns
        self.got = [AnswerCollector(t0) for _ in columns]
        self.results: list[Result | None] = [None for _ in columns]
        self.errors: dict[str, str] = {}

    def __call__(self, item: tuple[int, Event | Failed] | Tick, now: float) -> None:
        view, got, columns = self.view, self.got, self.columns
        if isinstance(item, Tick):
            view.tick(now)
            return
        i, ev = item
        if isinstance(ev, Failed):
            self.errors[columns[i].label] = str(ev.error)
            # the route's own trace: every attempt and why it failed, in the
            # server's words, not only the last attempt the column saw
            res = replace(got[i].partial(str(ev.error), columns[i].model, now),
                          trace=ev.error.trace)
            self.results[i] = res
            view.done(i, res)
        elif isinstance(ev, Done):
            self.results[i] = ev.result
            view.done(i, ev.result)
        else:
            if isinstance(ev, Trying):
                got[i].trying(ev, now)
            elif isinstance(ev, Delta):
                got[i].delta(ev.text, now)
            elif isinstance(ev, Discard):
                got[i].discard()
            view.event(i, ev, now)

    def final(self, interrupted: bool, now: float) -> list[Result]:
        return [r if r is not None else self.got[i].partial(
            "interrupted by the user" if interrupted else "no answer", self.columns[i].model,
            now) for i, r in enumerate(self.results)]
