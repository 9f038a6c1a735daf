"""A side-by-side cell (``-p a,b`` or ``-m x,y``): one prompt to several providers or
models at once, in columns, through the Session's cache and conversation. In the
foreground the columns stream through ``Router.stream_many``; with ``--bg`` as a Job
(``notebook.background.start_columns``). The result is a ``Comparison``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from timmy_magic.cache import ReplayMiss
from timmy_magic.model.chat import ChatRequest, Message, Result
from timmy_magic.model.errors import InvalidRequest
from timmy_magic.notebook.cached import REPLAY_HINTS
from timmy_magic.notebook.display.failures import ErrorBlock
from timmy_magic.notebook.display.render import display, rich_frontend
from timmy_magic.notebook.history import Turn

if TYPE_CHECKING:
    from timmy_magic.context import Context
    from timmy_magic.jobs import Job
    from timmy_magic.notebook.session import CellOptions, Session


def side_by_side(session: Session, ctx: Context, opts: CellOptions, key: str, prompt: str
                 ) -> Job[Any] | bool:
    """Ask, show the columns as they stream, keep the Comparison (``last_result``,
    ``-o``). Returns the Job with ``--bg``, else whether it was interrupted (the partial
    answers kept: the Session then raises ``StreamInterrupted``)."""
    from timmy_magic.compare import Column, Comparison, run_columns
    from timmy_magic.notebook.display.compare_view import BlocksView, GridView


    if opts.fmt not in ("markdown", "text") and opts.schema is None:
        raise UsageError(f"-f {opts.fmt} does not apply side by side (markdown or text)")
    columns = (tuple(Column(p, p, opts.model) for p in opts.providers) if opts.providers
               else tuple(Column(m, opts.provider, m) for m in opts.models))
    if opts.new:
        session.conversation.reset()
    earlier = session.conversation.context(key) if opts.chat else ()
    messages = tuple(m for m in ctx.as_messages() if m.role == "system") + earlier + (
        Message("user", ctx.prompt_text()),)
    try:
        reqs = [ChatRequest(messages, c.model, opts.temperature, opts.max_tokens,
                            c.provider, opts.schema, instruct=ctx.instruct)
                for c in columns]
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from None
    view = (GridView(columns, session.settings.updates_per_second, live=opts.stream)
            if rich_frontend(session.shell, session.settings.display_mode)
            else BlocksView(columns, live=False))
    keyed = [session.answers.fields(r, opts.fmt, opts.cache) for r in reqs]
    hits: dict[int, Result] = {}
    try:
        for i, (fields, mode) in enumerate(keyed):
            hit = session.answers.lookup(fields, mode, reqs[i].schema)
            if hit is not None:
                hits[i] = hit
    except ReplayMiss as exc:
        view.start(time.monotonic())
        display(ErrorBlock("replay: no recorded answer", str(exc), (),
                           REPLAY_HINTS).bundle(), raw=True)
        return False
    live = [i for i in range(len(columns)) if i not in hits]
    clock = time.monotonic
    t0 = clock()
    if live:  # all from the cache: one display, the final one (no placeholder)
        view.start(t0)
    for i, hit in hits.items():
        view.done(i, hit)

    def finish(got: list[Result], errors: dict[str, str], interrupted: bool) -> Any:
        by_index = dict(zip(live, got))
        results = [hits[i] if i in hits else by_index[i] for i in range(len(columns))]
        for i in live:
            if not interrupted and results[i].ok:
                session.answers.record(keyed[i][0], results[i], keyed[i][1])

        def keep_turn(res: Result) -> None:
            session.conversation.record(Turn(key, prompt, res.text, res.provider))

        comparison = Comparison(columns, results, errors,
                                keep_turn=keep_turn if opts.chat else None)
        session.last_result = comparison
        if opts.out and not opts.background:
            session.shell.user_ns[opts.out] = comparison
        notes: tuple[str, ...] = (ctx.note(),) if ctx.note() else ()
        if opts.chat:
            notes += ("--chat: continue with one answer: "  # noqa: ISC004
                      f"{opts.out or 'timmy_magic.last()'}.keep('{columns[0].label}')",)
        view.finish(comparison, notes)
        return comparison

    shown = tuple(columns[i] for i in live)
    if opts.background:
        from timmy_magic.notebook.background import start_columns

        return start_columns(session, [reqs[i] for i in live], _Remap(view, live), shown,
                             t0, finish, opts, prompt, key)
    got: list[Result] = []
    errors: dict[str, str] = {}
    interrupted = False
    if live:
        events = session.router.stream_many([reqs[i] for i in live],
                                            tick_every=0.05 if opts.stream else None)
        try:
            got, errors, interrupted = run_columns(events, _Remap(view, live), shown,
                                                   clock, t0)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
    finish(got, errors, interrupted)
    return interrupted


class _Remap:
    """A GridView seen by ``run_columns`` over only the columns that stream live: its
    column ``j`` is the grid's column ``live[j]`` (cached columns are filled already)."""

    def __init__(self, view: Any, live: list[int]) -> None:
        self.view, self.live = view, live

    def event(self, j: int, ev: Any, now: float) -> None:
        self.view.event(self.live[j], ev, now)

    def done(self, j: int, result: Result) -> None:
        self.view.done(self.live[j], result)

    def tick(self, now: float) -> None:
        self.view.tick(now)
