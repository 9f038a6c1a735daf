"""The provider panel: an ipywidgets view over one shared ``Router`` (issue 4).

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
import html
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from timmy_magic.model.errors import UnknownProvider
from timmy_magic.routing.gate import money
from timmy_magic.text.markup import count
from timmy_magic.routing.metrics import MetricsSnapshot
from timmy_magic.privacy.redact import REDACT, get_logger
from timmy_magic.notebook.tables import Tone, tone_of
from timmy_magic.notebook.tables import secs as _secs
from timmy_magic.model.chat import HealthReport

if TYPE_CHECKING:
    from timmy_magic.routing.router import Router

log = get_logger("timmy_magic.notebook.widget")

AUTO = "Auto (cascade)"
AUTO_VALUE = ""  # the pin control's value for "no pin" (provider names are never empty)
AUTO_REFRESH_CHOICES: tuple[tuple[str, float], ...] = (
    ("off", 0.0), ("every 5 s", 5.0), ("every 15 s", 15.0), ("every 60 s", 60.0))
_TONE_STYLE: dict[Tone, str] = {
    "green": "background:#1a7f37;color:#fff;border:1px solid #1a7f37",
    "amber": "background:#d4a72c;color:#1f2328;border:1px solid #bf8700",
    "red": "background:#cf222e;color:#fff;border:1px solid #cf222e",
    "grey": "background:#8c959f;color:#fff;border:1px solid #8c959f",
    "neutral": "background:transparent;color:inherit;border:1px dashed #8c959f",
}
Schedule = Callable[[float, Callable[[], None]], Callable[[], None]]
"""``schedule(delay_s, fn)`` runs ``fn`` later and returns a function that cancels it."""


# ------------------------------------------------------------------ coalescing (pure)


class Coalescer:
    """Turns a storm of change notifications into at most one flush per ``interval``.

    ``note(kind, now)`` returns the delay after which a flush must run, or None when one is
    already scheduled; the flush calls ``take(now)`` first, which hands over the pending
    kinds. The first change after a quiet spell flushes at once (delay 0).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pending: set[str] = set()
        self._scheduled = False
        self._last_flush = float("-inf")
        self._lock = threading.Lock()

    def note(self, kind: str, now: float) -> float | None:
        with self._lock:
            self._pending.add(kind)
            if self._scheduled:
                return None
            self._scheduled = True
            return max(0.0, self._last_flush + self.interval - now)

    def take(self, now: float) -> frozenset[str]:
        with self._lock:
            kinds, self._pending = frozenset(self._pending), set()
            self._scheduled = False
            self._last_flush = now
            return kinds


def thread_timer(delay: float, fn: Callable[[], None]) -> Callable[[], None]:
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.start()
    return timer.cancel


# ------------------------------------------------------------------ rendering (pure)


