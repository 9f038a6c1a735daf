"""The Backend protocol, and the one place where foreign errors become ours.

A backend talks to one endpoint (one base URL) of one provider. It knows how to stream a
chat answer and how to probe health; the router does everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from ..errors import (
    ProviderAuthError,
    ProviderConnectError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderTimeout,
)
from ..retry import parse_retry_after
from ..secrets import REDACT
from ..types import ChatRequest, Usage


@dataclass(frozen=True, slots=True)
class Chunk:
    """What a backend yields: answer text, and (usually last) usage and the served model."""

    text: str = ""
    usage: Usage | None = None
    model: str | None = None
    server: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Probe:
    state: Literal["healthy", "degraded", "down"]
    latency_s: float | None = None
    models: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    idle: float
    health: float
    first_token: float


class Backend(Protocol):
    url: str

    def stream(self, request: ChatRequest, model: str | None) -> AsyncIterator[Chunk]: ...

    async def probe(self, timeout: float) -> Probe: ...

    async def aclose(self) -> None: ...


def http_timeout(t: Timeouts) -> httpx.Timeout:
    # The router enforces the first-token, idle and whole-request deadlines itself (they
    # name the phase that stalled); httpx's read timeout is only a backstop behind them.
    backstop = max(t.idle, t.first_token) + 1.0
    return httpx.Timeout(connect=t.connect, read=backstop, write=backstop, pool=t.connect)


_SSL: Any = None


def make_http_client(t: Timeouts, **kw: Any) -> httpx.AsyncClient:
    """One client per endpoint; all share one SSL context (building one costs ~10 ms)."""
    global _SSL
    if _SSL is None:
        import ssl

        _SSL = ssl.create_default_context()
        try:
            import certifi

            _SSL.load_verify_locations(certifi.where())
        except ImportError:
            pass
    return httpx.AsyncClient(timeout=http_timeout(t), verify=_SSL, follow_redirects=True,
                             limits=httpx.Limits(max_connections=1024,
                                                 max_keepalive_connections=64), **kw)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return REDACT(text if len(text) <= limit else text[: limit - 1] + "…")


def _status_message(status: int, body: Any) -> str:
    msg = ""
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message", "")))
        if isinstance(err, dict):
            err = err.get("message", err)
        msg = str(err)
    elif body:
        msg = str(body)
    return f"HTTP {status}" + (f": {msg}" if msg else "")


def status_error(provider: str, status: int, headers: Any, body: Any) -> ProviderError:
    retry_after = parse_retry_after(headers.get("retry-after") if headers else None, time.time())
    msg = _one_line(_status_message(status, body))
    cls = ProviderAuthError if status in (401, 403) else ProviderHTTPError
    return cls(msg, provider=provider, status=status, retry_after=retry_after)


def map_error(exc: BaseException, provider: str) -> ProviderError:
    """Convert an httpx / openai / anthropic / parsing exception into our error tree.
    Most specific first. Never loses the cause (callers ``raise ... from exc``)."""
    if isinstance(exc, ProviderError):
        return exc
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if isinstance(status, int) and response is not None:
        body: Any = getattr(exc, "body", None)
        if body is None:
            try:
                body = response.json()
            except Exception:
                body = None
        return status_error(provider, status, response.headers, body)
    name = type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    chain = [exc] + ([cause] if cause is not None else [])
    for e in chain:
        if isinstance(e, httpx.ConnectTimeout):
            return ProviderTimeout("connect timed out", provider=provider)
        if isinstance(e, httpx.ConnectError):
            return ProviderConnectError(_one_line(f"cannot connect: {e}" if str(e)
                                                  else "cannot connect"), provider=provider)
        if isinstance(e, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
            return ProviderTimeout("no data within the idle timeout", provider=provider)
        if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError)):
            return ProviderConnectError(_one_line(f"connection dropped: {e}" if str(e)
                                                  else "connection dropped"),
                                        provider=provider)
        if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
            return ProviderTimeout("timed out", provider=provider)
    if "Timeout" in name:
        return ProviderTimeout(_one_line(str(exc) or "timed out"), provider=provider)
    if "Connection" in name:
        return ProviderConnectError(_one_line(str(exc) or "connection error"),
                                    provider=provider)
    if isinstance(exc, (json.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError)):
        return ProviderProtocolError(_one_line(f"unreadable answer: {name}: {exc}"),
                                     provider=provider)
    return ProviderProtocolError(_one_line(f"{name}: {exc}"), provider=provider)


def json_or_text(body: bytes) -> Any:
    """An error body as JSON if it is JSON, else its first 200 characters."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:200]


def model_ids(body: Any) -> tuple[str, ...]:
    """Model ids from an OpenAI-style list ``{"data": [{"id": ...}, ...]}`` (else none)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return ()
    return tuple(str(m.get("id")) for m in data if isinstance(m, dict))


@contextlib.asynccontextmanager
async def post_stream(http: httpx.AsyncClient, url: str, *, payload: dict[str, Any],
                      headers: dict[str, str] | None, provider: str,
                      content_type: str | None) -> AsyncIterator[httpx.Response]:
    """POST and open the streamed answer; a non-200 status becomes our error (with the
    server's message), and so does a body that is not ``content_type``."""
    async with http.stream("POST", url, json=payload, headers=headers) as r:
        if r.status_code != 200:
            raise status_error(provider, r.status_code, r.headers, json_or_text(await r.aread()))
        ctype = r.headers.get("content-type", "")
        if content_type is not None and content_type not in ctype:
            raise ProviderProtocolError(f"expected {content_type}, got content-type "
                                        f"{ctype or '(none)'}", provider=provider)
        yield r


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a Server-Sent Events stream (WHATWG HTML 9.2.6): fields
    accumulate until a blank line; comments and unknown fields are ignored."""
    event, data = "", list[str]()
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
    if data:
        yield event or "message", "\n".join(data)


async def get_json(client: httpx.AsyncClient, url: str, timeout: float,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, float]:
    """GET ``url`` with one deadline; returns (status, parsed JSON or text, latency)."""
    t0 = time.perf_counter()
    async with asyncio.timeout(timeout):
        r = await client.get(url, timeout=timeout, headers=headers)
    latency = time.perf_counter() - t0
    try:
        body: Any = r.json()
    except ValueError:
        body = r.text[:200]
    return r.status_code, body, latency


def probe_error(exc: BaseException, provider: str, timeout: float) -> Probe:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException)):
        return Probe("down", error=f"health check timed out after {timeout:g}s")
    return Probe("down", error=str(map_error(exc, provider)))
