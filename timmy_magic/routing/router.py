"""The cascade router: the public facade over its parts.

One request goes ``Router.stream`` -> ``Cascade.stream`` (order, retries, trace) ->
``attempt`` (one try: deadlines, usage, cost) -> a provider adapter (``providers/``), and
its events come back the same way; ``docs/architecture.md`` follows it file by file.
Health checks are the ``Monitor``'s, managed servers ``servers``', the shared state
``Core``'s. Everything runs on one loop (the ``Runner``'s); the sync methods and
``astream`` from a foreign loop hop onto it, and state changes (reload, pin, local-only)
are applied there, so listeners always hear them on the loop thread. The answer cache
(``cache:`` in providers.yaml) answers a request before it is routed (``Router.cache``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Sequence,
)
from contextlib import aclosing
from typing import Any, TypeVar

from timmy_magic.cache import RequestCache
from timmy_magic.config import Config, load_config
from timmy_magic.model.chat import ChatRequest, Done, Event, Failed, HealthReport, Result
from timmy_magic.routing import gate as gate_mod
from timmy_magic.routing import managed as servers
from timmy_magic.routing.cascade import Cascade
from timmy_magic.routing.endpoints import ProviderState
from timmy_magic.routing.metrics import MetricsSnapshot
from timmy_magic.routing.monitor import Monitor
from timmy_magic.routing.planner import Plan
from timmy_magic.routing.retry import RetryPolicy
from timmy_magic.routing.runner import Runner, Tick, bridge
from timmy_magic.routing.state import ChangeKind, Core, log
from timmy_magic.text.markup import count
from timmy_magic.tools import Approve, ToolLoop
from timmy_magic.tools.loop import DEFAULT_MAX_ROUNDS

__all__ = ["ChangeKind", "Router"]
T = TypeVar("T")


class Router:
    def __init__(self, config: Config, *, runner: Runner | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random,
                 quota: gate_mod.QuotaSignal | None = None) -> None:
        self._core = Core(config, runner=runner, clock=clock, rand=rand, quota=quota)
        self._monitor = Monitor(self._core)
        self._cascade = Cascade(self._core, self._recheck)
        self._answers = RequestCache(lambda: self._core.config)

    @classmethod
    def from_config(cls, path: str | None = None, **kw: Any) -> Router:
        return cls(load_config(path), **kw)

    # ------------------------------------------------------------ state (read-only views)

    @property
    def config(self) -> Config:
        return self._core.config

    @property
    def ledger(self) -> gate_mod.SpendLedger:
        return self._core.ledger

    @property
    def policy(self) -> RetryPolicy:
        return self._core.policy

    @property
    def timeouts(self) -> Any:
        return self._core.timeouts

    @property
    def quota(self) -> gate_mod.QuotaSignal | None:
        return self._core.quota

    @property
    def local_only(self) -> bool:
        return self._core.local_only

    @property
    def pinned(self) -> str | None:
        return self._core.pinned

    @property
    def runner(self) -> Runner:
        """The loop thread (for tests and benchmarks; the notebook surface never needs it)."""
        return self._core.runner

    @property
    def cache(self) -> RequestCache:
        """The answer cache ``complete``, ``acomplete``, ``stream`` and ``astream`` answer
        from, in the mode of ``cache:`` in providers.yaml; their ``cache=`` argument acts
        as ``--cache`` (True: on for this request) / ``--no-cache`` (False: not touched)."""
        return self._answers

    @property
    def names(self) -> list[str]:
        return list(self._core.providers)

    def provider(self, name: str) -> ProviderState:
        """The state of provider ``name``; UnknownProvider (naming the others) if none."""
        return self._core.provider(name)

    # ------------------------------------------------------------ changes (on the loop)

    def reload(self, path: str | None = None) -> Config:
        """Re-read providers.yaml. On a bad file, raise ConfigError and keep everything.
        Streams already running finish on the backends they started with."""
        if path is None:  # the same file again, trusted as it was
            source = self.config.source
            named = self.config.trusted_by == "named explicitly"
            cfg = load_config(source if source.endswith((".yaml", ".yml")) else None,
                              named=named)
        else:
            cfg = load_config(path)

        def apply() -> None:
            self._core.apply(cfg)
            self._core.notify("config")

        self._core.on_loop(apply)
        return cfg

    def pin(self, name: str | None) -> None:
        if name is not None:
            self.provider(name)

        def apply() -> None:
            self._core.pinned = name
            self._core.notify("pin")

        self._core.on_loop(apply)

    def set_local_only(self, on: bool) -> None:
        def apply() -> None:
            self._core.local_only = on
            self._core.notify("gate")

        self._core.on_loop(apply)

    def gate(self) -> gate_mod.GateDecision:
        return self._core.gate()

    @property
    def listeners(self) -> tuple[Callable[[ChangeKind], None], ...]:
        """Who is told of changes (see ``subscribe``)."""
        return tuple(self._core.listeners)

    def subscribe(self, fn: Callable[[ChangeKind], None]) -> Callable[[], None]:
        """Call ``fn(kind)`` after every change (from the router's loop thread)."""
        listeners = self._core.listeners
        listeners.append(fn)
        return lambda: listeners.remove(fn) if fn in listeners else None

    # ------------------------------------------------------------ asking

    def plan(self, pin: str | None = None, model: str | None = None,
             request: ChatRequest | None = None) -> Plan:
        """The route a request would take now (with ``request``: also skipping providers
        that cannot see its images or hold it in their window)."""
        return self._cascade.plan(pin, model, request)

    def context_window(self, provider: str, model: str | None = None) -> int | None:
        """The context window (tokens) of ``model`` (None: the default) on ``provider``:
        ``context_window`` in providers.yaml, else what its server reported at the last
        health check; None while unknown. No I/O."""
        return self.provider(provider).context_window(model)

    def capabilities(self, provider: str, model: str | None = None) -> frozenset[str]:
        """What ``model`` (None: the default) can do on ``provider`` (``vision``, ``tools``):
        declared in providers.yaml, or said by its server at a health check."""
        return self.provider(provider).capabilities(model)

    async def astream(self, request: ChatRequest | str, *, cache: bool | None = None,
                      tools: Sequence[Any] = (), approve: Approve = True,
                      max_tool_rounds: int = DEFAULT_MAX_ROUNDS,
                      **kw: Any) -> AsyncGenerator[Event, None]:
        """Stream events for one request: Trying..., Delta..., then exactly one Done.
        Raises RoutingError when no provider produced a first token. From the cache
        (``cache``): the recorded text in one Delta, then Done. With ``tools``: each
        turn's events and a ``ToolRan`` after each call (see ``complete``)."""
        req = ChatRequest.of(request, **kw)
        if tools:
            loop = ToolLoop(req, tools, approve, max_tool_rounds)
            async for item in loop.aevents(lambda r: self.astream(r, cache=cache)):
                yield item
            return
        async for ev in self._answers.aevents(
                req, cache, lambda: self.runner.aiterate(lambda: self._cascade.stream(req))):
            yield ev

    def stream(self, request: ChatRequest | str, *, tick_every: float | None = None,
               cache: bool | None = None, tools: Sequence[Any] = (),
               approve: Approve = True, max_tool_rounds: int = DEFAULT_MAX_ROUNDS,
               **kw: Any) -> Iterator[Event | Tick]:
        """``astream`` for synchronous code. With ``tick_every``, a ``Tick`` comes
        whenever no event came for that long (a live display's chance to redraw)."""
        req = ChatRequest.of(request, **kw)
        if tools:
            loop = ToolLoop(req, tools, approve, max_tool_rounds)
            return loop.events(lambda r: self.stream(r, tick_every=tick_every, cache=cache))
        return self._answers.events(
            req, cache, lambda: bridge(self.runner, self._cascade.stream(req), tick_every))

    async def astream_many(self, requests: list[ChatRequest]
                           ) -> AsyncGenerator[tuple[int, Event | Failed], None]:
        """``stream_many`` for async code (on the router's loop or another)."""
        reqs = list(requests)
        async for item in self.runner.aiterate(lambda: self._cascade.stream_many(reqs)):
            yield item

    def stream_many(self, requests: list[ChatRequest], *, tick_every: float | None = None
                    ) -> Iterator[tuple[int, Event | Failed] | Tick]:
        """Several requests at once (side by side): ``(column, event)`` pairs as they
        come, each column's events in order. A column that gets no answer yields
        ``(column, Failed(error))`` and the others go on. Closing the iterator cancels
        every column and waits for their clean-up."""
        return bridge(self.runner, self._cascade.stream_many(list(requests)), tick_every)

    # One answer, one hop (``Runner.call``): the whole request runs on the loop and only
    # its Result comes back (a thread hand-off per event cost more CPU than the router's
    # own work: docs/performance.md).
    async def acomplete(self, request: ChatRequest | str, *, stream: bool = True,
                        cache: bool | None = None, tools: Sequence[Any] = (),
                        approve: Approve = True, max_tool_rounds: int = DEFAULT_MAX_ROUNDS,
                        **kw: Any) -> Result:
        """The answer to one request (see ``complete``)."""
        req = ChatRequest.of(request, **kw)
        if tools:
            return await ToolLoop(req, tools, approve, max_tool_rounds).arun_turns(
                lambda r: self.acomplete(r, stream=stream, cache=cache))
        runner = self.runner

        def live() -> Awaitable[Result]:
            answer = self._answer(req, whole=not stream)
            return answer if runner.on_loop() else asyncio.wrap_future(runner.submit(answer))

        return await self._answers.aanswer(req, cache, live)

    def complete(self, request: ChatRequest | str, *, stream: bool = True,
                 cache: bool | None = None, tools: Sequence[Any] = (),
                 approve: Approve = True, max_tool_rounds: int = DEFAULT_MAX_ROUNDS,
                 **kw: Any) -> Result:
        """The answer to one request, for synchronous code. Raises RoutingError when no
        provider produced a first token.

        ``stream=False`` asks servers that can (the OpenAI-compatible ones) for the answer
        in one JSON body instead of a stream: less client CPU per request. The difference
        shows only when a server fails midway: streamed, the text so far is kept in the
        Result with the error; in one body nothing arrived yet, so the cascade fails over
        to the next provider. The first-token deadline then covers the whole body.

        ``cache``: see ``Router.cache``; a hit is the recorded answer (``Result.cached``),
        and in replay a miss is a ``ReplayMiss`` (nothing is sent).

        ``tools``: functions (or bound methods) the model may call. Each call the model
        asks for is checked against the function's signature, approved (``approve``:
        True, False, or ``callable(PendingCall) -> bool``) and run in this thread; the
        results go back to the model until it answers with text, or for at most
        ``max_tool_rounds`` rounds. ``Result.tool_calls`` lists every call. Only
        providers whose model declares ``capabilities: [tools]`` are tried."""
        req = ChatRequest.of(request, **kw)
        if tools:
            return ToolLoop(req, tools, approve, max_tool_rounds).run_turns(
                lambda r: self.complete(r, stream=stream, cache=cache))
        return self._answers.answer(req, cache, lambda: self.runner.call(
            self._answer(req, whole=not stream), "Router.complete"))

    async def _answer(self, req: ChatRequest, whole: bool) -> Result:
        """Run one request to its end (Done is the last event) on this loop."""
        result: Result | None = None
        async with aclosing(self._cascade.stream(req, whole)) as events:
            async for ev in events:
                if isinstance(ev, Done):
                    result = ev.result
        if result is None:  # pragma: no cover - every stream ends with Done or raises
            raise AssertionError("stream ended without Done")
        return result

    # ------------------------------------------------------------ health

    async def acheck_health(self, names: list[str] | None = None) -> dict[str, HealthReport]:
        """Probe the given providers (default: every enabled or pinned one) concurrently,
        all under one deadline of ``health_timeout_seconds``."""
        if self.runner.on_loop():
            return await self._monitor.check(names)
        return await asyncio.wrap_future(self.runner.submit(self._monitor.check(names)))

    async def _recheck(self, names: list[str]) -> Any:
        return await self._monitor.check(names)

    def check_health(self, names: list[str] | None = None,
                     timeout: float | None = None) -> dict[str, HealthReport]:
        limit = timeout or self.config.cascade.health_timeout_seconds + 5
        return self.runner.run(self._monitor.check(names), timeout=limit)

    def check_health_soon(self) -> concurrent.futures.Future[dict[str, HealthReport]]:
        """Start a health pass in the background and return at once."""
        return self.runner.submit(self._monitor.check())

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` in the background on the router's loop (where everything it may
        touch of the router lives)."""
        return self.runner.submit(coro)

    def start_health_loop(self, interval: float | None = None) -> None:
        """Probe everything now and then every ``health_interval_seconds``, in the
        background. A provider that is down is never dropped: it is probed again."""
        self._monitor.start(interval)

    def health(self) -> dict[str, HealthReport]:
        """The last known health of every provider (no I/O)."""
        now = self._core.clock()
        return {name: self._core.report(st, now) for name, st in self._core.providers.items()}

    def metrics(self) -> dict[str, MetricsSnapshot]:
        now = self._core.clock()
        return {name: st.metrics.snapshot(self._core.report(st, now).circuit)
                for name, st in self._core.providers.items()}

    # ------------------------------------------------------------ managed servers

    def start_server(self, name: str, timeout: float | None = None) -> list[str]:
        """Start (or adopt) the managed servers of provider ``name``; returns progress."""
        st = servers.managed(self._core, name)
        limit = timeout or max(ep.launcher.cfg.ready_timeout for ep in st.endpoints
                               if ep.launcher) + 10
        return self.runner.run(servers.start(self._core, name), timeout=limit)

    def stop_server(self, name: str) -> bool:
        """Stop the servers of ``name`` that we started; adopted ones are left running."""
        self.provider(name)
        return self.runner.run(servers.stop(self._core, name), timeout=30)

    # ------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        self._monitor.stop()
        for st in self._core.providers.values():
            for ep in st.endpoints:
                if ep.backend is not None:
                    await ep.backend.aclose()
                    ep.backend = None

    def close(self) -> None:
        """Stop background work, managed servers and connections, and the loop thread if
        ours."""
        self._answers.close()
        core = self._core
        for st in core.providers.values():
            for ep in st.endpoints:
                if ep.launcher is not None:
                    ep.launcher.stop()
        if core.closed or not core.has_runner:
            core.closed = True
            return
        try:
            core.runner.run(self.aclose(), timeout=5)
        except Exception:  # noqa: BLE001
            log.debug("close: connections did not close cleanly", exc_info=True)
        if core.own_runner:
            core.runner.stop()
        core.closed = True

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        pinned = self._core.pinned
        return (f"<Router {count(len(self._core.providers), 'provider')} from {self.config.source}"
                f"{', pinned ' + pinned if pinned else ''}>")
