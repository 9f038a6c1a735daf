"""The state the router's parts share: configuration, the provider table, the pin, the
spend ledger, listeners, and the loop thread that owns them.

Writes happen on the loop thread only (``Core.on_loop`` hops there); other threads read
immutable snapshots (the provider table is rebound, never mutated in place). The parts:

    cascade.py   order, retries, failover, trace          (one request)
    attempt.py   one try against one endpoint             (deadlines, usage, cost)
    monitor.py   health checks, the health loop, idle reaping
    servers.py   managed servers: launch, adopt, stop
    router.py    the public facade over all of them
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from timmy_magic.config import Config
from timmy_magic.model.chat import HealthReport
from timmy_magic.model.errors import TimmyError, UnknownProvider
from timmy_magic.privacy.redact import REDACT, get_logger
from timmy_magic.providers import registry
from timmy_magic.providers.base import Backend, Probe, Timeouts
from timmy_magic.routing import gate as gate_mod
from timmy_magic.routing.breaker import CircuitBreaker
from timmy_magic.routing.endpoints import Endpoint, ProviderState, build_report
from timmy_magic.routing.retry import RetryPolicy
from timmy_magic.routing.runner import Runner
from timmy_magic.servers.launch import Launcher

log = get_logger("timmy_magic.routing.router")
_SHOWN: dict[tuple[str, Any], str] = {}


def shown_url(ep: Endpoint) -> str:
    """``ep.shown_url`` (credentials masked), worked out once per URL: every request
    names its endpoint in its events and trace."""
    key = (ep.url, REDACT._table[0])  # a secret registered since changes the pattern
    shown = _SHOWN.get(key)
    if shown is None:
        if len(_SHOWN) > 1024:
            _SHOWN.clear()
        shown = _SHOWN[key] = ep.shown_url
    return shown
ChangeKind = Literal["health", "metrics", "pin", "gate", "config"]


class Core:
    def __init__(self, config: Config, *, runner: Runner | None,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random,
                 quota: gate_mod.QuotaSignal | None = None) -> None:
        self.clock, self.rand = clock, rand
        self._runner = runner
        self.own_runner = runner is None
        self.closed = False
        self.listeners: list[Callable[[ChangeKind], None]] = []
        self.ledger = gate_mod.SpendLedger()
        self.pinned: str | None = None
        self._quota_override = quota
        self._background: set[asyncio.Future[Any]] = set()
        self.providers: dict[str, ProviderState] = {}
        self.apply(config)

    # ------------------------------------------------------------ the loop

    @property
    def runner(self) -> Runner:
        if self.closed:
            raise TimmyError("this router is closed")
        if self._runner is None or not self._runner.alive:
            self._runner = Runner()
            self.own_runner = True
        return self._runner

    @property
    def has_runner(self) -> bool:
        return self._runner is not None and self._runner.alive

    def on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn(*args)`` on the loop thread and wait for it."""
        runner = self.runner
        if runner.on_loop():
            return fn(*args)

        async def call() -> Any:
            return fn(*args)

        return runner.run(call(), timeout=30)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in the background on the loop (from the loop thread)."""
        try:
            task = asyncio.ensure_future(work)
        except RuntimeError:  # no loop here (constructing): nothing can be running yet
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def notify(self, kind: ChangeKind) -> None:
        for fn in list(self.listeners):
            try:
                fn(kind)
            except Exception:
                log.exception("listener failed")

    # ------------------------------------------------------------ configuration

    def apply(self, config: Config) -> None:
        """Use ``config`` from now on. Providers whose settings did not change keep their
        health, breakers and metrics; replaced endpoints retire (see ``retire``)."""
        c = config.cascade
        self.config = config
        self.policy = RetryPolicy(c.max_retries_per_provider, c.retry_delay_seconds,
                                  c.max_retry_delay_seconds, c.retry_after_cap_seconds)
        self.timeouts = Timeouts(c.connect_timeout_seconds, c.idle_timeout_seconds,
                                 c.health_timeout_seconds, c.first_token_timeout_seconds)
        self.local_only = config.cloud_gate.local_only
        q = config.cloud_gate.quota
        self.quota = self._quota_override or (gate_mod.QuotaSignal(
            command=q.command, callable_path=q.callable, ttl=q.ttl_seconds,
            timeout=q.timeout_seconds) if q else None)
        old, new = self.providers, dict[str, ProviderState]()
        bc = c.circuit_breaker
        for p in config.providers:
            prev = old.get(p.name)
            if prev is not None and prev.cfg == p:
                new[p.name] = prev
                continue
            new[p.name] = ProviderState(p, [
                Endpoint(u, CircuitBreaker(bc.failure_threshold, bc.recovery_timeout,
                                           bc.half_open_max_calls),
                         launcher=Launcher(p.name, u, p.launch) if p.launch else None)
                for u in p.urls])
        self.providers = new
        for name, st in old.items():
            if new.get(name) is not st:
                for ep in st.endpoints:
                    self.retire(ep)
        if self.pinned and self.pinned not in new:
            self.pinned = None
            self.notify("pin")

    def retire(self, ep: Endpoint) -> None:
        """An endpoint a reload replaced: new requests no longer see it; its connections
        close and its managed server stops once its last running stream has ended."""
        ep.retired = True
        if ep.outstanding:
            return  # the attempt that ends last calls this again
        backend, ep.backend = ep.backend, None
        if backend is not None:
            self.spawn(backend.aclose())
        if ep.launcher is not None:
            self.spawn(asyncio.to_thread(ep.launcher.stop))  # may wait for the process

    # ------------------------------------------------------------ lookups

    def provider(self, name: str) -> ProviderState:
        try:
            return self.providers[name]
        except KeyError:
            raise UnknownProvider(f"no provider named '{name}'; configured: "
                                  f"{', '.join(self.providers) or '(none)'}") from None

    def backend(self, st: ProviderState, ep: Endpoint) -> Backend:
        if ep.backend is None:
            ep.backend = registry.load_factory(st.cfg.type)(st.cfg, ep.url, self.timeouts)
        return ep.backend

    def report(self, st: ProviderState, now: float | None = None) -> HealthReport:
        return build_report(st, self.clock() if now is None else now)

    def mark_up(self, ep: Endpoint, now: float) -> None:
        """It answered: a badge that said down is out of date."""
        if ep.probe is None or ep.probe.state == "down":
            ep.probe = Probe("healthy", models=ep.probe.models if ep.probe else ())
            ep.checked_at = now

    def gate(self) -> gate_mod.GateDecision:
        """The cloud gate now. On the loop thread, no I/O: the quota signal's last answer
        is used (the cascade reads it in a worker thread before a request is planned);
        from another thread a stale signal is read there and then."""
        g = self.config.cloud_gate
        closed = tuple(g.quota.closed_tiers) if g.quota else ("resting",)
        on_loop = self._runner is not None and self._runner.on_loop()
        tier = None if self.quota is None else \
            self.quota.cached() if on_loop else self.quota.tier()
        return gate_mod.decide(local_only=self.local_only, spent_usd=self.ledger.spent_today,
                               budget_usd=g.daily_budget_usd, tier=tier, closed_tiers=closed)
