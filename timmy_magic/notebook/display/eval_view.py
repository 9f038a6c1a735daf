"""How an ``Evaluation`` is shown: in a notebook, its headline, the summary table and a
chart of score against cost and against latency (an SVG drawn here: no plotting library
needed), the targets on the frontier (none cheaper or faster with a score as high)
filled and joined; in a terminal, its text table (``Evaluation.text_table``). Every
label and figure goes through ``markup`` (``html`` in the table, ``html_attr`` in the
SVG's text). Registered with IPython's HTML formatter when the extension loads."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from timmy_magic.evals import Evaluation, Figures
from timmy_magic.evals.figures import frontier, score_text
from timmy_magic.notebook.display.tables import TONE_COLOURS
from timmy_magic.text.markup import html, html_attr, shorten

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 320, 230, 46, 40, 22, 14
"""One panel's size and margins, in pixels."""
_CSS = (".tm-eval table{border-collapse:collapse;margin:4px 0}.tm-eval td,.tm-eval th"
        "{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd}"
        ".tm-eval td:first-child,.tm-eval th:first-child{text-align:left}")
Axis = tuple[str, Callable[[Figures], float | None], Callable[[float], str]]


def evaluation_html(ev: Evaluation) -> str:
    """The headline, the summary table and the chart, as one HTML block."""
    return (f"<div class='tm-eval'><style>{_CSS}</style><p><em>{html(ev.headline())}</em>"
            f"</p>{summary_table(ev)}{chart(ev.figures(), ev.scored)}</div>")


def summary_table(ev: Evaluation) -> str:
    heads = ["target", "score [95%]", "rows", "errors", "latency p50", "p95", "tok/s",
             "cost", "per 1k rows"]
    judged = any(f.judge_cost_usd for f in ev.figures())
    if judged:
        heads.append("judge cost")
    body = []
    for f in ev.figures():
        cells = [f.target, score_text(f) if ev.scored else "-", str(f.rows), str(f.errors),
                 _s(f.latency_p50_s), _s(f.latency_p95_s), _n(f.tokens_per_s),
                 _usd(f.cost_usd), _usd(f.cost_per_1k_rows)]
        if judged:
            cells.append(_usd(f.judge_cost_usd))
        body.append("<tr>" + "".join(f"<td>{html(c)}</td>" for c in cells) + "</tr>")
    head = "<tr>" + "".join(f"<th>{html(h)}</th>" for h in heads) + "</tr>"
    return f"<table>{head}{''.join(body)}</table>"


def chart(lines: Sequence[Figures], scored: bool) -> str:
    """Score against cost per 1,000 rows and against median latency (one panel: cost
    against latency when nothing was scored)."""
    cost: Axis = ("cost per 1k rows", lambda f: f.cost_per_1k_rows, _usd)
    latency: Axis = ("latency p50", lambda f: f.latency_p50_s, _s)
    score: Axis = ("score", lambda f: f.score_mean, lambda v: f"{v:.2f}")
    panels = [(cost, score), (latency, score)] if scored else [(latency, cost)]
    svgs = [_panel(lines, x, y, fixed_y=scored) for x, y in panels]
    return f"<div style='display:flex;gap:12px;flex-wrap:wrap'>{''.join(svgs)}</div>"


def _panel(lines: Sequence[Figures], x: Axis, y: Axis, fixed_y: bool) -> str:
    points = [(f, xv, yv) for f in lines
              if (xv := x[1](f)) is not None and (yv := y[1](f)) is not None]
    out = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
           f"role='img' aria-label='{html_attr(y[0] + ' against ' + x[0])}' "
           "style='font:11px sans-serif;background:#fff'>")]
    left, right, top, bottom = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    out.append(f"<rect x='{left}' y='{top}' width='{right - left}' height='{bottom - top}' "
               "fill='none' stroke='#bbb'/>")
    out.append(_text(W / 2, H - 6, x[0], "middle"))
    out.append(_text(4, 12, y[0], "start"))
    if not points:
        out.append(_text(W / 2, H / 2, "no figures to draw", "middle"))
        return "".join(out) + "</svg>"
    x0, x1 = _span([p[1] for p in points])
    y0, y1 = (0.0, 1.0) if fixed_y else _span([p[2] for p in points])

    def at(xv: float, yv: float) -> tuple[float, float]:
        return (left + (xv - x0) / (x1 - x0) * (right - left),
                bottom - (yv - y0) / (y1 - y0) * (bottom - top))

    out += [_text(left, bottom + 14, x[2](x0), "start"),
            _text(right, bottom + 14, x[2](x1), "end"),
            _text(left - 4, bottom, y[2](y0), "end"), _text(left - 4, top + 8, y[2](y1), "end")]
    # the frontier: lower x, higher y (a score is better high; cost and latency low)
    best = frontier([(p[1], p[2] if y[0] == "score" else -p[2]) for p in points])
    if len(best) > 1:
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in (at(points[i][1], points[i][2])
                                                        for i in best))
        out.append(f"<polyline points='{path}' fill='none' stroke='{TONE_COLOURS['green']}' "
                   "stroke-dasharray='4 3'/>")
    for i, (f, xv, yv) in enumerate(points):
        cx, cy = at(xv, yv)
        colour = TONE_COLOURS["green"] if i in best else TONE_COLOURS["grey"]
        if y[0] == "score" and f.score_low is not None and f.score_high is not None:
            _, lo = at(xv, f.score_low)
            _, hi = at(xv, f.score_high)
            out.append(f"<line x1='{cx:.1f}' x2='{cx:.1f}' y1='{lo:.1f}' y2='{hi:.1f}' "
                       f"stroke='{colour}'/>")
        fill = colour if i in best else "#fff"
        out.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='5' fill='{fill}' "
                   f"stroke='{colour}'><title>{html_attr(f.target)}</title></circle>")
        out.append(_text(min(cx + 7, right - 2), cy - 6, shorten(f.target, 28),
                         "end" if cx + 7 > right - 60 else "start"))
    return "".join(out) + "</svg>"


def _span(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return (lo - 1, hi + 1) if lo else (0.0, 1.0)
    pad = (hi - lo) * 0.08
    return max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad


def _text(x: float, y: float, text: str, anchor: str) -> str:
    return (f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' fill='#333'>"
            f"{html_attr(text)}</text>")


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _usd(v: float | None) -> str:
    return "-" if v is None else f"${v:,.4f}" if v < 1 else f"${v:,.2f}"
