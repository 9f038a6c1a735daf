"""The provider panel: an ipywidgets view over one shared ``Router``.

One row per provider (health badge, latency, circuit, live metrics), a pin control with
"Auto (cascade)" first, a refresh button and an optional auto-refresh interval, and the
cloud gate (local-only toggle, budget used and left, the current decision).

The panel does no HTTP of its own: it reads ``router.health()`` / ``router.metrics()`` and
asks the router to probe. Router notifications arrive from any thread (mostly the router's
loop thread); they are coalesced by ``Coalescer`` (pure, clock injected) and flushed at
most once per ``interval`` on a timer thread, so a burst of events is one widget update.
Setting traits from a background thread is safe in ipykernel (comm messages go through
its iopub thread), and a trait set to its current value sends nothing.

Core ipywidgets only, so it renders in JupyterLab 4, Notebook 7 and VS Code unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from timmy_magic.model.errors import UnknownProvider
from timmy_magic.notebook.display.panel_html import (
    AUTO_REFRESH_CHOICES,
    AUTO_VALUE,
    RED,
    Coalescer,
    Schedule,
    budget_percent,
    details_html,
    gate_html,
    pin_options,
    pinnable,
    table_html,
    thread_timer,
)
from timmy_magic.privacy.redact import get_logger
from timmy_magic.text.markup import count, html

if TYPE_CHECKING:
    from timmy_magic.routing.router import Router

log = get_logger("timmy_magic.notebook.display.widget")

# ------------------------------------------------------------------ the widget


class Panel(w.VBox):  # type: ignore[misc]  # ipywidgets ships no type hints
    """The live provider panel. Close it with ``close()``: it stops all its updates."""

    def __init__(self, router: Router, *, interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic,
                 schedule: Schedule = thread_timer, check_on_open: bool = True,
                 auto_refresh_choices: tuple[tuple[str, float], ...] = AUTO_REFRESH_CHOICES
                 ) -> None:
        self._router = router
        self._clock, self._schedule = clock, schedule
        self._coalescer = Coalescer(interval)
        self._lock = threading.RLock()
        self._mirroring = threading.local()  # per thread: a user's click is never muted
        self._cancel_timer: Callable[[], None] | None = None
        self._auto: concurrent.futures.Future[Any] | None = None
        self._closed = False
        self.renders = 0
        self._build_widgets(auto_refresh_choices)
        super().__init__(children=[self.header, self.pin_row, self.table, self.details,
                                   self.gate_row, self.status],
                         layout=w.Layout(border="1px solid #d0d7de", padding="6px"))
        self.add_class("timmy-panel")
        self._unsubscribe = router.subscribe(self._on_change)  # first: no change is missed
        self._render()
        if check_on_open and any(r.state == "unknown" and r.checked_at is None
                                 for r in router.health().values()):
            self.refresh()

    def _build_widgets(self, choices: tuple[tuple[str, float], ...]) -> None:
        self.title = w.HTML("<b>timmy-magic providers</b>")
        self.refresh_button = w.Button(description="Refresh", icon="refresh",
                                       tooltip="Probe every provider now (in the background)",
                                       layout=w.Layout(width="auto"))
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.auto_refresh = w.Dropdown(options=choices, value=0.0, description="auto-refresh",
                                       layout=w.Layout(width="210px"))
        self.auto_refresh.observe(self._on_auto_refresh, names="value")
        self.show_details = w.ToggleButton(value=False, description="details",
                                           tooltip="Show each provider's server detail",
                                           layout=w.Layout(width="auto"))
        self.show_details.observe(lambda _c: self._render(), names="value")
        self.header = w.HBox([self.title, self.refresh_button, self.auto_refresh,
                              self.show_details])
        self.pin_control = w.ToggleButtons(options=pin_options([]), value=AUTO_VALUE,
                                           style={"button_width": "auto"})
        self.pin_control.add_class("timmy-pin")
        self.pin_row = w.HBox([w.HTML("<b>pin</b>", layout=w.Layout(margin="0 8px 0 0")),
                               self.pin_control], layout=w.Layout(align_items="center"))
        self.pin_control.observe(self._on_pin, names="value")
        self.table = w.HTML()
        self.details = w.HTML(layout=w.Layout(display="none"))
        self.local_only = w.Checkbox(value=False, description="local only", indent=False,
                                     layout=w.Layout(width="auto"))
        self.local_only.observe(self._on_local_only, names="value")
        # the share of the daily budget used, after the text that says so (hidden when
        # there is no budget: an empty bar alone says nothing)
        self.budget = w.IntProgress(value=0, min=0, max=100, description="",
                                    style={"description_width": "auto"},
                                    layout=w.Layout(width="160px", margin="0 0 0 8px"))
        self.gate = w.HTML()
        self.gate_row = w.HBox([self.local_only, self.gate, self.budget],
                               layout=w.Layout(align_items="center"))
        self.status = w.HTML()

    # ---------------------------------------------------------- router -> widgets

    def _on_change(self, kind: str) -> None:
        delay = self._coalescer.note(kind, self._clock())
        if delay is not None and not self._closed:
            self._cancel_timer = self._schedule(delay, self._flush)

    def _flush(self) -> None:
        self._coalescer.take(self._clock())
        if self._closed:
            return
        try:
            self._render()
        except Exception:  # a background thread: log, never kill the timer silently
            log.exception("panel update failed")

    def _render(self) -> None:
        r = self._router
        with self._lock, self._quiet():
            if self._closed:
                return
            reports, metrics = r.health(), r.metrics()
            checking = {n: self._is_checking(n) for n in reports}
            self._sync_pin(pinnable(reports, r.pinned), r.pinned)
            self.table.value = table_html(reports, metrics, r.pinned, checking,
                                          r.config.source)
            shown = self.show_details.value
            self.details.layout.display = "" if shown else "none"
            if shown:
                self.details.value = details_html(reports, metrics, checking)
            self._render_gate()
            self.renders += 1

    def _render_gate(self) -> None:
        r = self._router
        self.local_only.value = bool(r.local_only)
        decision, budget = r.gate(), r.config.cloud_gate.daily_budget_usd
        spent = r.ledger.spent_today
        has_cloud = any(p.is_cloud for p in r.config.providers)
        self.gate.value = gate_html(decision.open, decision.reason, spent, budget, has_cloud)
        self.budget.value = budget_percent(spent, budget)
        self.budget.layout.display = "none" if budget is None or not has_cloud else ""

    def _sync_pin(self, names: list[str], pinned: str | None) -> None:
        options = pin_options(names)
        if tuple(self.pin_control.options) != options:
            self.pin_control.options = options
            self.pin_control.tooltips = ["Let the cascade choose"] + [
                f"Send every request to {n}" for n in names]
        self.pin_control.value = pinned if pinned in names else AUTO_VALUE

    def _is_checking(self, name: str) -> bool:
        try:
            return bool(self._router.provider(name).checking)
        except UnknownProvider:  # removed by a reload in between
            return False

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """While this thread mirrors the router into the controls, their callbacks must not
        write back (e.g. options rebuilt after a reload pass through other values)."""
        depth = getattr(self._mirroring, "depth", 0)
        self._mirroring.depth = depth + 1
        try:
            yield
        finally:
            self._mirroring.depth = depth

    @property
    def _is_mirroring(self) -> bool:
        return bool(getattr(self._mirroring, "depth", 0))

    # ---------------------------------------------------------- widgets -> router

    def _on_pin(self, change: dict[str, Any]) -> None:
        target = change["new"] or None
        if self._is_mirroring or target == self._router.pinned:
            return
        try:
            self._router.pin(target)
        except UnknownProvider as exc:  # removed by a reload a moment ago
            self.status.value = f'<span style="color:{RED}">{html(exc)}</span>'
            self._render()

    def _on_local_only(self, change: dict[str, Any]) -> None:
        if not self._is_mirroring and bool(change["new"]) != self._router.local_only:
            self._router.set_local_only(bool(change["new"]))

    def refresh(self) -> concurrent.futures.Future[Any]:
        """Probe every provider in the background; the panel updates when answers arrive."""
        self.status.value = f"refresh requested at {time.strftime('%H:%M:%S')}"
        fut = self._router.check_health_soon()
        fut.add_done_callback(self._refresh_done)
        return fut

    def _refresh_done(self, fut: concurrent.futures.Future[Any]) -> None:
        if fut.cancelled() or self._closed:
            return
        exc = fut.exception()
        self.status.value = (f"last refresh {time.strftime('%H:%M:%S')}" if exc is None else
                             f'<span style="color:{RED}">refresh failed: {html(exc)}</span>')

    def _on_auto_refresh(self, change: dict[str, Any]) -> None:
        self._stop_auto()
        every = float(change["new"] or 0)
        if every > 0 and not self._closed:
            self._auto = self._router.submit(self._auto_loop(every))

    async def _auto_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self._router.acheck_health()
            except Exception:
                log.exception("auto-refresh health pass failed")

    def _stop_auto(self) -> None:
        if self._auto is not None:
            self._auto.cancel()
            self._auto = None

    # ---------------------------------------------------------- lifecycle

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unsubscribe from the router, stop timers and auto-refresh, close the widgets."""
        with self._lock:  # waits for a render in flight on the timer thread
            if not self._closed:
                self._closed = True
                self._unsubscribe()
                if self._cancel_timer is not None:
                    self._cancel_timer()
                self._stop_auto()
                for child in self.children:
                    _close_tree(child)
        super().close()

    def __repr__(self) -> str:
        r = self._router
        return (f"<timmy-magic panel: {count(len(r.names), 'provider')}, "
                f"pin: {r.pinned or 'auto'}{', closed' if self._closed else ''}>")


def _close_tree(widget: w.Widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


def panel(router: Router, **kw: Any) -> Panel:
    """A live panel over ``router``. Several panels on one router stay in sync."""
    return Panel(router, **kw)