def badge_html(name: str, state: str, checking: bool = False) -> str:
    shown = "checking" if checking and state == "unknown" else state
    label = shown.replace("_", " ") + (" ↻" if checking and shown != "checking" else "")
    style = ("display:inline-block;min-width:6.5em;text-align:center;padding:0 .5em;"
             "border-radius:.8em;font-size:90%;white-space:nowrap;" + _TONE_STYLE[tone_of(shown)])
    return (f'<span class="timmy-badge" data-provider="{_esc(name)}" data-state="{shown}" '
            f'style="{style}">● {label}</span>')


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _value(v: Any, limit: int = 80) -> str:
    """A detail value as a person reads it: a mapping as ``key value, ...`` (None left
    out), a list of them separated by ``;``, anything else as text."""
    if isinstance(v, dict):
        text = ", ".join(f"{k} {_value(x, limit)}" for k, x in v.items() if x is not None)
    elif isinstance(v, (list, tuple)):
        text = ("; " if any(isinstance(x, dict) for x in v) else ", ").join(
            _value(x, limit) for x in v)
    else:
        text = str(v)
    text = REDACT(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def detail_lines(report: HealthReport, snap: MetricsSnapshot | None = None,
                 checking: bool = False) -> list[str]:
    """What the hover text and the details section say about one provider."""
    where = "cloud" if report.is_cloud else "local"
    out = [f"{report.provider} ({report.type}, {where}): {report.state.replace('_', ' ')}"
           + (" — checking now" if checking else "")]
    out += [f"{k}: {_value(v)}" for k, v in list(report.detail.items())[:12]]
    if report.models:
        more = f" (+{len(report.models) - 5})" if len(report.models) > 5 else ""
        out.append("models: " + ", ".join(report.models[:5]) + more)
    out.append(f"health latency: {_secs(report.latency_s)}; circuit {report.circuit}")
    if len(report.endpoints) > 1:
        out += [f"  {e.url}: {e.state}, circuit {e.circuit}, {e.outstanding} in flight"
                for e in report.endpoints]
    if snap is not None:
        flight = f", {snap.in_flight} in flight" if snap.in_flight else ""
        out.append(f"requests: {snap.requests} sent, {snap.successes} answered, "
                   f"{snap.failures} failed{flight}; p95 {_secs(snap.latency_p95_s)}")
    if report.last_error:
        out.append(f"last error: {_value(report.last_error, 300)}")
    if report.hint:
        out.append(f"hint: {report.hint}")
    return out


PINNED_TAG = (' <span class="timmy-pinned" style="font-size:80%;padding:0 .4em;'
              'border:1px solid currentColor;border-radius:.6em">pinned</span>')
COLUMNS = ("health", "provider", "latency", "circuit", "requests", "errors", "p50",
           "TTFT", "tok/s", "cost")


def row_html(report: HealthReport, snap: MetricsSnapshot | None, pinned: bool,
             checking: bool = False) -> str:
    s = snap
    errors = s.failures if s else 0
    cells = [
        badge_html(report.provider, report.state, checking),
        (f"<b>{_esc(report.provider)}</b>{PINNED_TAG if pinned else ''} "
         f'<span style="opacity:.65">{_esc(report.type)}'
         f"{' · cloud' if report.is_cloud else ''}</span>"),
        _secs(report.latency_s), report.circuit.replace("_", "-"),
        str(s.requests if s else 0),
        f'<span style="color:#cf222e">{errors}</span>' if errors else "0",
        _secs(s.latency_p50_s if s else None), _secs(s.ttft_p50_s if s else None),
        f"{s.output_tok_s:.1f}" if s and s.output_tok_s else "—",
        f"${s.cost_usd:.4f}" if s and s.cost_usd else "—",
    ]
    title = _esc("\n".join(detail_lines(report, snap, checking)))
    tds = "".join(f'<td style="padding:2px 8px;white-space:nowrap">{c}</td>' for c in cells)
    return f'<tr class="timmy-row" data-provider="{_esc(report.provider)}" title="{title}">{tds}</tr>'


def table_html(reports: Mapping[str, HealthReport], metrics: Mapping[str, MetricsSnapshot],
               pinned: str | None, checking: Mapping[str, bool], source: str) -> str:
    if not reports:
        return (f'<div class="timmy-empty">No providers configured in {_esc(source)}. '
                "Add some to providers.yaml, then <code>%llm reload</code>.</div>")
    head = "".join(f'<th style="padding:2px 8px;text-align:left">{c}</th>' for c in COLUMNS)
    rows = "".join(row_html(r, metrics.get(n), n == pinned, checking.get(n, False))
                   for n, r in reports.items())
    return (f'<table class="timmy-table" style="border-collapse:collapse">'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")


def details_html(reports: Mapping[str, HealthReport],
                 metrics: Mapping[str, MetricsSnapshot], checking: Mapping[str, bool]) -> str:
    box = ("margin:0;padding:4px 6px;white-space:pre-wrap;font-size:85%;"
           "border:1px solid #d0d7de;border-radius:4px")
    blocks = "".join(
        f'<pre class="timmy-detail" style="{box}">'
        + _esc("\n".join(detail_lines(r, metrics.get(n), checking.get(n, False)))) + "</pre>"
        for n, r in reports.items())
    grid = "display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:6px"
    return f'<div style="{grid}">{blocks}</div>' if blocks else "<i>no providers</i>"


def pin_options(names: list[str]) -> tuple[tuple[str, str], ...]:
    return ((AUTO, AUTO_VALUE), *((n, n) for n in names))


CANNOT_ANSWER = frozenset({"disabled", "not_configured", "not_installed", "misconfigured",
                           "not_running"})
"""States the pin control leaves out: nothing pinned there could answer until the user
changes something (the config, a key, a server to start). Down and circuit-open stay:
they answered before and come back by themselves; stopped and starting are started on
the first request."""


def pinnable(reports: Mapping[str, HealthReport], pinned: str | None) -> list[str]:
    """The providers the pin control offers (the pinned one always, to show the pin)."""
    return [n for n, r in reports.items() if r.state not in CANNOT_ANSWER or n == pinned]


def gate_html(open_: bool, reason: str, spent: float, budget: float | None) -> str:
    verdict = ("<b style=\"color:#1a7f37\">cloud open</b>" if open_ else
               f"<b style=\"color:#cf222e\">cloud closed</b>: {_esc(reason)}")
    if budget is None:
        spending = f"spent today {money(spent)} (no daily budget)"
    else:
        spending = (f"daily budget: {money(spent)} used of {money(budget)}, "
                    f"{money(max(0.0, budget - spent))} left")
    return f'<span class="timmy-gate">{verdict} · {spending}</span>'


def budget_percent(spent: float, budget: float | None) -> int:
    if not budget:
        return 100 if budget == 0 else 0
    return max(0, min(100, round(100 * spent / budget)))


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
        self.budget = w.IntProgress(value=0, min=0, max=100, description="used",
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
        self.gate.value = gate_html(decision.open, decision.reason, spent, budget)
        self.budget.value = budget_percent(spent, budget)
        self.budget.layout.display = "none" if budget is None else ""

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
            self.status.value = f'<span style="color:#cf222e">{_esc(exc)}</span>'
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
                             f'<span style="color:#cf222e">refresh failed: {_esc(exc)}</span>')

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
