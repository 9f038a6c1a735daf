"""Per-provider state shared by the router's parts, and the health report built from it.

``build_report`` is pure: it reads the endpoints' last probes, breakers and managed-server
states at time ``now`` and says what a badge should show, and why.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from timmy_magic.config import ProviderConfig
from timmy_magic.model.chat import EndpointHealth, HealthReport, HealthState
from timmy_magic.privacy.redact import REDACT, display_url
from timmy_magic.providers.base import Backend, Probe
from timmy_magic.routing.breaker import CircuitBreaker
from timmy_magic.routing.metrics import ProviderMetrics
from timmy_magic.servers.launch import Launcher


@dataclass
class Endpoint:
    url: str
    breaker: CircuitBreaker
    backend: Backend | None = None
    probe: Probe | None = None
    checked_at: float | None = None
    outstanding: int = 0
    launcher: Launcher | None = None
    retired: bool = False
    """Replaced by a reload: closed once its last running stream ends."""
    answered: bool = False
    """A health check got an answer from it in this session (then "down" means it went
    away; before, a local one that refuses connections is just "not running")."""

    @property
    def shown_url(self) -> str:
        """The URL as it may be shown (credentials masked)."""
        return display_url(self.url)

    def __repr__(self) -> str:
        return (f"Endpoint(url={self.shown_url!r}, breaker={self.breaker!r}, "
                f"outstanding={self.outstanding}, retired={self.retired})")


@dataclass
class ProviderState:
    cfg: ProviderConfig
    endpoints: list[Endpoint]
    metrics: ProviderMetrics = field(default_factory=ProviderMetrics)
    misconfigured: str | None = None
    checking: bool = False
    rr: int = 0
    windows: dict[str, int] = field(default_factory=dict)
    """Context windows the servers reported (health checks), by model: kept when a
    server goes down, replaced (never mutated: other threads read it) when one reports."""
    reported: dict[str, frozenset[str]] = field(default_factory=dict)
    """What servers said each model can do (Ollama's ``/api/show`` capabilities), by
    model: rebound, never mutated (other threads read it)."""
    slots: asyncio.Semaphore | None = None
    """``max_concurrency``: the requests this provider takes at once, from every caller of
    the router (cells, background jobs, ``map``, ``evaluate``); the others wait their
    turn (``cascade.stream``). None: no limit."""

    def __post_init__(self) -> None:
        if self.slots is None and self.cfg.max_concurrency is not None:
            self.slots = asyncio.Semaphore(self.cfg.max_concurrency)

    @property
    def name(self) -> str:
        return self.cfg.name

    def model_for(self, model: str | None) -> str | None:
        """The model a request for ``model`` is asked of here (None: the server's own)."""
        return model or self.cfg.default_model

    def context_window(self, model: str | None) -> int | None:
        """The window of ``model`` (None: the default) here: its ``context_window`` in
        providers.yaml, else what a server reported for it (a server that reported one
        model's window serves that one model), else None."""
        name = self.model_for(model)
        mc = self.cfg.model(name)
        if mc is not None and mc.context_window:
            return mc.context_window
        known = self.windows
        if not known:
            return None
        if name is not None:
            for key in (name, f"{name}:latest"):  # Ollama: no tag means :latest
                if key in known:
                    return known[key]
        if name is None or len(known) == 1:
            return min(known.values())
        return None

    def capabilities(self, model: str | None) -> frozenset[str]:
        """What ``model`` (None: the default) can do here: what providers.yaml declares
        (``capabilities:``) and what its server said at a health check (``reported``)."""
        name = self.model_for(model)
        mc = self.cfg.model(name)
        declared = frozenset(mc.capabilities) if mc is not None else frozenset()
        known = self.reported
        if not known:
            return declared
        for key in (name, f"{name}:latest") if name is not None else ():
            if key in known:
                return declared | known[key]
        if name is None and len(known) == 1:  # the server's one model
            return declared | next(iter(known.values()))
        return declared


START_COMMANDS = {
    "llama_cpp": "llama-server -m MODEL.gguf --port {port}",
    "ollama": "ollama serve",
    "vllm_mlx": "vllm-mlx serve MODEL --port {port}",
    "mlx_lm": "mlx_lm.server --model MODEL --port {port}",
}


def is_loopback(url: str) -> bool:
    """A URL on this machine (where "nothing listening" means "not started")."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    return host in ("localhost", "::1", "0.0.0.0") or host.startswith("127.") \
        or host.endswith(".localhost")


def start_hint(cfg: ProviderConfig, url: str) -> str:
    """How to start a local server that is not running."""
    try:
        port = urlsplit(url).port
    except ValueError:
        port = None
    how = START_COMMANDS.get(cfg.type, "")
    how = how.format(port=port) if how and (port or "{port}" not in how) else ""
    where = display_url(url)
    return (f"nothing listening at {where}: start it ({how}) or set enabled: false" if how
            else f"nothing listening at {where}: start its server or set enabled: false")


def _not_running(st: ProviderState, probes: list[Probe]) -> bool:
    """A local provider none of whose servers has answered in this session, all refusing
    connections: not started, which is not an error (grey "not running", not red "down")."""
    return (not st.cfg.is_cloud and len(probes) == len(st.endpoints)
            and not any(ep.answered or ep.launcher is not None for ep in st.endpoints)
            and all(is_loopback(ep.url) for ep in st.endpoints)
            and all(p.state == "down" and p.refused for p in probes))


def build_report(st: ProviderState, now: float) -> HealthReport:
    """The health of one provider: configuration states first (disabled, not configured,
    not installed, misconfigured), then the circuit, then the endpoints' probes (a local
    one that has never answered and refuses connections: not running), refined by its
    managed servers (stopped, starting, crashed)."""
    cfg = st.cfg
    launchers = [ep.launcher for ep in st.endpoints if ep.launcher is not None]
    eps = tuple(EndpointHealth(
        ep.shown_url, ep.probe.state if ep.probe else "unknown",
        ep.probe.latency_s if ep.probe else None, ep.probe.error if ep.probe else None,
        ep.breaker.state(now), ep.outstanding) for ep in st.endpoints)
    probes = [ep.probe for ep in st.endpoints if ep.probe is not None]
    models = tuple(dict.fromkeys(m for p in probes for m in p.models))
    detail: dict[str, Any] = {}
    for p in probes:
        detail.update(p.detail)
    latencies = [p.latency_s for p in probes if p.latency_s is not None]
    errors = [p.error for p in probes if p.error]
    circuits = [e.circuit for e in eps]
    circuit: Any = ("open" if all(c == "open" for c in circuits) else
                    "half_open" if "half_open" in circuits else "closed")
    state: HealthState
    hint = None
    if not cfg.enabled:
        state = "disabled"
    elif cfg.kind.needs_key and not cfg.key():
        state = "not_configured"
        var = ", ".join(cfg.missing_env) or cfg.kind.key_env or "an API key"
        hint = f"set {var} (api_key)"
    elif launchers and any(lc.state == "not_installed" for lc in launchers) and not any(
            p.state != "down" for p in probes):  # (a server answering there is adopted)
        state = "not_installed"
        hint = next(lc.message for lc in launchers if lc.state == "not_installed")
    elif st.misconfigured:
        state = "misconfigured"
        errors = [st.misconfigured]
    elif circuit == "open":
        state = "circuit_open"
    elif not probes:
        state = "unknown"
    else:
        states = {p.state for p in probes}
        state = ("healthy" if states == {"healthy"} and len(probes) == len(eps) else
                 "down" if states == {"down"} and len(probes) == len(eps) else "degraded")
        if state == "down" and _not_running(st, probes):
            state = "not_running"
            hint = start_hint(cfg, st.endpoints[0].url)
    crashes = [c for c in (lc.crashed for lc in launchers) if c]
    if crashes and state not in ("disabled", "not_configured", "not_installed"):
        state = "down" if state in ("down", "unknown", "healthy") else state
        errors.append(crashes[0])
    elif launchers and state in ("down", "unknown", "degraded"):
        states_l = {lc.state for lc in launchers}
        if "starting" in states_l:
            state = "starting"
        elif state != "degraded" and not any(lc.running() for lc in launchers) \
                and "failed" not in states_l:
            state = "stopped"
            hint = (f"stopped with %llm stop: %llm start {cfg.name} starts it"
                    if any(lc.held for lc in launchers) else
                    f"starts on first request (or %llm start {cfg.name})")
    if launchers:
        detail["launch"] = [{"state": lc.state, "pid": lc.pid, "message": lc.message,
                             "log": str(lc.log_path) if lc.log_path else None}
                            for lc in launchers]
        errors += [lc.message for lc in launchers if lc.state == "failed"]
    checked = [ep.checked_at for ep in st.endpoints if ep.checked_at is not None]
    return HealthReport(cfg.name, cfg.type, state, cfg.is_cloud,
                        min(latencies) if latencies else None, models, detail,
                        REDACT(errors[-1]) if errors else None,
                        max(checked) if checked else None, circuit, eps, hint,
                        st.checking)
