"""The tables of ``%llm status`` and ``%llm providers``, as Markdown + plain text bundles.

Pure: they take the router's snapshots (health, metrics, config) and return mime bundles.
Every name, model id, URL, note and path comes from a server or the config: the Markdown
view writes each one through ``markup.md`` (escaped, one line, redacted), the plain view
through ``markup.plain``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from timmy_magic.config import Config
from timmy_magic.jobs import JOB_COLUMNS
from timmy_magic.model.chat import HealthReport
from timmy_magic.routing.gate import money
from timmy_magic.routing.metrics import MetricsSnapshot
from timmy_magic.text.markup import count, md, plain, shorten

Tone = Literal["green", "amber", "red", "grey", "neutral"]
TONES: dict[str, Tone] = {
    "healthy": "green", "degraded": "amber",
    "down": "red", "circuit_open": "red", "misconfigured": "red",
    "disabled": "grey", "not_configured": "grey", "not_installed": "grey",
    "stopped": "grey",  # a managed (launch:) server, started on first need: not an error
    "not_running": "grey",  # a local server that has not answered in this session
    "unknown": "neutral", "checking": "neutral", "starting": "neutral",
}
"""The colour of each health state, in the tables and the panel's badges."""
TONE_COLOURS: dict[Tone, str] = {
    "green": "#1a7f37", "amber": "#bf8700", "red": "#cf222e", "grey": "#8c959f",
    "neutral": "#8c959f",
}


def tone_of(state: str) -> Tone:
    return TONES.get(state, "neutral")


def state_badge(state: str) -> str:
    """The Markdown state cell: a dot in the state's colour (a plain "●", in every font; no
    colour emoji, which show as empty boxes without an emoji font) and the state in words."""
    dot = "○" if tone_of(state) == "neutral" else "●"
    return (f'<span class="timmy-state" data-state="{state}" '
            f'style="color:{TONE_COLOURS[tone_of(state)]}">{dot}</span> '
            + state.replace("_", " "))


NOTE_CHARS = 100
Bundle = dict[str, str]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           states: Sequence[str] = ()) -> tuple[str, str]:
    """(Markdown, plain) of one table of raw cell texts; with ``states``, the second
    Markdown cell of each row is that state's badge (ours, not escaped)."""
    md_rows = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md_rows += ["| " + " | ".join(
        [md(c) if not (states and i == 1) else state_badge(states[n])
         for i, c in enumerate(row)]) + " |" for n, row in enumerate(rows)]
    cells = [[plain(" ".join(c.split())) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    text = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    text += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(md_rows), "\n".join(text)


def secs(value: float | None) -> str:
    """A duration as shown in tables and the panel: "850 ms", "2.4 s", "—"."""
    return "—" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _models(models: Sequence[str], limit: int = 2) -> str:
    if not models:
        return "—"
    more = f" +{len(models) - limit}" if len(models) > limit else ""
    return ", ".join(models[:limit]) + more


def requests_cell(m: MetricsSnapshot | None) -> str:
    """The status table's requests cell in words: "2 of 3 answered", "1 in flight", never
    a bare "0/1" (answered of sent? failed of tried?)."""
    if m is None or not m.requests:
        return "—"
    parts = [f"{m.successes} of {m.requests} answered"]
    if m.in_flight:
        parts.append(f"{m.in_flight} in flight")
    return ", ".join(parts)


def status_bundle(reports: Mapping[str, HealthReport],
                  metrics: Mapping[str, MetricsSnapshot], *, pinned: str | None,
                  gate_open: bool, gate_reason: str, spent_usd: float,
                  budget_usd: float | None) -> Bundle:
    headers = ["provider", "state", "latency", "models", "circuit", "requests", "note"]
    rows: list[list[str]] = []
    for name, r in reports.items():
        m = metrics.get(name)
        reqs = requests_cell(m)
        note = shorten(plain(r.hint or r.last_error or ""), NOTE_CHARS)
        label = name + (" (pinned)" if name == pinned else "") + (" ☁" if r.is_cloud else "")
        rows.append([label, r.state.replace("_", " "), secs(r.latency_s), _models(r.models),
                     r.circuit.replace("_", "-"), reqs, note])
    budget = f" of {money(budget_usd)}" if budget_usd is not None else ""
    gate = "open" if gate_open else f"closed ({gate_reason})"
    head = (f"cloud gate: {gate} · spent today {money(spent_usd)}{budget} · "
            f"pinned: {pinned or 'none (cascade)'}")
    if not rows:
        return {"text/markdown": f"*{md(head)}*\n\n*No providers configured.*",
                "text/plain": f"{plain(head)}\nNo providers configured."}
    md_table, text_table = _table(headers, rows, [r.state for r in reports.values()])
    return {"text/markdown": f"*{md(head)}*\n\n{md_table}",
            "text/plain": f"{plain(head)}\n{text_table}"}


def providers_bundle(config: Config, pinned: str | None) -> Bundle:
    headers = ["provider", "type", "priority", "enabled", "where", "url", "default model"]
    rows = [[p.name + (" (pinned)" if p.name == pinned else ""), p.type, str(p.priority),
             "yes" if p.enabled else "no", "cloud" if p.is_cloud else "local",
             ", ".join(p.urls), p.default_model or "(server's)"]
            for p in sorted(config.providers, key=lambda p: p.priority)]
    head = f"{count(len(config.providers), 'provider')} from {config.source}"
    if not rows:
        return {"text/markdown": f"*{md(head)}*", "text/plain": plain(head)}
    md_table, text_table = _table(headers, rows)
    md_warn = "".join(f"\n\n> ⚠ {md(w)}" for w in config.warnings)
    plain_warn = "".join(f"\nwarning: {plain(w)}" for w in config.warnings)
    return {"text/markdown": f"*{md(head)}*\n\n{md_table}{md_warn}",
            "text/plain": f"{plain(head)}\n{text_table}{plain_warn}"}


def jobs_bundle(rows: Sequence[Sequence[str]]) -> Bundle:
    """``%llm jobs``: one row per background job (``JobBoard.rows``)."""
    if not rows:
        line = "No background jobs in this session (start one with %%llm --bg)."
        return {"text/markdown": f"*{md(line)}*", "text/plain": plain(line)}
    md_table, text_table = _table(JOB_COLUMNS, rows)
    return {"text/markdown": md_table, "text/plain": text_table}
