"""From an evaluation to a provider order: the targets whose mean score meets
``min_score``, cheapest first (cost per 1,000 rows), then fastest (median latency), as
the ``priority:`` lines of providers.yaml, with the figures each place rests on.

Priority is a provider's, not a model's: when two targets of one provider qualify, the
better placed one decides its place and the snippet says which model it was (make it
the provider's ``default: true`` model). A target with no answer at all gives no evidence
and is left out, as is one below the bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from timmy_magic.evals.figures import score_text
from timmy_magic.evals.targets import EvalError, Target
from timmy_magic.text.markup import md_code, plain, shorten

if TYPE_CHECKING:
    from timmy_magic.evals.evaluation import Evaluation
    from timmy_magic.evals.figures import Figures


@dataclass(frozen=True)
class Place:
    """One target's evidence and what became of it: ``priority`` (1 first), or None and
    ``why`` it was left out."""

    target: Target
    figures: Figures
    priority: int | None
    why: str


@dataclass(frozen=True)
class CascadeAdvice:
    """The order, as a providers.yaml snippet (``yaml``), and its evidence (``places``)."""

    min_score: float | None
    places: tuple[Place, ...]
    rows: int

    @property
    def order(self) -> list[str]:
        """The providers in the order advised."""
        kept = sorted((p for p in self.places if p.priority is not None),
                      key=lambda p: p.priority or 0)
        return [p.target.provider for p in kept]

    @property
    def yaml(self) -> str:
        bar = f", min_score {self.min_score:g}" if self.min_score is not None else ""
        out = [f"# from an evaluation over {self.rows} rows{bar}: cheapest, then fastest first",
               "providers:"]
        kept = sorted((p for p in self.places if p.priority is not None),
                      key=lambda p: p.priority or 0)
        for p in kept:
            model = f" (model {shorten(p.target.model, 80)}: make it default)" \
                if p.target.model else ""
            out += [f"  - name: {_yaml_text(p.target.provider)}",
                    f"    priority: {p.priority}  # {plain(_evidence(p.figures) + model)}"]
        if not kept:
            out.append("  []  # no target met the bar: nothing to order")
        out += [f"# left out: {plain(shorten(f'{p.target.label}: {p.why}', 300))}"
                for p in self.places
                if p.priority is None]
        return "\n".join(out) + "\n"

    def evidence(self) -> Any:
        """The places as a DataFrame: target, priority, why, and the figures."""
        import pandas as pd

        return pd.DataFrame([{"target": p.target.label, "priority": p.priority,
                              "why": p.why, **p.figures.fields()} for p in self.places]
                            ).set_index("target")

    def __str__(self) -> str:
        return self.yaml

    def __repr__(self) -> str:
        return self.yaml

    def _repr_markdown_(self) -> str:
        return md_code(self.yaml, "yaml")


def advise(evaluation: Evaluation, min_score: float | None) -> CascadeAdvice:
    """The order ``evaluation`` supports (see the module's doc)."""
    if min_score is not None:
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or \
                not (math.isfinite(min_score) and 0 <= min_score <= 1):
            raise EvalError(f"cascade: min_score must be a number in [0, 1], not "
                            f"{min_score!r}")
        if not evaluation.scored:
            raise EvalError("cascade: this evaluation was not scored, so min_score has "
                            "nothing to compare with: evaluate with score=")
    lines = list(zip(evaluation.targets, evaluation.figures()))
    places: list[Place] = []
    ranked = []
    for t, f in lines:
        if f.rows == f.errors:
            places.append(Place(t, f, None, "no answer to judge it by"))
        elif min_score is not None and (f.score_mean or 0.0) < min_score:
            places.append(Place(t, f, None, f"score {score_text(f)} is below {min_score:g}"))
        else:
            ranked.append((t, f))
    ranked.sort(key=lambda tf: (tf[1].cost_per_1k_rows or 0.0,
                                tf[1].latency_p50_s if tf[1].latency_p50_s is not None
                                else math.inf))
    seen: dict[str, Target] = {}
    for t, f in ranked:
        if t.provider in seen:
            places.append(Place(t, f, None, f"{seen[t.provider].label} places "
                                            f"{t.provider} higher"))
            continue
        seen[t.provider] = t
        places.append(Place(t, f, len(seen), "cheapest and fastest among the rest"
                            if len(seen) > 1 else "cheapest and fastest"))
    order = {t: i for i, t in enumerate(evaluation.targets)}
    places.sort(key=lambda p: (p.priority is None, p.priority or 0, order[p.target]))
    return CascadeAdvice(min_score, tuple(places), len(evaluation.rows))


def _evidence(f: Figures) -> str:
    parts = [f"score {score_text(f)}"] if f.score_mean is not None else []
    per_k = f.cost_per_1k_rows
    parts.append(f"${per_k:.4f}/1k rows" if per_k is not None else "cost unknown")
    if f.latency_p50_s is not None:
        parts.append(f"p50 {f.latency_p50_s:.2f}s")
    if f.errors:
        parts.append(f"{f.errors}/{f.rows} errors")
    return ", ".join(parts)


def _yaml_text(name: str) -> str:
    """A name as a YAML scalar that reads back as the same string."""
    import json

    plain_ok = name.replace("-", "").replace("_", "").replace(".", "").isalnum()
    return name if plain_ok and not name[0].isdigit() else json.dumps(name)
