"""The cascade: which providers to try for one request, in what order, with what retries,
and the route trace that records it.

Failover happens only before the first token (``attempt`` raises before it, streams after
it). Each attempt holds a breaker permit, settled in ``finally`` whatever happens; every
decision after a failed attempt is the retry policy's (``RetryPolicy.decide``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Literal

from timmy_magic.model.chat import (
    Attempt,
    ChatRequest,
    ConfigState,
    Delta,
    Discard,
    Done,
    Event,
    Failed,
    HealthState,
    ProbeState,
    Result,
    RouteTrace,
    Status,
    Trying,
)
from timmy_magic.model.errors import (
    ConnectionRefused,
    NoProviderAvailable,
    PinnedProviderFailed,
    ProviderError,
    RoutingError,
)
from timmy_magic.model.prompting import retry_request, with_instruction
from timmy_magic.model.schema import INVALID_PREFIX, InvalidAnswer, Schema
from timmy_magic.providers.base import map_error
from timmy_magic.routing import managed as servers
from timmy_magic.routing.attempt import attempt
from timmy_magic.routing.endpoints import Endpoint, ProviderState
from timmy_magic.routing.planner import Plan, ProviderView, pick_endpoint, plan_route
from timmy_magic.routing.state import Core, log, shown_url
from timmy_magic.servers.launch import LaunchError
from timmy_magic.tools import prompted


def planning_state(badge: HealthState) -> ProbeState | ConfigState:
    """The badge's state as planning reads it: a server not running is down (skipped
    unless pinned); a managed one stopped or starting is unknown (started on need); an
    open circuit is unknown (its breaker says when it may be tried)."""
    if badge == "not_running":
        return "down"
    if badge in ("circuit_open", "stopped", "starting"):
        return "unknown"
    return badge  # type: ignore[return-value]  # the rest are probe or config states


@dataclass(frozen=True, slots=True)
class _Health:
    state: ProbeState | ConfigState
    models: frozenset[str]
    detail: str


class Cascade:
    def __init__(self, core: Core, recheck: Any) -> None:
        self.core = core
        self._recheck = recheck
        """``async (names) -> ...``: probe these providers now (the health monitor)."""
        self._quota_refresh: asyncio.Future[Any] | None = None
        self._healths: dict[str, tuple[tuple[Any, ...], _Health]] = {}

    # ------------------------------------------------------------ planning

    def _health(self, st: ProviderState, now: float) -> _Health:
        """What planning needs of the provider's health report. The report is rebuilt
        only when something it reads has changed: its config, a probe, a circuit, a
        misconfiguration (compared by identity, so a hit costs a tuple compare).
        Providers with managed servers or API keys (whose state can change without
        touching these) are always rebuilt."""
        eps = st.endpoints
        key: tuple[Any, ...] | None = None
        if not st.cfg.kind.needs_key and all(ep.launcher is None for ep in eps):
            key = (st.cfg, st.misconfigured,
                   *[(ep.probe, ep.breaker.state(now)) for ep in eps])
            hit = self._healths.get(st.name)
            if hit is not None and hit[0] == key:
                return hit[1]
        report = self.core.report(st, now)
        health = _Health(planning_state(report.state),
                         frozenset(m.name for m in st.cfg.models) | frozenset(report.models),
                         report.last_error or report.hint or "")
        if key is not None:
            self._healths[st.name] = (key, health)
        return health

    def _view(self, st: ProviderState, now: float, model: str | None = None,
              max_tokens: int | None = None) -> ProviderView:
        health = self._health(st, now)
        eps = st.endpoints
        asked = st.model_for(model)
        mc = st.cfg.model(asked)
        room = max_tokens or (mc.max_tokens if mc else None) \
            or self.core.config.cascade.default_max_tokens or 0
        can = st.capabilities(model)  # declared, or said by the server
        return ProviderView(
            st.name, st.cfg.priority, st.cfg.enabled, st.cfg.is_cloud, health.state,
            any(ep.breaker.available(now) for ep in eps),
            min(ep.breaker.retry_in(now) for ep in eps),
            any(ep.launcher is not None and ep.launcher.held for ep in eps),
            any(ep.breaker.state(now) == "half_open" for ep in eps),
            health.models, health.detail, asked,
            "vision" in can, st.context_window(model),
            mc is not None and mc.mode == "completion", room, "tools" in can)

    def plan(self, pin: str | None = None, model: str | None = None,
             request: ChatRequest | None = None) -> Plan:
        """The route for a request now. With ``request``, providers whose model cannot
        see its images or whose window cannot hold it are skipped (``planner``)."""
        now = self.core.clock()
        decision = self.core.gate()
        max_tokens = request.max_tokens if request is not None else None
        return plan_route(
            [self._view(st, now, model, max_tokens) for st in self.core.providers.values()],
            pin=pin, model=model, cloud_open=decision.open, cloud_reason=decision.reason,
            needs_vision=request is not None and request.needs_vision,
            input_tokens=request.input_tokens if request is not None else 0,
            needs_instructions=request is not None and request.instruct,
            needs_tools=request is not None and request.needs_tools)

    async def _refresh_quota(self) -> None:
        """Read a stale quota signal in a worker thread (a command or user code may block
        for seconds: never on the loop), shared by the requests that wait for it."""
        quota = self.core.quota
        if quota is None or not quota.stale():
            return
        if self._quota_refresh is None or self._quota_refresh.done():
            self._quota_refresh = asyncio.ensure_future(asyncio.to_thread(quota.tier))
        try:
            await asyncio.wait_for(asyncio.shield(self._quota_refresh), quota.timeout + 1.0)
        except TimeoutError:
            log.warning("quota signal gave no answer within %.1fs", quota.timeout + 1.0)

    # ------------------------------------------------------------ one request

    async def stream(self, req: ChatRequest,
                     whole: bool = False) -> AsyncGenerator[Event, None]:
        """Trying/Status/Delta events and one Done; RoutingError if no first token.
        ``whole``: ask each adapter for the answer in one body where it can (``attempt``)."""
        core = self.core
        t0 = core.clock()
        deadline = t0 + core.config.cascade.timeout_seconds
        pin = req.provider or core.pinned
        if pin is not None:
            core.provider(pin)
        await self._refresh_quota()
        plan = self.plan(pin, req.model, req)
        if not plan.order and plan.skipped_for("unhealthy"):
            # last known health says down: look again now (one health timeout) before failing
            await self._recheck(plan.skipped_for("unhealthy"))
            plan = self.plan(pin, req.model, req)
        attempts: list[Attempt] = []
        invalid: list[Result] = []
        """Answers that did not match the schema: the last is the Result if none does."""
        if req.schema is not None:
            req = replace(req, messages=with_instruction(req.messages, req.schema))
        for i, name in enumerate(plan.order):
            others_left = i < len(plan.order) - 1
            done = False
            st = core.providers[name]
            if st.slots is not None and not st.slots.locked():
                await st.slots.acquire()  # free: taken at once, no suspension
            elif st.slots is not None:  # max_concurrency: wait for a turn
                yield Status(name, f"waiting for a free slot ({name} takes "
                                   f"{st.cfg.max_concurrency} at once: max_concurrency)")
                # as long as a first token would be waited for when others are left to
                # try, else until the request's deadline
                budget = deadline - core.clock()
                if others_left:
                    budget = min(budget, core.config.cascade.first_token_timeout_seconds)
                try:
                    await asyncio.wait_for(st.slots.acquire(), max(0.0, budget))
                except TimeoutError:
                    attempts.append(Attempt(name, "", len(attempts) + 1, "failed",
                                            f"no free slot within {budget:.1f}s "
                                            f"(max_concurrency: {st.cfg.max_concurrency})"))
                    continue
            try:
                # read to its end (it ends right after Done): a generator left open is
                # closed later by a task the loop creates for it
                async for ev in self._provider(st, req, t0, deadline, attempts, plan, pin,
                                               others_left, whole, invalid):
                    done = done or isinstance(ev, Done)
                    yield ev
            finally:
                if st.slots is not None:
                    st.slots.release()
            if done:
                return
            if core.clock() >= deadline:
                break
        trace = RouteTrace(plan.considered, plan.skipped, tuple(attempts), pin)
        if invalid:  # something answered, nothing matched: the last answer, its error
            yield Done(replace(invalid[-1], trace=trace))
            return
        if pin is not None:
            skip = next((s for s in plan.skipped if s.provider == pin), None)
            if not attempts and skip is not None and skip.reason == "no_vision":
                raise PinnedProviderFailed(f"pinned provider '{pin}' cannot see images: "
                                           f"{skip.detail}", trace)
            if not attempts and skip is not None and skip.reason == "no_tools":
                raise PinnedProviderFailed(f"pinned provider '{pin}' cannot call tools: "
                                           f"{skip.detail}", trace)
            if not attempts and skip is not None and skip.reason == "completion_model":
                raise PinnedProviderFailed(f"pinned provider '{pin}' cannot follow "
                                           f"instructions: {skip.detail}", trace)
            why = attempts[-1].error if attempts else str(skip) if skip else "not tried"
            raise PinnedProviderFailed(f"pinned provider '{pin}' failed: {why}", trace)
        raise NoProviderAvailable(_no_provider_message(
            plan, attempts, core.config.cascade.timeout_seconds), trace)

    async def _provider(self, st: ProviderState, req: ChatRequest, t0: float,
                        deadline: float, attempts: list[Attempt], plan: Plan,
                        pin: str | None, others_left: bool,
                        whole: bool, invalid: list[Result]) -> AsyncIterator[Event]:
        """Attempts on one provider, with retries, each under a breaker permit. With a
        schema, an answer that does not match it is dropped (``Discard``), kept in
        ``invalid``, and asked again with the error as the retry policy says. With tools
        on a model without a native tool template, the prompted protocol: the reply is
        held back until it is checked, then passed on as calls or as the answer."""
        core = self.core
        retry_no = invalid_no = 0
        asked = req
        if req.tools and _prompted(st, req.model):
            req = prompted.request(req)
        sent = req
        while core.clock() < deadline:
            now = core.clock()
            ep = self._pick(st, now)
            permit = ep.breaker.permit(now) if ep is not None else None
            if ep is None or permit is None:
                return
            number = len(attempts) + 1
            shown = shown_url(ep)

            def failed(why: str, started: float | None = None, url: str = shown,
                       number: int = number, refused: bool = False) -> None:
                took = core.clock() - started if started is not None else 0.0
                attempts.append(Attempt(st.name, url, number, "failed", why, took, refused))

            try:
                yield Trying(st.name, shown, number)
                if (why := self._prepare(st, ep)) is not None:
                    failed(why)
                    core.notify("health")
                    return
                launched = 0.0  # seconds spent starting (or adopting) its server
                if ep.launcher is not None:
                    began, said = core.clock(), False
                    async for status in servers.launch(core, st, ep):
                        said = True
                        yield status
                    launched = core.clock() - began if said else 0.0
                started = core.clock()
                try:
                    async with aclosing(attempt(core, st, ep, permit, sent, t0, deadline,
                                                started, whole)) as events:
                        async for ev in events:
                            if isinstance(ev, Done):
                                try:
                                    ev = Done(await self._settle(
                                        ev.result, req, st, shown, number, started, launched,
                                        deadline, attempts, plan, pin))
                                except InvalidAnswer as bad:
                                    invalid.append(replace(ev.result, error=str(bad)))
                                    yield Discard(st.name, str(bad))
                                    break
                                if req is not asked:
                                    ev = Done(prompted.result(ev.result, asked))
                                    if ev.result.text:
                                        yield Delta(ev.result.text)
                            elif req is not asked and isinstance(ev, Delta):
                                continue  # the reply is JSON until checked
                            yield ev
                        else:
                            return
                    invalid_no += 1
                    if core.policy.decide_invalid(invalid_no).action != "retry":
                        return
                    sent = replace(req, messages=retry_request(
                        req.messages, invalid[-1].text, invalid[-1].error or ""))
                    continue
                except ProviderError as err:
                    failed(str(err), started, refused=isinstance(err, ConnectionRefused))
                    retry_no += 1
                    decision = core.policy.decide(
                        err, retry_no, others_left=others_left, endpoints=len(st.endpoints),
                        time_left=deadline - core.clock(), pinned=pin is not None,
                        rand=core.rand)
                    if decision.action == "misconfigured":
                        st.misconfigured = str(err)
                        core.notify("health")
                    if decision.action != "retry":
                        return
                    await asyncio.sleep(decision.delay)
            except LaunchError as exc:
                failed(f"launch failed: {exc}")
                core.notify("health")
                return
            except Exception as exc:  # a bug in launching must not kill the route either  # noqa: BLE001
                log.warning("provider %s: launch broke: %r", st.name, exc)
                failed(f"launch failed: {map_error(exc, st.name)}")
                core.notify("health")
                return
            finally:
                permit.release(core.clock())  # no-op when the attempt settled it

    async def _settle(self, result: Result, req: ChatRequest, st: ProviderState, shown: str,
                      number: int, started: float, launched: float, deadline: float,
                      attempts: list[Attempt], plan: Plan, pin: str | None) -> Result:
        """An attempt's Result as the caller gets it: checked against the request's schema
        (InvalidAnswer, the attempt recorded as ``invalid``, when it does not match), a
        note when its first token waited for its server to start, its attempt recorded
        and the route trace so far attached."""
        core = self.core
        took = core.clock() - started
        if req.schema is not None and result.error is None:
            try:
                result = replace(result, data=await _checked(
                    req.schema, result.text, deadline - core.clock()))
            except InvalidAnswer as bad:
                attempts.append(Attempt(st.name, shown, number, "invalid", str(bad), took))
                raise
        if launched:  # said, so the TTFT is not misread
            result = replace(result, notes=(
                *result.notes, f"TTFT includes starting {st.name} ({launched:.1f}s)"))
        outcome: Literal["answered", "broken"] = "broken" if result.error else "answered"
        attempts.append(Attempt(st.name, shown, number, outcome, result.error, took))
        return replace(result, trace=RouteTrace(plan.considered, plan.skipped,
                                                tuple(attempts), pin))

    def _prepare(self, st: ProviderState, ep: Endpoint) -> str | None:
        """Build the endpoint's backend (a plugin's factory may fail): the reason, or None."""
        try:
            self.core.backend(st, ep)
        except Exception as exc:  # a broken adapter fails this provider, not the route  # noqa: BLE001
            log.warning("provider %s: backend could not be built: %s", st.name, exc)
            return f"backend could not be built: {map_error(exc, st.name)}"
        return None

    @staticmethod
    def _pick(st: ProviderState, now: float) -> Endpoint | None:
        eps = st.endpoints
        i = pick_endpoint([e.outstanding for e in eps],
                          [e.breaker.available(now) for e in eps],
                          [e.probe is None or e.probe.state != "down" for e in eps], st.rr)
        if i is None:
            return None
        st.rr = (i + 1) % len(eps)
        return eps[i]

    async def stream_many(self, requests: list[ChatRequest]
                          ) -> AsyncGenerator[tuple[int, Event | Failed], None]:
        """The requests' streams at once: ``(column, event)`` as they come; a column that
        gets no answer gives ``(column, Failed(error))`` and the others go on."""
        q: asyncio.Queue[tuple[int, Event | Failed | None]] = asyncio.Queue()

        async def column(i: int, req: ChatRequest) -> None:
            try:
                async with aclosing(self.stream(req)) as events:
                    async for ev in events:
                        q.put_nowait((i, ev))
            except RoutingError as exc:
                q.put_nowait((i, Failed(exc)))
            finally:
                q.put_nowait((i, None))

        tasks = [asyncio.create_task(column(i, r)) for i, r in enumerate(requests)]
        try:
            open_columns = len(tasks)
            while open_columns:
                i, ev = await q.get()
                if ev is None:
                    open_columns -= 1
                    continue
                yield i, ev
            for t in tasks:  # a column's own bug surfaces here, not lost in a task
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)



_CHECKS = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="timmy-schema-check")
"""Where answers are checked against their schema: off the router's loop (a user's
pydantic validator, or a JSON-schema ``pattern`` run on server text, may take its time and
must stall no other request), and apart from the loop's default executor (which quota
reads and server stops use)."""


async def _checked(schema: Schema, text: str, time_left: float) -> Any:
    """``schema.validate(text)`` in a worker thread, within what is left of the request's
    deadline: past it, the answer counts as invalid (the check may still finish in its
    thread; nothing waits for it)."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(_CHECKS, schema.validate, text),
                                      max(time_left, 0.0))
    except TimeoutError:
        raise InvalidAnswer(f"{INVALID_PREFIX} checking it did not finish within the "
                            "request's deadline (timeout_seconds)") from None


def _prompted(st: ProviderState, model: str | None) -> bool:
    """Does this provider's model take tools through the prompted protocol? When it says
    so (``tool_protocol: prompted``), or when it is asked as a completion (no chat
    template, so no tool template either)."""
    mc = st.cfg.model(st.model_for(model))
    if mc is None:
        return False
    return mc.tool_protocol == "prompted" or (mc.tool_protocol is None
                                               and mc.mode == "completion")


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
