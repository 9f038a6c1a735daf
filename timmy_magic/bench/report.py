"""Benchmark results: records, CSV/JSON/pandas, tables (HTML and text), chart.

Display only: the numbers come from ``metrics.timeline_stats``. The best value of each
column is highlighted among the providers measured at the same concurrency level
(comparing TTFT at c=1 with TTFT at c=16 would always crown c=1). Provider and model
names, errors, prompts and notes come from the config and the servers: the HTML writes
each through ``markup.html``, the text through ``markup.plain``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from timmy_magic.bench.metrics import Timeline, peak_streams, timeline_stats
from timmy_magic.text.markup import count, html, plain, shorten

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

ITL_NOTE = ("ITL is measured per content chunk; servers usually send one token per chunk.")
EST_NOTE = ("~ token counts estimated on the client (the server sent no usage): one token "
            "per content chunk, four characters per prompt token.")

# Leading record keys, in order; then metrics.Summary.fields(), then the client's own.
HEAD = ("provider", "model", "concurrency")


@dataclass
class Cell:
    """One provider at one concurrency level, as the runner fills it in."""

    provider: str
    concurrency: int
    total: int
    model_hint: str | None = None
    timelines: list[Timeline] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None
    cpu_start: float = 0.0
    cpu_s: float | None = None
    in_flight: int = 0
    peak: int = 0

    def record(self) -> dict[str, Any]:
        duration = (self.ended - self.started) if (self.started is not None and
                                                   self.ended is not None) else None
        s = timeline_stats(self.timelines, duration)
        chunks = sum(len(t.chunks) for t in self.timelines)
        cpu_ms = self.cpu_s * 1000 / chunks if self.cpu_s is not None and chunks else None
        return {"provider": self.provider, "model": s.model or self.model_hint,
                "concurrency": self.concurrency, **s.fields(),
                "peak_concurrency": self.peak, "peak_streams": peak_streams(self.timelines),
                "client_cpu_s": self.cpu_s, "client_cpu_ms_per_chunk": cpu_ms,
                "interrupted": len(self.timelines) < self.total or s.cancelled > 0}


def warmup_record(provider: str, index: int, t: Timeline) -> dict[str, Any]:
    ttft, e2e = t.ttft, t.e2e
    return {"provider": provider, "index": index, "status": t.status,
            "ttft_ms": ttft * 1000 if ttft is not None else None,
            "e2e_ms": e2e * 1000 if e2e is not None else None,
            "output_tokens": t.output_tokens, "tokens_estimated": t.estimated,
            "error": t.error}


# ------------------------------------------------------------------ the result


@dataclass
class BenchResult:
    """What ``%llm bench`` and ``timmy_magic.bench.run`` return.

    ``records``: one dict per provider x concurrency (``provider``, ``model``,
    ``concurrency``, ``completed``, ``errors``, ``ttft_ms_p50``, ``output_tok_s``, ...);
    ``warmup``: the warm-up requests, apart; ``settings``, ``machine``: for the footer.
    """

    records: list[dict[str, Any]]
    warmup: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, settings: dict[str, Any], cells: Sequence[Cell],
              warmups: Sequence[tuple[str, int, Timeline]], machine: dict[str, Any],
              interrupted: bool, notes: Sequence[str]) -> BenchResult:
        records = [c.record() for c in cells if c.timelines]
        return cls(records, [warmup_record(*w) for w in warmups], settings, machine,
                   interrupted, list(notes))

    # ---------------------------------------------------------------- export

    @property
    def columns(self) -> list[str]:
        keys = list(self.records[0]) if self.records else list(HEAD)
        return list(HEAD) + [k for k in keys if k not in HEAD]

    def to_csv(self, path: str | Path | None = None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        w.writerows(self.records)
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "warmup": self.warmup, "settings": self.settings,
                "machine": self.machine, "interrupted": self.interrupted,
                "notes": self.notes}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.as_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_pandas(self) -> pandas.DataFrame:
        try:
            import pandas
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pandas.DataFrame(self.records, columns=self.columns)

    # ---------------------------------------------------------------- display

    def footer(self) -> list[str]:
        return footer_lines(self)

    def chart(self) -> Figure | None:
        """Output tok/s and TTFT p50 against concurrency, one line per provider (at one
        level, a bar per provider); None when matplotlib is not installed."""
        return make_chart(self.records)

    def _repr_html_(self) -> str:
        return render_html(self)

    def __str__(self) -> str:
        return render_text(self)

    def __repr__(self) -> str:
        return render_text(self)


# ------------------------------------------------------------------ tables

Better = Literal["min", "max"]


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    header: str
    better: Better | None = None
    token_based: bool = False
    digits: int = 1


COLUMNS = (
    Column("provider", "provider"),
    Column("model", "model"),
    Column("concurrency", "conc"),
    Column("completed", "ok"),
    Column("errors", "errors"),
    Column("incomplete", "cut"),
    Column("ttft_ms_p50", "TTFT p50 ms", "min"),
    Column("ttft_ms_p95", "TTFT p95 ms", "min"),
    Column("tpot_ms_p50", "TPOT p50 ms", "min", token_based=True),
    Column("itl_ms_p99", "ITL p99 ms", "min"),
    Column("e2e_ms_p50", "E2E p50 ms", "min"),
    Column("output_tok_s", "out tok/s", "max", token_based=True),
    Column("total_tok_s", "total tok/s", "max", token_based=True),
    Column("requests_per_s", "req/s", "max", digits=2),
)


def best_cells(records: Sequence[dict[str, Any]]) -> set[tuple[int, str]]:
    """(row, key) of the best value per column among rows of the same concurrency, when
    at least two providers were measured there. Rows with no completed request don't win."""
    best: set[tuple[int, str]] = set()
    levels = sorted({r["concurrency"] for r in records})
    for level in levels:
        rows = [i for i, r in enumerate(records) if r["concurrency"] == level
                and r.get("completed")]
        if len(rows) < 2:
            continue
        for col in COLUMNS:
            values = [(records[i].get(col.key), i) for i in rows]
            present = [(v, i) for v, i in values if isinstance(v, (int, float))]
            if not col.better or not present:
                continue
            target = (min if col.better == "min" else max)(v for v, _ in present)
            best.update((i, col.key) for v, i in present if v == target)
    return best


