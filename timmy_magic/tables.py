"""The tables of ``%llm status`` and ``%llm providers``, as Markdown + plain text bundles.

Pure: they take the router's snapshots (health, metrics, config) and return mime bundles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .config import Config
from .metrics import MetricsSnapshot
from .secrets import REDACT
from .types import HealthReport

BADGES = {
    "healthy": "🟢", "degraded": "🟡", "down": "🔴", "circuit_open": "⛔",
    "misconfigured": "⚠️", "disabled": "⚪", "not_configured": "🔑", "not_installed": "📦",
    "unknown": "❔", "stopped": "💤", "starting": "⏳",  # managed (launch:) servers
}
Bundle = dict[str, str]


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[str, str]:
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    plain = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    plain += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(md), "\n".join(plain)


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _models(models: Sequence[str], limit: int = 2) -> str:
    if not models:
        return "—"
    more = f" +{len(models) - limit}" if len(models) > limit else ""
    return ", ".join(models[:limit]) + more


def status_bundle(reports: Mapping[str, HealthReport],
                  metrics: Mapping[str, MetricsSnapshot], *, pinned: str | None,
                  gate_open: bool, gate_reason: str, spent_usd: float,
                  budget_usd: float | None) -> Bundle:
    headers = ["provider", "state", "latency", "models", "circuit", "requests", "note"]
    rows: list[list[str]] = []
    for name, r in reports.items():
        m = metrics.get(name)
        reqs = f"{m.successes}/{m.requests}" if m and m.requests else "—"
        note = r.hint or r.last_error or ""
        label = name + (" (pinned)" if name == pinned else "") + (" ☁" if r.is_cloud else "")
        rows.append([label, r.state.replace("_", " "), _secs(r.latency_s), _models(r.models),
                     r.circuit.replace("_", "-"), reqs, REDACT(note)[:100]])
    budget = f" of ${budget_usd:.2f}" if budget_usd is not None else ""
    gate = "open" if gate_open else f"closed ({gate_reason})"
    head = (f"cloud gate: {gate} · spent today ${spent_usd:.4f}{budget} · "
            f"pinned: {pinned or 'none (cascade)'}")
    md, plain = _table(headers, rows)
    md_rows = md.split("\n")
    for i, (name, r) in enumerate(reports.items()):  # badges only in the Markdown view
        md_rows[i + 2] = md_rows[i + 2].replace("| ", f"| {BADGES.get(r.state, '')} ", 1)
    if not rows:
        return {"text/markdown": f"{head}\n\n*No providers configured.*",
                "text/plain": f"{head}\nNo providers configured."}
    return {"text/markdown": f"*{head}*\n\n" + "\n".join(md_rows),
            "text/plain": f"{head}\n{plain}"}


def providers_bundle(config: Config, pinned: str | None) -> Bundle:
    headers = ["provider", "type", "priority", "enabled", "where", "url", "default model"]
    rows = [[p.name + (" (pinned)" if p.name == pinned else ""), p.type, str(p.priority),
             "yes" if p.enabled else "no", "cloud" if p.is_cloud else "local",
             ", ".join(p.urls), p.default_model or "(server's)"]
            for p in sorted(config.providers, key=lambda p: p.priority)]
    head = f"{len(config.providers)} providers from {config.source}"
    warn = list(config.warnings)
    if not rows:
        return {"text/markdown": f"*{head}*", "text/plain": head}
    md, plain = _table(headers, rows)
    md_warn = "".join(f"\n\n> ⚠ {w}" for w in warn)
    plain_warn = "".join(f"\nwarning: {w}" for w in warn)
    return {"text/markdown": f"*{head}*\n\n{md}{md_warn}", "text/plain": f"{head}\n{plain}"
            f"{plain_warn}"}
