"""One attempt: one request against one endpoint of one provider.

It owns the attempt's deadlines (first token, then idle gaps, capped by the whole request),
its usage (validated at the wire, estimated when missing or nonsense), its cost and
tokens/s, and it settles the breaker permit and the provider's metrics exactly once,
whatever happens (an answer, an error, a cancel). Before the first token it raises a
ProviderError (the cascade may fail over); after it, the stream ends with a ``Done``
holding the partial text and the error.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from timmy_magic.config.request_defaults import with_defaults
from timmy_magic.model.chat import (
    ChatRequest,
    Delta,
    Done,
    Event,
    Result,
    RouteTrace,
    Timings,
    Usage,
)
from timmy_magic.model.errors import (
    ConnectionRefused,
    ProviderConnectError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
)
from timmy_magic.model.framing import reads_as_instruction
from timmy_magic.model.tokens import estimate_tokens
from timmy_magic.privacy.redact import REDACT
from timmy_magic.providers.base import Chunk, Probe, map_error
from timmy_magic.routing import gate as gate_mod
from timmy_magic.routing.breaker import Permit
from timmy_magic.routing.endpoints import Endpoint, ProviderState
from timmy_magic.routing.state import Core, shown_url
from timmy_magic.tools import prompted

MIN_RATE_WINDOW_S = 0.01
"""Shortest time from the first to the last token over which tokens/s is reported."""
MAX_ANSWER_CHARS = 4 << 20
"""Longest answer kept (about a million tokens, beyond any model's output): a server that
streams without end is stopped there, the text so far kept, and the error named."""


class Watchdog:
    """The attempt's read deadline: one timer for the whole attempt, not one per chunk.

    The read loop only moves ``when`` (a float store per chunk) and says when it is
    waiting (``reading``). The timer is armed once (and again only if ``when`` moved
    earlier than it: the idle gap after the first token), re-arms itself at ``when``
    while that is still ahead; when it has passed and the attempt is waiting for the next chunk, it
    cancels the waiting task, and ``expired`` turns that cancel into a TimeoutError, as
    ``asyncio.timeout`` does. The consumer's code between two chunks is never cut short:
    a timer that fires then just stops, and the next read arms it again.
    (``asyncio.timeout_at`` per chunk cost 11 us per enter/exit here, 42 % of the
    router's own time: docs/performance.md.)
    """

    __slots__ = ("_armed", "_base", "_handle", "_loop", "_task", "fired", "reading", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._loop = loop
        self.when = when
        self.reading = False
        self.fired = False
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed = when
        self._base = 0

    def start_read(self) -> None:
        """Before awaiting the next chunk."""
        self.reading = True
        self._task = asyncio.current_task(self._loop)
        if self._handle is None or self._armed > self.when:  # none, or set for later
            if self._handle is not None:  # (the idle gap after the first token)
                self._handle.cancel()
            self._handle = self._loop.call_at(self.when, self._fire)
            self._armed = self.when

    def _fire(self) -> None:
        self._handle = None
        if not self.reading:
            return  # the consumer's time: the next read re-arms
        if self._loop.time() < self.when:
            self._handle = self._loop.call_at(self.when, self._fire)
            self._armed = self.when
            return
        if self._task is not None and not self._task.done():
            self.fired = True
            self._base = self._task.cancelling()
            self._task.cancel()

    def expired(self) -> bool:
        """On CancelledError: was it ours alone (then it is a timeout)?"""
        if not self.fired or self._task is None:
            return False
        self.fired = False
        return self._task.uncancel() <= self._base

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def attempt(core: Core, st: ProviderState, ep: Endpoint, permit: Permit,
                  req: ChatRequest, t0: float, deadline: float,
                  started: float, whole: bool = False) -> AsyncGenerator[Event, None]:
    """One attempt on one endpoint. Raises ProviderError before the first token; after
    it, ends with a Done carrying the partial text and the error. Settles ``permit``
    and the provider's metrics exactly once, whatever happens. ``whole``: ask for the
    answer in one body when the adapter can (``Backend.complete``); the first-token
    deadline then covers the whole body."""
    cas = core.config.cascade
    model, asked, max_tokens, temperature = with_defaults(req, st.cfg, cas)
    if max_tokens != req.max_tokens or temperature != req.temperature:
        req = replace(req, max_tokens=max_tokens, temperature=temperature)
    parts: list[str] = []
    size = 0
    usage: Usage | None = None
    served_model: str | None = None
    notes: list[str] = []
    calls: tuple[Any, ...] = ()  # tool calls the answer asked for
    chunks = 0
    ttft: float | None = None
    ep.outstanding += 1
    st.metrics.started()
    core.notify("metrics")
    error: ProviderError | None = None
    ended = False
    try:
        backend = core.backend(st, ep)
        first_deadline = min(deadline, started + cas.first_token_timeout_seconds)
        one_body = getattr(backend, "complete", None) if whole else None
        gen: AsyncIterator[Chunk] = (one_body(req, model) if one_body is not None
                                     else backend.stream(req, model))
        loop = asyncio.get_running_loop()
        # The deadline guards only the wait for the next chunk (never the consumer's
        # code between two yields): first token, then idle gaps, capped by the request.
        watch = Watchdog(loop, loop.time() + max(0.0, first_deadline - core.clock()))
        try:
            while True:
                watch.start_read()
                try:
                    chunk = await anext(gen)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if watch.expired():
                        raise TimeoutError from None
                    raise
                finally:
                    watch.reading = False
                if chunk.model and served_model is None:
                    served_model = chunk.model
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.note:
                    notes.append(chunk.note)
                if chunk.calls:
                    calls += chunk.calls
                if chunk.text:
                    now = core.clock()
                    if ttft is None:
                        ttft = now - t0
                    chunks += 1
                    size += len(chunk.text)
                    if size > MAX_ANSWER_CHARS:
                        raise ProviderProtocolError(
                            f"the answer passed {MAX_ANSWER_CHARS} characters: stopped "
                            f"there (the text so far is kept)", provider=st.name)
                    parts.append(chunk.text)
                    watch.when = loop.time() + min(cas.idle_timeout_seconds, deadline - now)
                    yield Delta(chunk.text)
        finally:
            watch.stop()
            await gen.aclose()  # type: ignore[attr-defined]
        ended = True
    except TimeoutError:
        error = ProviderTimeout(_timeout_message(core, ttft, deadline), provider=st.name)
    except ProviderError as exc:
        error = exc
    except Exception as exc:  # an adapter bug must not kill the route: count it  # noqa: BLE001
        error = map_error(exc, st.name)
    finally:
        ep.outstanding -= 1
        if error is None and not ended:  # cancelled, closed early, interrupted
            permit.release(core.clock())
            st.metrics.was_cancelled()
        if ep.retired and not ep.outstanding:
            core.retire(ep)
    now = core.clock()
    if error is not None:
        error.__traceback__ = None  # its frames would keep this stream's buffers alive
        _record_failure(core, st, ep, permit, error, now)
        if ttft is None:
            raise error
    else:
        permit.success(now)
        core.mark_up(ep, now)
    # a configured key in the answer (a hostile server's echo) is masked where the answer
    # is kept: the Result, and from it the cache, the history, every render and repr
    text = REDACT.known("".join(parts))
    del parts
    usage = settle_usage(st, usage, req, text, chunks)
    total = now - t0
    gen_time = now - t0 - (ttft or 0.0)
    # no rate from an answer that came in one piece or one burst (17,808 tok/s was shown
    # for 24 tokens read in 1.3 ms): there is nothing to measure, the footer shows none
    tok_s = usage.output_tokens / gen_time \
        if usage.output_tokens and chunks > 1 and gen_time >= MIN_RATE_WINDOW_S else None
    mc = st.cfg.model(served_model or model) or st.cfg.model(model)
    cost = gate_mod.cost_usd(usage.input_tokens, usage.output_tokens,
                             mc.price_per_1k_input if mc else 0.0,
                             mc.price_per_1k_output if mc else 0.0)
    if cost > 0 and math.isfinite(cost):
        core.ledger.add(cost)
    else:
        cost = 0.0
    if error is None:
        own_ttft = None if ttft is None else ttft - (started - t0)
        st.metrics.succeeded(now - started, own_ttft, tok_s, cost)
    elif cost:
        st.metrics.add_cost(cost)
    if (req.model and served_model and st.cfg.model(req.model) is None
            and not _same_model(req.model, served_model)):
        notes.append(f"asked for model '{req.model}', which {st.name} does not configure; "
                     f"the server answered as '{served_model}'")
    if (asked and asked.mode == "completion" and error is None and req.messages
            and not (req.schema is not None and req.schema.name == prompted.SCHEMA_NAME)
            and reads_as_instruction(req.messages[-1].text)):
        notes.append(f"{asked.name} is a base model (mode: completion): it continues text, "
                     "it does not follow instructions or answer questions. Write the start "
                     "of the answer ('A list comprehension is'), or add a chat model to "
                     "providers.yaml")
    if not text and error is None and not notes and not calls:
        notes.append("the model returned an empty answer" + (
            " (it continues the prompt's text: write the start of the answer, e.g. "
            "'A list comprehension is')" if asked and asked.mode == "completion" else ""))
    core.notify("metrics")
    yield Done(Result(text, st.name, served_model or model, usage,
                      Timings(ttft, total, tok_s), RouteTrace(),
                      error=str(error) if error else None, cost_usd=cost,
                      endpoint=shown_url(ep), notes=tuple(notes), calls=calls))


def settle_usage(st: ProviderState, usage: Usage | None, req: ChatRequest, text: str,
                  chunks: int) -> Usage:
    """The usage to count: the server's (validated at the wire), else an estimate
    (``model.tokens``) marked as such, so a server that sends nonsense can neither hide a
    paid answer from the budget nor show an absurd count."""
    inp = usage.input_tokens if usage else None
    out = usage.output_tokens if usage else None
    if usage is not None and out is not None and (inp is not None or not st.cfg.is_cloud):
        return usage
    if out is None:
        out = max(chunks, estimate_tokens(text)) if text else 0
    if inp is None and st.cfg.is_cloud:
        inp = req.input_tokens
    return Usage(inp, out, estimated=True)


def _timeout_message(core: Core, ttft: float | None, deadline: float) -> str:
    cas = core.config.cascade
    if core.clock() >= deadline - 1e-3:
        return f"whole request exceeded timeout_seconds={cas.timeout_seconds:g}"
    if ttft is None:
        return f"no first token within first_token_timeout_seconds=" \
               f"{cas.first_token_timeout_seconds:g}"
    return f"stream stalled: no data for idle_timeout_seconds={cas.idle_timeout_seconds:g}"


def _record_failure(core: Core, st: ProviderState, ep: Endpoint, permit: Permit,
                    err: ProviderError, now: float) -> None:
    st.metrics.failed()
    if core.policy.counts(err):  # a failure of the endpoint, not of the request's model
        permit.failure(now)
    else:
        permit.release(now)
    if isinstance(err, ProviderConnectError):  # cannot reach it: the badge should say so
        ep.probe = Probe("down", error=str(err), refused=isinstance(err, ConnectionRefused))
        ep.checked_at = now
    core.notify("metrics")


def _same_model(asked: str, served: str) -> bool:
    """The name a server reports for the model it was asked for: the same, or the same
    with Ollama's ``:latest`` tag or a path in front (``models/gemma.gguf``)."""
    def bare(name: str) -> str:
        name = name.rsplit("/", 1)[-1].lower()
        return name.removesuffix(":latest").removesuffix(".gguf")
    return bare(asked) == bare(served)