def _cell_text(record: dict[str, Any], col: Column) -> str:
    v = record.get(col.key)
    if col.key == "completed":
        return f"{v}/{record.get('requests', v)}"
    if v is None:
        return "—"
    if isinstance(v, float):
        text = f"{v:,.{col.digits}f}"
    else:
        text = " ".join(str(v).split())  # a name with a newline must not break a row
    if col.token_based and record.get("tokens_estimated"):
        text = "~" + text
    return text


def render_text(result: BenchResult) -> str:
    recs = result.records
    if not recs:
        body = "(no finished runs)"
    else:
        best = best_cells(recs)
        rows = [[_cell_text(r, c) + ("*" if (i, c.key) in best else "") for c in COLUMNS]
                for i, r in enumerate(recs)]
        headers = [c.header for c in COLUMNS]
        widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(headers)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if j < 2 else c.rjust(w)
                             for j, (c, w) in enumerate(zip(cells, widths)))

        body = "\n".join([line(headers), line(["-" * w for w in widths])]
                         + [line(r) for r in rows])
    parts = [body]
    if result.warmup:
        parts.append(_warmup_text(result.warmup))
    parts.append("\n".join(footer_lines(result)))
    if recs and best_cells(recs):
        parts[-1] += "\n* best among providers at the same concurrency"
    return plain("\n\n".join(parts))


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f}"


def _warmup_text(warmup: Sequence[dict[str, Any]]) -> str:
    items = [f"{w['provider']}#{w['index'] + 1} TTFT {_ms(w['ttft_ms'])} ms, "
             f"E2E {_ms(w['e2e_ms'])} ms"
             + (f" ({w['status']}: {w['error']})" if w["status"] != "ok" else "")
             for w in warmup]
    return "warm-up (not in the table): " + "; ".join(items)


def footer_lines(result: BenchResult) -> list[str]:
    m, s = result.machine, result.settings
    lines = []
    if m:
        lines.append(f"machine: {m.get('cpu')} ({m.get('cores')} cores), {m.get('system')} "
                     f"{m.get('arch')}, Python {m.get('python')}, timmy_magic "
                     f"{m.get('timmy_magic')}, {m.get('started')}")
    models = {r["provider"]: r.get("model") for r in result.records}
    if models:
        lines.append("models: " + ", ".join(f"{p}={mo or '?'}" for p, mo in models.items()))
    if s:
        prompts = s.get("prompts") or []
        first = prompts[0] if prompts else ""
        shown = shorten(first, 80)  # one line; escaped where it is rendered
        lines.append(
            f"settings: n={s.get('n')} requests per level (at least the concurrency), "
            f"concurrency {', '.join(map(str, s.get('concurrency', [])))}, "
            f"max_tokens={s.get('max_tokens')}, warm-up {s.get('warmup')} per provider, "
            f"temperature={s.get('temperature') if s.get('temperature') is not None else 'server default'}, "
            f"{count(len(prompts), 'prompt')}: “{shown}”")
    lines.append("metrics as in vLLM's benchmark_serving, measured on this client through "
                 "the router. " + ITL_NOTE)
    cpu = [r["client_cpu_ms_per_chunk"] for r in result.records
           if r.get("client_cpu_ms_per_chunk") is not None]
    if cpu:
        lines.append(f"this notebook's own CPU per streamed piece of text: "
                     f"{min(cpu):.3f}-{max(cpu):.3f} ms (the measuring client's cost)")
    if any(r.get("tokens_estimated") for r in result.records):
        lines.append(EST_NOTE)
    for r in result.records:
        if r.get("first_error"):
            lines.append(f"{r['provider']} c={r['concurrency']}: {r['errors']} errors, "
                         f"{r['incomplete']} cut, {r['cancelled']} cancelled; first: "
                         f"{r['first_error']}")
    lines += result.notes
    return lines


