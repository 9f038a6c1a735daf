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
from collections.abc import AsyncIterator
from dataclasses import replace

from . import gate as gate_mod
from .breaker import Permit
from .core import Core
from .errors import ProviderConnectError, ProviderError, ProviderProtocolError, ProviderTimeout
from .health import Endpoint, ProviderState
from .providers.base import Probe, map_error
from .types import ChatRequest, Delta, Done, Event, Result, RouteTrace, Timings, Usage

MAX_ANSWER_CHARS = 4 << 20
"""Longest answer kept (about a million tokens, beyond any model's output): a server that
streams without end is stopped there, the text so far kept, and the error named."""


async def attempt(core: Core, st: ProviderState, ep: Endpoint, permit: Permit,
                  req: ChatRequest, t0: float, deadline: float,
                  started: float) -> AsyncIterator[Event]:
    """One attempt on one endpoint. Raises ProviderError before the first token; after
    it, ends with a Done carrying the partial text and the error. Settles ``permit``
    and the provider's metrics exactly once, whatever happens."""
    cas = core.config.cascade
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
    core.notify("metrics")
    error: ProviderError | None = None
    ended = False
    try:
        backend = core.backend(st, ep)
        first_deadline = min(deadline, started + cas.first_token_timeout_seconds)
        gen = backend.stream(req, model)
        loop = asyncio.get_running_loop()
        # The deadline guards only the wait for the next chunk (never the consumer's
        # code between two yields): first token, then idle gaps, capped by the request.
        when = loop.time() + max(0.0, first_deadline - core.clock())
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
                    when = loop.time() + min(cas.idle_timeout_seconds, deadline - now)
                    yield Delta(chunk.text)
        finally:
            await gen.aclose()  # type: ignore[attr-defined]
        ended = True
    except TimeoutError:
        error = ProviderTimeout(_timeout_message(core, ttft, deadline), provider=st.name)
    except ProviderError as exc:
        error = exc
    except Exception as exc:  # an adapter bug must not kill the route: count it
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
    text = "".join(parts)
    del parts
    usage = settle_usage(st, usage, req, text, chunks)
    total = now - t0
    gen_time = now - t0 - (ttft or 0.0)
    tok_s = usage.output_tokens / gen_time if usage.output_tokens and gen_time > 0 else None
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
    if not text and error is None and not notes:
        notes.append("the model returned an empty answer")
    core.notify("metrics")
    yield Done(Result(text, st.name, served_model or model, usage,
                      Timings(ttft, total, tok_s), RouteTrace(),
                      error=str(error) if error else None, cost_usd=cost,
                      endpoint=ep.shown_url, notes=tuple(notes)))


def settle_usage(st: ProviderState, usage: Usage | None, req: ChatRequest, text: str,
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
    if err.counts_against_breaker:
        permit.failure(now)
    else:
        permit.release(now)
    if isinstance(err, ProviderConnectError):  # cannot reach it: the badge should say so
        ep.probe = Probe("down", error=str(err))
        ep.checked_at = now
    core.notify("metrics")
