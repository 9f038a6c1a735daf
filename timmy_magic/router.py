"""The cascade router: plan a route, try providers in order, stream events.

Failover happens only before the first token. After it, a broken stream ends with a
``Done`` whose result keeps the partial text and names the error, and the failure counts
against that provider. Everything runs on one loop (the ``Runner``'s); the sync methods and
``astream`` from a foreign loop hop onto it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any, Literal

from . import gate as gate_mod
from .breaker import CircuitBreaker, Permit
from .config import Config, load_config
from .errors import (
    NoProviderAvailable,
    PinnedProviderFailed,
    ProviderAuthError,
    ProviderConnectError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
    TimmyError,
    UnknownProvider,
)
from .health import Endpoint, ProviderState, build_report
from .launch import Launcher, LaunchError
from .metrics import MetricsSnapshot
from .planner import Plan, View, pick_endpoint, plan_route
from .providers.base import Backend, Probe, Timeouts, map_error
from .retry import RetryPolicy
from .runner import Runner
from .secrets import REDACT, get_logger
from .types import (
    Attempt,
    ChatRequest,
    Delta,
    Done,
    Event,
    HealthReport,
    Result,
    RouteTrace,
    Status,
    Timings,
    Trying,
    Usage,
)

log = get_logger("timmy_magic.router")
ChangeKind = Literal["health", "metrics", "pin", "gate", "config"]
MAX_ANSWER_CHARS = 4 << 20
"""Longest answer kept (about a million tokens, beyond any model's output): a server that
streams without end is stopped there, the text so far kept, and the error named."""


class Router:
    def __init__(self, config: Config, *, runner: Runner | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random,
                 quota: gate_mod.QuotaSignal | None = None) -> None:
        self._clock, self._rand = clock, rand
        self._runner = runner
        self._own_runner = runner is None
        self._listeners: list[Callable[[ChangeKind], None]] = []
        self._health_task: concurrent.futures.Future[None] | None = None
        self.ledger = gate_mod.SpendLedger()
        self._pinned: str | None = None
        self._closed = False
        self._quota_override = quota
        self._quota_refresh: asyncio.Future[object] | None = None
        self._background: set[asyncio.Future[object]] = set()
        self._providers: dict[str, ProviderState] = {}
        self._apply(config)

    # ------------------------------------------------------------ configuration

    @classmethod
    def from_config(cls, path: str | None = None, **kw: Any) -> Router:
        return cls(load_config(path), **kw)

    def _apply(self, config: Config) -> None:
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
        old = self._providers
        self._providers = {}
        for p in config.providers:
            prev = old.get(p.name)
            if prev is not None and prev.cfg == p:
                self._providers[p.name] = prev  # unchanged: keep health, breaker, metrics
                continue
            bc = c.circuit_breaker
            eps = [Endpoint(u, CircuitBreaker(bc.failure_threshold, bc.recovery_timeout,
                                              bc.half_open_max_calls),
                            launcher=Launcher(p.name, u, p.launch) if p.launch else None)
                   for u in p.urls]
            self._providers[p.name] = ProviderState(p, eps)
        for name, st in old.items():
            if self._providers.get(name) is not st:
                for ep in st.endpoints:
                    self._retire(ep)
        if self._pinned and self._pinned not in self._providers:
            self._pinned = None
            self._notify("pin")

    def _retire(self, ep: Endpoint) -> None:
        """An endpoint a reload replaced: new requests no longer see it; its connections
        close and its managed server stops once its last running stream has ended."""
        ep.retired = True
        if ep.outstanding:
            return  # the attempt that ends last calls this again
        backend, ep.backend = ep.backend, None
        if backend is not None:
            self._spawn(backend.aclose())
        if ep.launcher is not None:
            self._spawn(asyncio.to_thread(ep.launcher.stop))  # may wait for the process

    def _spawn(self, work: Any) -> None:
        """Run ``work`` (a coroutine) in the background on the router's loop."""
        try:
            task = asyncio.ensure_future(work)
        except RuntimeError:  # no loop here (constructing): nothing can be running yet
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn(*args)`` on the router's loop thread and wait: state the loop reads
        (the provider table, the pin) only changes there, and listeners are told there."""
        runner = self.runner
        if runner.on_loop():
            return fn(*args)

        async def call() -> Any:
            return fn(*args)

        return runner.run(call(), timeout=30)

    def reload(self, path: str | None = None) -> Config:
        """Re-read providers.yaml. On a bad file, raise ConfigError and keep everything.
        Streams already running finish on the backends they started with."""
        cfg = load_config(path or (self.config.source if self.config.source.endswith(
            (".yaml", ".yml")) else None))

        def apply() -> None:
            self._apply(cfg)
            self._notify("config")

        self._on_loop(apply)
        return cfg

    @property
    def runner(self) -> Runner:
        if self._closed:
            raise TimmyError("this router is closed")
        if self._runner is None or not self._runner.alive:
            self._runner = Runner()
            self._own_runner = True
        return self._runner

    @property
    def names(self) -> list[str]:
        return list(self._providers)

    def provider(self, name: str) -> ProviderState:
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProvider(f"no provider named '{name}'; configured: "
                                  f"{', '.join(self._providers) or '(none)'}") from None

    # ------------------------------------------------------------ pin & gate

    @property
    def pinned(self) -> str | None:
        return self._pinned

    def pin(self, name: str | None) -> None:
        if name is not None:
            self.provider(name)

        def apply() -> None:
            self._pinned = name
            self._notify("pin")

        self._on_loop(apply)

    def set_local_only(self, on: bool) -> None:
        def apply() -> None:
            self.local_only = on
            self._notify("gate")

        self._on_loop(apply)

    def gate(self) -> gate_mod.GateDecision:
        """The cloud gate now. On the loop thread, no I/O: the quota signal's last answer
        is used (``_refresh_quota`` reads it in a worker thread before a request is
        planned); from another thread a stale signal is read there and then."""
        g = self.config.cloud_gate
        closed = tuple(g.quota.closed_tiers) if g.quota else ("resting",)
        on_loop = self._runner is not None and self._runner.on_loop()
        tier = None if self.quota is None else \
            self.quota.cached() if on_loop else self.quota.tier()
        return gate_mod.decide(local_only=self.local_only, spent_usd=self.ledger.spent_today,
                               budget_usd=g.daily_budget_usd, tier=tier, closed_tiers=closed)

    async def _refresh_quota(self) -> None:
        """Read a stale quota signal in a worker thread (a command or user code may block
        for seconds: never on the loop), shared by the requests that wait for it."""
        quota = self.quota
        if quota is None or not quota.stale():
            return
        if self._quota_refresh is None or self._quota_refresh.done():
            self._quota_refresh = asyncio.ensure_future(asyncio.to_thread(quota.tier))
        try:
            await asyncio.wait_for(asyncio.shield(self._quota_refresh), quota.timeout + 1.0)
        except TimeoutError:
            log.warning("quota signal gave no answer within %.1fs", quota.timeout + 1.0)

    # ------------------------------------------------------------ listeners

    def subscribe(self, fn: Callable[[ChangeKind], None]) -> Callable[[], None]:
        """Call ``fn(kind)`` after every change (from the router's loop thread)."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def _notify(self, kind: ChangeKind) -> None:
        for fn in list(self._listeners):
            try:
                fn(kind)
            except Exception:
                log.exception("listener failed")

    # ------------------------------------------------------------ planning

    def _view(self, st: ProviderState, now: float) -> View:
        report = self._report(st, now)
        available = [ep.breaker.available(now) for ep in st.endpoints]
        models = frozenset(m.name for m in st.cfg.models) | frozenset(report.models)
        return View(st.name, st.cfg.priority, st.cfg.enabled, st.cfg.is_cloud,
                    report.state if report.state != "circuit_open" else "unknown",
                    any(available), min(ep.breaker.retry_in(now) for ep in st.endpoints),
                    any(ep.launcher is not None and ep.launcher.held for ep in st.endpoints),
                    any(ep.breaker.state(now) == "half_open" for ep in st.endpoints),
                    models, report.last_error or report.hint or "")

    def plan(self, pin: str | None = None, model: str | None = None) -> Plan:
        now = self._clock()
        decision = self.gate()
        return plan_route([self._view(st, now) for st in self._providers.values()],
                          pin=pin, model=model, cloud_open=decision.open,
                          cloud_reason=decision.reason)

    # ------------------------------------------------------------ streaming

    async def astream(self, request: ChatRequest | str,
                      **kw: Any) -> AsyncGenerator[Event, None]:
        """Stream events for one request: Trying..., Delta..., then exactly one Done.
        Raises RoutingError when no provider produced a first token."""
        req = ChatRequest.of(request, **kw)
        async for ev in self.runner.aiterate(lambda: self._stream(req)):
            yield ev

    def stream(self, request: ChatRequest | str, **kw: Any) -> Iterator[Event]:
        req = ChatRequest.of(request, **kw)
        return self.runner.iterate(lambda: self._stream(req))

    # Both read the stream to its end (Done is the last event) rather than returning at
    # Done: leaving it early makes the bridge cancel the finished pump and wait for that
    # (a thread round trip), which doubled the sync call's cost (docs/performance.md).
    async def acomplete(self, request: ChatRequest | str, **kw: Any) -> Result:
        result = None
        async for ev in self.astream(request, **kw):
            if isinstance(ev, Done):
                result = ev.result
        if result is None:  # pragma: no cover
            raise AssertionError("stream ended without Done")
        return result

    def complete(self, request: ChatRequest | str, **kw: Any) -> Result:
        result = None
        for ev in self.stream(request, **kw):
            if isinstance(ev, Done):
                result = ev.result
        if result is None:  # pragma: no cover
            raise AssertionError("stream ended without Done")
        return result

    async def _stream(self, req: ChatRequest) -> AsyncIterator[Event]:
        t0 = self._clock()
        deadline = t0 + self.config.cascade.timeout_seconds
        pin = req.provider or self._pinned
        if pin is not None:
            self.provider(pin)
        await self._refresh_quota()
        plan = self.plan(pin, req.model)
        if not plan.order and plan.skipped_for("unhealthy"):
            # last known health says down: look again now (one health timeout) before failing
            await self.acheck_health(plan.skipped_for("unhealthy"))
            plan = self.plan(pin, req.model)
        attempts: list[Attempt] = []
        for i, name in enumerate(plan.order):
            st = self._providers[name]
            last = i == len(plan.order) - 1
            async for ev in self._try_provider(st, req, t0, deadline, attempts, plan, pin,
                                               last):
                yield ev
                if isinstance(ev, Done):
                    return
            if self._clock() >= deadline:
                break
        trace = RouteTrace(plan.considered, plan.skipped, tuple(attempts), pin)
        if pin is not None:
            why = attempts[-1].error if attempts else next(
                (str(s) for s in plan.skipped if s.provider == pin), "not tried")
            raise PinnedProviderFailed(f"pinned provider '{pin}' failed: {why}", trace)
        raise NoProviderAvailable(_no_provider_message(
            plan, attempts, self.config.cascade.timeout_seconds), trace)

    async def _try_provider(self, st: ProviderState, req: ChatRequest, t0: float,
                            deadline: float, attempts: list[Attempt], plan: Plan,
                            pin: str | None, last: bool) -> AsyncIterator[Event]:
        """Attempts on one provider, with retries. Nothing listening (connect refused) is
        retried only when no other candidate remains: failing over is instant, waiting is
        not. Each attempt holds a breaker permit, settled in ``finally`` whatever happens
        (an answer, an error, a cancel, a bug)."""
        retry_no = 0
        while self._clock() < deadline:
            now = self._clock()
            ep = self._pick(st, now)
            permit = ep.breaker.permit(now) if ep is not None else None
            if ep is None or permit is None:
                return
            number = len(attempts) + 1
            try:
                yield Trying(st.name, ep.shown_url, number)
                failed = await self._prepare(st, ep)
                if failed is not None:
                    attempts.append(Attempt(st.name, ep.shown_url, number, "failed", failed))
                    self._notify("health")
                    return
                if ep.launcher is not None:
                    async for status in self._launch(st, ep):
                        yield status
                started = self._clock()
                try:
                    async for ev in self._attempt(st, ep, permit, req, t0, deadline, started):
                        if isinstance(ev, Done):
                            outcome: Literal["answered", "broken"] = \
                                "broken" if ev.result.error else "answered"
                            attempts.append(Attempt(st.name, ep.shown_url, number, outcome,
                                                    ev.result.error, self._clock() - started))
                            trace = RouteTrace(plan.considered, plan.skipped, tuple(attempts),
                                               pin)
                            ev = Done(replace(ev.result, trace=trace))
                        yield ev
                    return
                except ProviderError as err:
                    attempts.append(Attempt(st.name, ep.shown_url, number, "failed", str(err),
                                            self._clock() - started))
                    if isinstance(err, ProviderAuthError):
                        st.misconfigured = str(err)
                        self._notify("health")
                        return
                    if isinstance(err, ProviderConnectError) and not last \
                            and len(st.endpoints) == 1:
                        return
                    retry_no += 1
                    delay = self.policy.delay_for(err, retry_no, self._rand)
                    if delay is None or self._clock() + delay >= deadline:
                        return
                    await asyncio.sleep(delay)
            except LaunchError as exc:
                attempts.append(Attempt(st.name, ep.shown_url, number, "failed",
                                        f"launch failed: {exc}"))
                self._notify("health")
                return
            except Exception as exc:  # a bug in launching must not kill the route either
                log.warning("provider %s: launch broke: %r", st.name, exc)
                attempts.append(Attempt(st.name, ep.shown_url, number, "failed",
                                        f"launch failed: {map_error(exc, st.name)}"))
                self._notify("health")
                return
            finally:
                permit.release(self._clock())  # no-op when the attempt settled it

    async def _prepare(self, st: ProviderState, ep: Endpoint) -> str | None:
        """Build the endpoint's backend (a plugin's factory may fail): the reason, or None."""
        try:
            self._backend(st, ep)
        except Exception as exc:  # a broken adapter fails this provider, not the route
            log.warning("provider %s: backend could not be built: %s", st.name, exc)
            return f"backend could not be built: {map_error(exc, st.name)}"
        return None

    async def _launch(self, st: ProviderState, ep: Endpoint) -> AsyncIterator[Status]:
        """Start (or adopt) the managed server behind ``ep``, yielding progress."""
        launcher = ep.launcher
        assert launcher is not None
        launcher.last_used = time.monotonic()
        if (launcher.running() or launcher.state == "adopted") and ep.probe is not None \
                and ep.probe.state == "healthy":
            return  # the fast path: no I/O per request

        async def healthy() -> bool:
            probe = await self._backend(st, ep).probe(self.timeouts.health)
            ep.probe, ep.checked_at = probe, self._clock()
            return probe.state == "healthy"

        notes: asyncio.Queue[str] = asyncio.Queue()

        def progress(msg: str) -> None:
            notes.put_nowait(msg)
            self._notify("health")

        task = asyncio.ensure_future(launcher.ensure(healthy, progress))
        try:
            while not task.done() or not notes.empty():
                if notes.empty():
                    getter = asyncio.ensure_future(notes.get())
                    await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    yield Status(st.name, getter.result())
                else:
                    yield Status(st.name, notes.get_nowait())
        finally:
            if not task.done():  # interrupted: let the launcher clean up before we go on
                task.cancel()
                await asyncio.wait({task})
        task.result()
        self._notify("health")

    def _pick(self, st: ProviderState, now: float) -> Endpoint | None:
        eps = st.endpoints
        i = pick_endpoint([e.outstanding for e in eps],
                          [e.breaker.available(now) for e in eps],
                          [e.probe is None or e.probe.state != "down" for e in eps], st.rr)
        if i is None:
            return None
        st.rr = (i + 1) % len(eps)
        return eps[i]

    def _backend(self, st: ProviderState, ep: Endpoint) -> Backend:
        if ep.backend is None:
            ep.backend = st.cfg.kind.load_factory()(st.cfg, ep.url, self.timeouts)
        return ep.backend

    async def _attempt(self, st: ProviderState, ep: Endpoint, permit: Permit,
                       req: ChatRequest, t0: float, deadline: float,
                       started: float) -> AsyncIterator[Event]:
        """One attempt on one endpoint. Raises ProviderError before the first token; after
        it, ends with a Done carrying the partial text and the error. Settles ``permit``
        and the provider's metrics exactly once, whatever happens."""
        cas = self.config.cascade
        model = req.model or st.cfg.default_model
        if req.max_tokens is None:
            mc = st.cfg.model(model)
            cap = (mc.max_tokens if mc else None) or cas.default_max_tokens
            if cap is not None:
                req = replace(req, max_tokens=cap)
        parts: list[str] = []
        size = 0
        usage: Usage | None = None
        served_model: str | None = None
        notes: list[str] = []
        chunks = 0
        ttft: float | None = None
        ep.outstanding += 1
        st.metrics.started()
        self._notify("metrics")
        error: ProviderError | None = None
        ended = False
        try:
            backend = self._backend(st, ep)
            first_deadline = min(deadline, started + cas.first_token_timeout_seconds)
            gen = backend.stream(req, model)
            loop = asyncio.get_running_loop()
            # The deadline guards only the wait for the next chunk (never the consumer's
            # code between two yields): first token, then idle gaps, capped by the request.
            when = loop.time() + max(0.0, first_deadline - self._clock())
            try:
                while True:
                    try:
                        async with asyncio.timeout_at(when):
                            chunk = await anext(gen)
                    except StopAsyncIteration:
                        break
                    if chunk.model and served_model is None:
                        served_model = chunk.model
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if chunk.note:
                        notes.append(chunk.note)
                    if chunk.text:
                        now = self._clock()
                        if ttft is None:
                            ttft = now - t0
                        chunks += 1
                        size += len(chunk.text)
                        if size > MAX_ANSWER_CHARS:
                            raise ProviderProtocolError(
                                f"the answer passed {MAX_ANSWER_CHARS} characters: stopped "
                                f"there (the text so far is kept)", provider=st.name)
                        parts.append(chunk.text)
                        when = loop.time() + min(cas.idle_timeout_seconds, deadline - now)
                        yield Delta(chunk.text)
            finally:
                await gen.aclose()  # type: ignore[attr-defined]
            ended = True
        except TimeoutError:
            error = ProviderTimeout(self._timeout_message(ttft, deadline), provider=st.name)
        except ProviderError as exc:
            error = exc
        except Exception as exc:  # an adapter bug must not kill the route: count it
            error = map_error(exc, st.name)
        finally:
            ep.outstanding -= 1
            if error is None and not ended:  # cancelled, closed early, interrupted
                permit.release(self._clock())
                st.metrics.was_cancelled()
            if ep.retired and not ep.outstanding:
                self._retire(ep)
        now = self._clock()
        if error is not None:
            error.__traceback__ = None  # its frames would keep this stream's buffers alive
            self._record_failure(st, ep, permit, error, now)
            if ttft is None:
                raise error
        else:
            permit.success(now)
            self._mark_up(ep, now)
        text = "".join(parts)
        del parts
        usage = self._settle_usage(st, usage, req, text, chunks)
        total = now - t0
        gen_time = now - t0 - (ttft or 0.0)
        tok_s = usage.output_tokens / gen_time if usage.output_tokens and gen_time > 0 else None
        mc = st.cfg.model(served_model or model) or st.cfg.model(model)
        cost = gate_mod.cost_usd(usage.input_tokens, usage.output_tokens,
                                 mc.price_per_1k_input if mc else 0.0,
                                 mc.price_per_1k_output if mc else 0.0)
        if cost > 0 and math.isfinite(cost):
            self.ledger.add(cost)
        else:
            cost = 0.0
        if error is None:
            own_ttft = None if ttft is None else ttft - (started - t0)
            st.metrics.succeeded(now - started, own_ttft, tok_s, cost)
        elif cost:
            st.metrics.add_cost(cost)
        if not text and error is None and not notes:
            notes.append("the model returned an empty answer")
        self._notify("metrics")
        yield Done(Result(text, st.name, served_model or model, usage,
                          Timings(ttft, total, tok_s), RouteTrace(),
                          error=str(error) if error else None, cost_usd=cost,
                          endpoint=ep.shown_url, notes=tuple(notes)))

    @staticmethod
    def _settle_usage(st: ProviderState, usage: Usage | None, req: ChatRequest, text: str,
                      chunks: int) -> Usage:
        """The usage to count: the server's (validated at the wire), else an estimate
        (about 4 characters a token) marked as such, so a server that sends nonsense can
        neither hide a paid answer from the budget nor show an absurd count."""
        inp = usage.input_tokens if usage else None
        out = usage.output_tokens if usage else None
        if usage is not None and out is not None and (inp is not None or not st.cfg.is_cloud):
            return usage
        if out is None:
            out = max(chunks, -(-len(text) // 4)) if text else 0
        if inp is None and st.cfg.is_cloud:
            inp = -(-sum(len(m.content) for m in req.messages) // 4)
        return Usage(inp, out, estimated=True)

    def _timeout_message(self, ttft: float | None, deadline: float) -> str:
        cas = self.config.cascade
        if self._clock() >= deadline - 1e-3:
            return f"whole request exceeded timeout_seconds={cas.timeout_seconds:g}"
        if ttft is None:
            return f"no first token within first_token_timeout_seconds=" \
                   f"{cas.first_token_timeout_seconds:g}"
        return f"stream stalled: no data for idle_timeout_seconds={cas.idle_timeout_seconds:g}"

    def _record_failure(self, st: ProviderState, ep: Endpoint, permit: Permit,
                        err: ProviderError, now: float) -> None:
        st.metrics.failed()
        if err.counts_against_breaker:
            permit.failure(now)
        else:
            permit.release(now)
        if isinstance(err, ProviderConnectError):  # cannot reach it: the badge should say so
            ep.probe = Probe("down", error=str(err))
            ep.checked_at = now
        self._notify("metrics")

    def _mark_up(self, ep: Endpoint, now: float) -> None:
        if ep.probe is None or ep.probe.state == "down":
            ep.probe = Probe("healthy", models=ep.probe.models if ep.probe else ())
            ep.checked_at = now

    # ------------------------------------------------------------ health

    async def acheck_health(self, names: list[str] | None = None) -> dict[str, HealthReport]:
        """Probe the given providers (default: every enabled or pinned one) concurrently,
        all under one deadline of ``health_timeout_seconds``."""
        if not self.runner.on_loop():
            fut = self.runner.submit(self.acheck_health(names))
            return await asyncio.wrap_future(fut)
        timeout = self.config.cascade.health_timeout_seconds
        targets = [self._providers[n] for n in (names or self._providers) if n in
                   self._providers]
        targets = [st for st in targets if names or st.cfg.enabled or st.name == self._pinned]
        targets = [st for st in targets if not (st.cfg.kind.needs_key and not st.cfg.key())]
        jobs = [(st, ep) for st in targets for ep in st.endpoints]
        for st in targets:
            st.checking = True
        self._notify("health")
        try:
            await self._probe_all(jobs, timeout)
        finally:  # an interrupted check must not leave badges on "checking"
            for st in targets:
                st.checking = False
                if st.misconfigured and all(ep.probe and ep.probe.state == "healthy"
                                            for ep in st.endpoints):
                    st.misconfigured = None
            self._notify("health")
        return {st.name: self._report(st, self._clock()) for st in targets}

    async def _probe_all(self, jobs: list[tuple[ProviderState, Endpoint]],
                         timeout: float) -> None:

        async def one(st: ProviderState, ep: Endpoint) -> None:
            try:
                probe = await asyncio.wait_for(self._backend(st, ep).probe(timeout),
                                               timeout + 0.25)
            except (TimeoutError, asyncio.TimeoutError):
                probe = Probe("down", error=f"health check timed out after {timeout:g}s")
            except Exception as exc:
                probe = Probe("down", error=str(map_error(exc, st.name)))
            if probe.state == "down" and ep.outstanding and "timed out" in (probe.error or ""):
                # busy, not dead: it is streaming answers right now (a loaded CPU server
                # may answer /health late); the breaker judges the requests themselves
                probe = Probe("degraded", probe.latency_s, probe.models, probe.detail,
                              f"{probe.error} while serving {ep.outstanding} request(s)")
            ep.probe, ep.checked_at = probe, self._clock()

        await asyncio.gather(*(one(st, ep) for st, ep in jobs))

    def check_health(self, names: list[str] | None = None,
                     timeout: float | None = None) -> dict[str, HealthReport]:
        limit = timeout or self.config.cascade.health_timeout_seconds + 5
        return self.runner.run(self.acheck_health(names), timeout=limit)

    def start_health_loop(self, interval: float | None = None) -> None:
        """Probe everything now and then every ``health_interval_seconds``, in the
        background. A provider that is down is never dropped: it is probed again."""
        if self._health_task is not None and not self._health_task.done():
            return
        every = interval or self.config.cascade.health_interval_seconds

        async def loop() -> None:
            next_pass = 0.0
            while True:
                if time.monotonic() >= next_pass:
                    next_pass = time.monotonic() + every
                    try:
                        await self.acheck_health()
                    except Exception:
                        log.exception("health pass failed")
                await self._reap_idle()
                await asyncio.sleep(min(every, 1.0))

        self._health_task = self.runner.submit(loop())

    async def _reap_idle(self) -> None:
        """Stop managed servers idle longer than their ``idle_timeout``."""
        for st in list(self._providers.values()):
            for ep in st.endpoints:
                lc = ep.launcher
                if lc is None or lc.cfg.idle_timeout is None or lc.state != "running" \
                        or not lc.running():
                    continue
                if lc.idle_for() > lc.cfg.idle_timeout and ep.outstanding == 0:
                    await asyncio.to_thread(lc.stop)
                    lc.message = f"stopped after {lc.cfg.idle_timeout:g}s idle"
                    ep.probe = None
                    self._notify("health")

    # ------------------------------------------------------------ managed servers

    def start_server(self, name: str, timeout: float | None = None) -> list[str]:
        """Start (or adopt) the managed servers of provider ``name``; returns progress."""
        st = self.provider(name)
        if not any(ep.launcher for ep in st.endpoints):
            raise UnknownProvider(f"provider '{name}' has no `launch:` section")

        async def go() -> list[str]:
            notes = []
            for ep in st.endpoints:
                if ep.launcher is not None:
                    self._backend(st, ep)
                    async for s in self._launch(st, ep):
                        notes.append(s.message)
            return notes

        limit = timeout or max(ep.launcher.cfg.ready_timeout for ep in st.endpoints
                               if ep.launcher) + 10
        return self.runner.run(go(), timeout=limit)

    def stop_server(self, name: str) -> bool:
        """Stop the servers of ``name`` that we started; adopted ones are left running."""
        st = self.provider(name)
        stopped = False
        for ep in st.endpoints:
            if ep.launcher is not None and ep.launcher.stop():
                ep.launcher.held = True
                ep.probe = None
                stopped = True
        self._notify("health")
        return stopped

    def health(self) -> dict[str, HealthReport]:
        """The last known health of every provider (no I/O)."""
        now = self._clock()
        return {name: self._report(st, now) for name, st in self._providers.items()}

    def _report(self, st: ProviderState, now: float) -> HealthReport:
        return build_report(st, now)

    def metrics(self) -> dict[str, MetricsSnapshot]:
        now = self._clock()
        return {name: st.metrics.snapshot(self._report(st, now).circuit)
                for name, st in self._providers.items()}

    # ------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        for st in self._providers.values():
            for ep in st.endpoints:
                if ep.backend is not None:
                    await ep.backend.aclose()
                    ep.backend = None

    def close(self) -> None:
        """Stop background work, managed servers and connections, and the loop thread if
        ours."""
        for st in self._providers.values():
            for ep in st.endpoints:
                if ep.launcher is not None:
                    ep.launcher.stop()
        if self._closed or self._runner is None or not self._runner.alive:
            self._closed = True
            return
        try:
            self._runner.run(self.aclose(), timeout=5)
        except Exception:
            log.debug("close: connections did not close cleanly", exc_info=True)
        if self._own_runner:
            self._runner.stop()
        self._closed = True

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Router {len(self._providers)} providers from {self.config.source}"
                f"{', pinned ' + self._pinned if self._pinned else ''}>")


def _no_provider_message(plan: Plan, attempts: list[Attempt], timeout: float) -> str:
    if not plan.considered:
        return "no providers are configured"
    if not attempts:
        reasons = "; ".join(str(s) for s in plan.skipped)
        if not reasons:
            return (f"the whole-request deadline (timeout_seconds={timeout:g}) passed before "
                    f"any provider could be tried")
        return f"no provider could be tried: {reasons}"
    failed = "; ".join(f"{a.provider}: {a.error}" for a in attempts)
    return f"every provider failed before answering: {failed}"
