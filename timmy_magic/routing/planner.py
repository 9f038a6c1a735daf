"""Route planning: which providers to try, in what order, and why the others are skipped.

Pure: it takes a snapshot of every provider (``ProviderView``) and returns a ``Plan``. No I/O, no
clock; the router builds the views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from timmy_magic.model.chat import ConfigState, ProbeState, Skip, SkipReason
from timmy_magic.text.markup import short_count


@dataclass(frozen=True, slots=True)
class ProviderView:
    name: str
    priority: int
    enabled: bool
    is_cloud: bool
    state: ProbeState | ConfigState
    """What planning needs of its health: the probes' verdict (a not-running server reads
    down, an open circuit unknown: ``circuit_available`` says that), or the configuration
    state that keeps it out."""
    circuit_available: bool
    circuit_retry_in: float = 0.0
    held: bool = False
    """A managed server stopped on purpose (``%llm stop``): out of the cascade until
    started again, or until a request pinned to it starts it."""
    half_open: bool = False
    """A half-open circuit wants its probe request even if the last health check said down:
    that request is how a recovered server comes back."""
    models: frozenset[str] = frozenset()
    """Models this provider declares or serves (empty: unknown, accept any)."""
    detail: str = ""
    model: str | None = None
    """The model this request would be asked of here (the request's, else the default)."""
    vision: bool = False
    """That model declares ``capabilities: [vision]``."""
    window: int | None = None
    """That model's context window in tokens (providers.yaml, else what the server
    reported), None if unknown."""
    completion: bool = False
    """That model is asked as a plain completion (``mode: completion``): a base model."""
    output_tokens: int = 0
    """The room the answer takes there: the request's max_tokens, else the model's, else
    the cascade's default."""
    tools: bool = False
    """That model declares ``capabilities: [tools]`` (natively, or through the prompted
    protocol: ``tools/prompted.py``)."""


@dataclass(frozen=True, slots=True)
class Plan:
    order: tuple[str, ...]
    skipped: tuple[Skip, ...]
    considered: tuple[str, ...]

    def skipped_for(self, reason: SkipReason) -> list[str]:
        return [s.provider for s in self.skipped if s.reason == reason]


_CONFIG_STATES: dict[str, SkipReason] = {
    "not_configured": "not_configured",
    "not_installed": "not_installed",
    "misconfigured": "misconfigured",
}


def plan_route(views: Sequence[ProviderView], *, pin: str | None = None, model: str | None = None,
               cloud_open: bool = True, cloud_reason: str = "", needs_vision: bool = False,
               input_tokens: int = 0, needs_instructions: bool = False,
               needs_tools: bool = False) -> Plan:
    """Order candidates by (priority, file order); skip with a reason each one that cannot
    be used now. A pinned provider is the only candidate: it is tried even when disabled or
    last seen down (the user asked for it), but never past an open circuit or a closed gate,
    and never with an image its model cannot see.

    ``needs_vision``: the request holds an image; a provider whose model does not declare
    ``vision`` is skipped (``no_vision``). ``input_tokens``: the request's estimate; a
    provider whose known window cannot hold it and the answer's room is skipped
    (``context_window``), unless pinned: the estimate is rough (4 characters a token), the
    caller has cut the context to that window, and the server has the last word.
    ``needs_tools``: the request offers tools; a provider whose model does not declare
    ``tools`` is skipped (``no_tools``), pinned or not (it could not call them).
    ``needs_instructions``: an assistant's task; a completion-mode model is skipped
    (``completion_model``), even pinned: it would answer junk, not an error.
    """
    ordered = sorted(enumerate(views), key=lambda iv: (iv[1].priority, iv[0]))
    order: list[str] = []
    skipped: list[Skip] = []
    for _, v in ordered:
        pinned = pin is not None and v.name == pin
        reason, detail = _skip_reason(v, pin=pin, pinned=pinned, model=model,
                                      cloud_open=cloud_open, cloud_reason=cloud_reason)
        if reason is None:
            reason, detail = _capability(v, pinned, needs_vision, input_tokens,
                                         needs_instructions, needs_tools)
        if reason is None:
            order.append(v.name)
        else:
            skipped.append(Skip(v.name, reason, detail))
    considered = tuple(v.name for _, v in ordered)
    return Plan(tuple(order), tuple(skipped), considered)


def _skip_reason(v: ProviderView, *, pin: str | None, pinned: bool, model: str | None,
                 cloud_open: bool, cloud_reason: str) -> tuple[SkipReason | None, str]:
    if pin is not None and not pinned:
        return "pinned_elsewhere", f"pinned to {pin}"
    if not v.enabled and not pinned:
        return "disabled", ""
    if v.held and not pinned:
        return "stopped", "stopped with %llm stop; %llm start starts it"
    if v.state in _CONFIG_STATES:
        return _CONFIG_STATES[v.state], v.detail
    if v.is_cloud and not cloud_open:
        return "cloud_gate", cloud_reason
    if not v.circuit_available:
        return "circuit_open", f"retry in {v.circuit_retry_in:.0f}s"
    if v.state == "down" and not pinned and not v.half_open:
        return "unhealthy", v.detail
    if model and v.models and model not in v.models and not pinned:
        return "no_model", f"does not serve {model}"
    return None, ""


def _capability(v: ProviderView, pinned: bool, needs_vision: bool, input_tokens: int,
                needs_instructions: bool = False, needs_tools: bool = False
                ) -> tuple[SkipReason | None, str]:
    """Whether this provider's model can take this request (after every state check: a
    provider that is down says so first)."""
    if needs_instructions and v.completion:
        return "completion_model", (f"{v.model or 'its model'} is a base model (mode: "
                                    "completion): it continues text, it does not follow "
                                    "instructions")
    if needs_vision and not v.vision:
        what = f"model {v.model}" if v.model else "no model configured;"
        return "no_vision", f"{what} lacks capabilities: [vision]"
    if needs_tools and not v.tools:
        what = f"model {v.model}" if v.model else "no model configured;"
        return "no_tools", f"{what} lacks capabilities: [tools]"
    need = input_tokens + v.output_tokens
    if v.window is not None and need > v.window and not pinned:
        return "context_window", f"{short_count(need)} tokens > {short_count(v.window)}"
    return None, ""


def pick_endpoint(outstanding: Sequence[int], available: Sequence[bool],
                  healthy: Sequence[bool], start: int = 0) -> int | None:
    """Least outstanding requests among available endpoints, healthy ones first; ties go
    round-robin from ``start`` so equal replicas share the load."""
    n = len(outstanding)
    best: tuple[int, int, int] | None = None
    for k in range(n):
        i = (start + k) % n
        if not available[i]:
            continue
        key = (0 if healthy[i] else 1, outstanding[i], k)
        if best is None or key < best:
            best = key
    return None if best is None else (start + best[2]) % n