_CSS = ("<style>.tm-bench td,.tm-bench th{padding:2px 8px;text-align:right}"
        ".tm-bench td.l,.tm-bench th.l{text-align:left;white-space:nowrap}"
        ".tm-bench td.best{font-weight:bold;background:#d9f2d9}"
        ".tm-bench td.bad{color:#b00020;font-weight:bold}"
        ".tm-bench-foot{font-size:85%;color:#555}</style>")


def render_html(result: BenchResult) -> str:
    recs = result.records
    best = best_cells(recs)
    head = "".join(f"<th class='{'l' if j < 2 else ''}'>{html(c.header)}</th>"
                   for j, c in enumerate(COLUMNS))
    rows = []
    for i, r in enumerate(recs):
        cells = []
        for j, c in enumerate(COLUMNS):
            cls = ["l"] if j < 2 else []
            if (i, c.key) in best:
                cls.append("best")
            if c.key in ("errors", "incomplete") and r.get(c.key):
                cls.append("bad")
            attr = f" class='{' '.join(cls)}'" if cls else ""
            cells.append(f"<td{attr}>{html(_cell_text(r, c))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = (f"<table class='tm-bench'><thead><tr>{head}</tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>" if recs else
             "<p>(no finished runs)</p>")
    parts = [_CSS, table]
    if result.warmup:
        parts.append(f"<p class='tm-bench-foot'>{html(_warmup_text(result.warmup))}</p>")
    foot = footer_lines(result) + (["bold: best among providers at the same concurrency"]
                                   if best else [])
    parts.append("<p class='tm-bench-foot'>" + "<br>".join(html(x) for x in foot)
                 + "</p>")
    png = chart_png(recs) if recs else None
    if png:
        parts.append(f"<img alt='output tok/s and TTFT per provider' "
                     f"src='data:image/png;base64,{png}'/>")
    return "<div class='tm-bench-result'>" + "".join(parts) + "</div>"


# ------------------------------------------------------------------ chart


def make_chart(records: Sequence[dict[str, Any]]) -> Figure | None:
    """Output tokens/s and TTFT p50 per provider: lines against concurrency, or with one
    concurrency level (``%llm bench`` without ``-c``) a bar per provider."""
    try:  # an optional extra (timmy-magic[charts]); no pyplot, so no global state
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    tput, ttft = fig.subplots(1, 2)
    providers = list(dict.fromkeys(r["provider"] for r in records))
    records = [{**r, "provider": _literal(r["provider"])} for r in records]
    providers = [_literal(p) for p in providers]
    levels = sorted({r["concurrency"] for r in records})
    if len(levels) == 1:
        _bars(tput, ttft, records, providers, levels[0])
    else:
        _lines(tput, ttft, records, providers, levels)
    for ax, title in ((tput, "output tokens/s"), (ttft, "TTFT p50 (ms)")):
        ax.set_ylim(bottom=0)  # from 0: an 8 % change must look like one
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    # above both charts: inside one, the legend sat on the highest points
    fig.legend(*tput.get_legend_handles_labels(), loc="outside upper center",
               ncols=min(len(providers), 4), fontsize="small", frameon=False)
    return fig


def _literal(label: str) -> str:
    """A label matplotlib shows as written: cleaned and redacted (``markup.plain``: a lone
    surrogate cannot be drawn), and a ``$`` escaped (it would start mathtext, and a
    provider named ``$$\\int$$`` would fail the chart, and with it the whole report)."""
    return plain(label).replace("$", r"\$")


def _ttft(r: dict[str, Any]) -> float:
    return r["ttft_ms_p50"] if r["ttft_ms_p50"] is not None else float("nan")


def _lines(tput: Any, ttft: Any, records: Sequence[dict[str, Any]], providers: list[str],
           levels: list[int]) -> None:
    for provider in providers:
        rows = sorted((r for r in records if r["provider"] == provider),
                      key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        tput.plot(xs, [r["output_tok_s"] or 0 for r in rows], marker="o", label=provider)
        ttft.plot(xs, [_ttft(r) for r in rows], marker="o", label=provider)
    for ax in (tput, ttft):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])  # 1, 2, 4: not 2⁰, 2¹, 2²
        ax.minorticks_off()
        ax.set_xlabel("concurrency")


def _bars(tput: Any, ttft: Any, records: Sequence[dict[str, Any]], providers: list[str],
          level: int) -> None:
    by_provider = {r["provider"]: r for r in records}
    for i, provider in enumerate(providers):
        r = by_provider[provider]
        tput.bar(i, r["output_tok_s"] or 0, color=f"C{i}", label=provider)
        ttft.bar(i, _ttft(r), color=f"C{i}", label=provider)
    for ax in (tput, ttft):
        ax.set_xticks(range(len(providers)), providers)
        ax.set_xlabel(f"concurrency {level}")


def chart_png(records: Sequence[dict[str, Any]]) -> str | None:
    fig = make_chart(records)
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")
