"""The provider panel's pure parts: the HTML of badges, rows, details and the cloud gate
(every string a server or a config controls escaped by ``markup``), and the coalescing of
change notifications (the clock passed in). No widgets here: ``widget`` shows them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from timmy_magic.model.chat import HealthReport
from timmy_magic.notebook.display.tables import TONE_COLOURS, Tone, tone_of
from timmy_magic.notebook.display.tables import secs as _secs
from timmy_magic.privacy.redact import REDACT
from timmy_magic.routing.gate import money
from timmy_magic.routing.metrics import MetricsSnapshot
from timmy_magic.text.markup import html, html_attr, shorten

AUTO = "Auto (cascade)"
AUTO_VALUE = ""  # the pin control's value for "no pin" (provider names are never empty)
AUTO_REFRESH_CHOICES: tuple[tuple[str, float], ...] = (
    ("off", 0.0), ("every 5 s", 5.0), ("every 15 s", 15.0), ("every 60 s", 60.0))
_TONE_STYLE: dict[Tone, str] = {
    tone: ("background:transparent;color:inherit;border:1px dashed " + TONE_COLOURS["grey"]
           if tone == "neutral" else
           f"background:{colour};color:{'#1f2328' if tone == 'amber' else '#fff'};"
           f"border:1px solid {colour}")
    for tone, colour in TONE_COLOURS.items()}
"""The badges' styles, from the one palette (``tables.TONE_COLOURS``)."""
RED, GREEN = TONE_COLOURS["red"], TONE_COLOURS["green"]
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


ON_DEMAND = "starts on first request"
"""What a managed server not started yet says (its state is "stopped": nothing is wrong)."""


def state_label(report: HealthReport) -> str:
    """The state as the badge says it: a managed server that starts on first request
    says so, rather than "stopped", which reads as broken."""
    if report.state == "stopped" and (report.hint or "").startswith(ON_DEMAND):
        return ON_DEMAND
    return report.state.replace("_", " ")


def badge_html(name: str, state: str, checking: bool = False, label: str | None = None
               ) -> str:
    shown = "checking" if checking and state == "unknown" else state
    label = (label if label is not None and shown == state else shown.replace("_", " ")) \
        + (" ↻" if checking and shown != "checking" else "")
    style = ("display:inline-block;min-width:6.5em;text-align:center;padding:0 .5em;"
             "border-radius:.8em;font-size:90%;white-space:nowrap;" + _TONE_STYLE[tone_of(shown)])
    return (f'<span class="timmy-badge" data-provider="{html_attr(name)}" '
            f'data-state="{html_attr(shown)}" style="{style}">● {html(label)}</span>')


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
    return shorten(REDACT(text), limit)  # masked before the cut: no part of a key shows


def detail_lines(report: HealthReport, snap: MetricsSnapshot | None = None,
                 checking: bool = False) -> list[str]:
    """What the hover text and the details section say about one provider."""
    where = "cloud" if report.is_cloud else "local"
    out = [f"{report.provider} ({report.type}, {where}): {state_label(report)}"
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
        badge_html(report.provider, report.state, checking, state_label(report)),
        (f"<b>{html(report.provider)}</b>{PINNED_TAG if pinned else ''} "
         f'<span style="opacity:.65">{html(report.type)}'
         f"{' · cloud' if report.is_cloud else ''}</span>"),
        _secs(report.latency_s), report.circuit.replace("_", "-"),
        str(s.requests if s else 0),
        f'<span style="color:{RED}">{errors}</span>' if errors else "0",
        _secs(s.latency_p50_s if s else None), _secs(s.ttft_p50_s if s else None),
        f"{s.output_tok_s:.1f}" if s and s.output_tok_s else "—",
        f"${s.cost_usd:.4f}" if s and s.cost_usd else "—",
    ]
    title = html_attr("\n".join(detail_lines(report, snap, checking)))
    tds = "".join(f'<td style="padding:2px 8px;white-space:nowrap">{c}</td>' for c in cells)
    return (f'<tr class="timmy-row" data-provider="{html_attr(report.provider)}" '
            f'title="{title}">{tds}</tr>')


def table_html(reports: Mapping[str, HealthReport], metrics: Mapping[str, MetricsSnapshot],
               pinned: str | None, checking: Mapping[str, bool], source: str) -> str:
    if not reports:
        return (f'<div class="timmy-empty">No providers configured in {html(source)}. '
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
        + html("\n".join(detail_lines(r, metrics.get(n), checking.get(n, False)))) + "</pre>"
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


def gate_html(open_: bool, reason: str, spent: float, budget: float | None,
              has_cloud: bool = True) -> str:
    """The cloud gate's line. With no cloud provider configured there is no gate to speak
    of (not a green "cloud open")."""
    if not has_cloud:
        return ('<span class="timmy-gate" style="opacity:.75">no cloud providers configured: '
                "every answer is local</span>")
    verdict = (f'<b style="color:{GREEN}">cloud open</b>' if open_ else
               f'<b style="color:{RED}">cloud closed</b>: {html(reason)}')
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
