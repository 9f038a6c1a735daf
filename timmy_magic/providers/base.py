"""The Backend protocol, and the one place where foreign errors become ours.

A backend talks to one endpoint (one base URL) of one provider. It knows how to stream a
chat answer and how to probe health; the router does everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from timmy_magic.model.chat import ChatRequest, Usage
from timmy_magic.model.errors import (
    ConnectionRefused,
    ProviderAuthError,
    ProviderConnectError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderTimeout,
)
from timmy_magic.model.tools import ToolCall
from timmy_magic.privacy.redact import redact_http_logs
from timmy_magic.providers.wire import LineSplitter, SSEReader, WireError, loads, token_count
from timmy_magic.text.markup import count, shorten

if TYPE_CHECKING:  # imported when the first backend is built, not by %load_ext
    import httpx

redact_http_logs()  # httpx logs request URLs (a password, a key in the query) at INFO


@dataclass(frozen=True, slots=True)
class Chunk:
    """What a backend yields: answer text, and (usually last) usage and the served model."""

    text: str = ""
    usage: Usage | None = None
    model: str | None = None
    note: str | None = None
    """What the answer held that is not shown as text (reasoning, tool calls)."""
    calls: tuple[ToolCall, ...] = ()
    """The tool calls the answer asked for (a request that offered ``tools``)."""


def usage_of(input_tokens: Any, output_tokens: Any) -> Usage:
    """Usage from a server's counts, each validated (``wire.token_count``); an invalid
    count is unknown (None), which the router estimates and marks as estimated."""
    return Usage(token_count(input_tokens), token_count(output_tokens))


LIMIT_NOTE = ("stopped at the token limit (max_tokens): the answer may be cut; "
              "raise --max-tokens for more")
"""The note of an answer the server ended because it reached ``max_tokens``
(OpenAI ``finish_reason: length``, Anthropic ``stop_reason: max_tokens``, Ollama
``done_reason: length``): said, so a cut answer is not taken for a whole one."""


def extras_note(reasoning_chars: int, tool_calls: int) -> str | None:
    """The note for an answer's parts that are not text."""
    parts = []
    if reasoning_chars:
        parts.append(f"reasoning ({reasoning_chars} characters, not shown)")
    if tool_calls:
        parts.append(f"{count(tool_calls, 'tool call')} (not run)")
    return ("the model's answer also held " + " and ".join(parts)) if parts else None


def error_text(err: Any) -> str:
    """The message of an in-stream error event, whatever JSON shape it has."""
    if isinstance(err, dict):
        err = err.get("message", err)
    return err if isinstance(err, str) else json.dumps(err, ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class Probe:
    state: Literal["healthy", "degraded", "down"]
    latency_s: float | None = None
    models: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    windows: dict[str, int] = field(default_factory=dict)
    """Context windows (tokens) the server reported, by model name (empty: none known)."""
    capabilities: dict[str, frozenset[str]] = field(default_factory=dict)
    """What the server says each model can do (Ollama's ``/api/show``: ``tools``,
    ``vision``, ...), by model name (empty: it says nothing)."""
    refused: bool = False
    """Down because nothing accepted the connection (``ConnectionRefused``)."""


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
    import httpx

    backstop = max(t.idle, t.first_token) + 1.0
    return httpx.Timeout(connect=t.connect, read=backstop, write=backstop, pool=t.connect)


_SSL: Any = None
HTTP_TRANSPORT = "aiohttp"
"""The transport of the clients built from now on: ``"aiohttp"`` (``transport.py``:
aiohttp's pool and parser under httpx's API, less than half the client CPU per streamed
token of httpx's own: docs/performance.md) or ``"httpx"`` (httpx's own, over h11). Both
read the same through ``map_error``; without aiohttp installed, httpx's own is used."""


def make_http_client(t: Timeouts, **kw: Any) -> httpx.AsyncClient:
    """One client per endpoint; all share one SSL context (building one costs ~10 ms)."""
    import httpx

    global _SSL
    if _SSL is None:
        import ssl

        _SSL = ssl.create_default_context()
        try:
            import certifi

            _SSL.load_verify_locations(certifi.where())
        except ImportError:
            pass
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=64)
    if HTTP_TRANSPORT == "aiohttp" and "transport" not in kw:
        try:
            from timmy_magic.providers.transport import AiohttpTransport
        except ImportError:  # aiohttp not installed: httpx's own transport
            pass
        else:
            kw["transport"] = AiohttpTransport(_SSL, limits)
    return httpx.AsyncClient(timeout=http_timeout(t), verify=_SSL, follow_redirects=True,
                             limits=limits, **kw)


MESSAGE_CHARS = 300
"""How much of a server's error message (or a foreign exception's) a ProviderError keeps."""


def _status_message(status: int, body: Any) -> str:
    msg: Any = ""
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message", "")))
        if isinstance(err, dict):
            err = err.get("message", err)
        msg = err
    elif body:
        msg = body
    text = msg if isinstance(msg, str) else json.dumps(msg, ensure_ascii=False, default=str)
    return f"HTTP {status}" + (f": {text}" if text else "")


def status_error(provider: str, status: int, headers: Any, body: Any) -> ProviderError:
    retry_after = parse_retry_after(headers.get("retry-after") if headers else None, time.time())
    msg = shorten(_status_message(status, body), MESSAGE_CHARS)
    cls = ProviderAuthError if status in (401, 403) else ProviderHTTPError
    return cls(msg, provider=provider, status=status, retry_after=retry_after)


# Foreign exception class -> (our class, message prefix). Most specific first: the table
# is read top to bottom, as httpx's own ``map_httpcore_exceptions``. Built on first use,
# so importing this module does not import httpx (~80 ms of %load_ext: docs/performance.md).
_Mapping = tuple[tuple[type[BaseException] | tuple[type[BaseException], ...],
                       type[ProviderError], str], ...]
_MAPPING: _Mapping = ()


def _mapping() -> _Mapping:
    global _MAPPING
    if not _MAPPING:
        import httpx

        _MAPPING = (
            (httpx.ConnectTimeout, ProviderTimeout, "connect timed out"),
            (httpx.ConnectError, ConnectionRefused, "cannot connect"),
            ((httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout), ProviderTimeout,
             "no data within the idle timeout"),
            ((httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError),
             ProviderConnectError, "connection dropped"),
            ((httpx.TooManyRedirects, httpx.InvalidURL, httpx.UnsupportedProtocol,
              httpx.LocalProtocolError, httpx.DecodingError), ProviderProtocolError,
             "bad HTTP"),
            (TimeoutError, ProviderTimeout, "timed out"),
            (WireError, ProviderProtocolError, "unreadable answer"),
            ((ValueError, KeyError, TypeError, AttributeError, IndexError, LookupError,
              RecursionError, UnicodeError), ProviderProtocolError, "unreadable answer"),
        )
    return _MAPPING


def map_error(exc: BaseException, provider: str) -> ProviderError:
    """Our error for a foreign one (httpx, parsing, an adapter bug), by the table above.
    A ProviderError passes unchanged (so it never becomes its own cause)."""
    if isinstance(exc, ProviderError):
        if not exc.provider:
            exc.provider = provider
        return exc
    import httpx

    for types, cls, prefix in _mapping():
        if isinstance(exc, types):
            detail = (_why_not_connected(exc) if isinstance(exc, httpx.ConnectError)
                      else "") or str(exc)
            if isinstance(exc, httpx.TimeoutException | TimeoutError) or not detail:
                return cls(prefix, provider=provider)
            return cls(shorten(f"{prefix}: {detail}", MESSAGE_CHARS), provider=provider)
    return ProviderProtocolError(shorten(f"{type(exc).__name__}: {exc}", MESSAGE_CHARS),
                                 provider=provider)


def _why_not_connected(exc: BaseException) -> str:
    """A failed connect in the same words whichever transport saw it (httpx's async
    stack says "All connection attempts failed", aiohttp names the address): from the
    operating system's error in the chain, else ""."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "host name not resolved"
        seen = seen.__cause__ or seen.__context__
    return ""


@contextlib.contextmanager
def mapped_errors(provider: str) -> Iterator[None]:
    """Inside: any foreign exception leaves as our ProviderError, cause kept but its
    traceback dropped (a traceback holds the frames, and so the buffers, of the stream)."""
    try:
        yield
    except ProviderError as exc:
        if not exc.provider:
            exc.provider = provider
        raise
    except Exception as exc:  # noqa: BLE001
        err = map_error(exc, provider)
        raise err from exc.with_traceback(None)


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


def listed_windows(body: Any) -> dict[str, int]:
    """``max_model_len`` of each model of an OpenAI-style list (vLLM reports it), checked
    as a count; models without one are left out."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return {}
    return {str(m.get("id")): n for m in data if isinstance(m, dict)
            and (n := token_count(m.get("max_model_len")))}


def _stale() -> tuple[type[Exception], ...]:
    """How a kept-alive connection the server has meanwhile closed fails: the request is
    written into a closed socket, or the server hangs up without a byte of response."""
    import httpx

    return (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


async def _open(stack: contextlib.AsyncExitStack, http: httpx.AsyncClient, url: str,
                payload: dict[str, Any], headers: dict[str, str] | None) -> httpx.Response:
    """Send the POST and wait for the response head. A connection from the pool may have
    been closed by the server while it sat idle (a keep-alive timeout, a request cap per
    connection): that failure, before any response byte, is sent once more on a fresh
    connection, as urllib3 and aiohttp do. The server answered nothing, so nothing is
    repeated; a second failure is the server's and goes to the retry policy."""
    try:
        return await stack.enter_async_context(
            http.stream("POST", url, json=payload, headers=headers))
    except _stale():
        return await stack.enter_async_context(
            http.stream("POST", url, json=payload, headers=headers))


@contextlib.asynccontextmanager
async def post_stream(http: httpx.AsyncClient, url: str, *, payload: dict[str, Any],
                      headers: dict[str, str] | None, provider: str,
                      content_type: str | None) -> AsyncIterator[httpx.Response]:
    """POST and open the streamed answer; a non-200 status becomes our error (with the
    server's message), and so does a body that is not ``content_type``."""
    async with contextlib.AsyncExitStack() as stack:
        r = await _open(stack, http, url, payload, headers)
        if r.status_code != 200:
            raise status_error(provider, r.status_code, r.headers, json_or_text(await r.aread()))
        ctype = r.headers.get("content-type", "")
        if content_type is not None and content_type not in ctype:
            raise ProviderProtocolError(f"expected {content_type}, got content-type "
                                        f"{ctype or '(none)'}", provider=provider)
        yield r


MAX_BODY_BYTES = 32 << 20
"""Largest non-streamed answer body read (the longest answer kept, JSON-escaped, fits)."""


class Body:
    """A streamed response body, decoded by ``wire``: ``sse()`` or ``ndjson()`` yield its
    events; ``drain()`` then reads what is left after the end marker."""

    def __init__(self, response: httpx.Response) -> None:
        direct = response.extensions.get("timmy_magic.reads")  # transport.READS
        # aiohttp's reads straight from its buffer when there is nothing to decode
        # (transport.py), without httpx's byte-stream layers
        self._reads: AsyncIterator[bytes] = (
            direct() if direct is not None and "content-encoding" not in response.headers
            else response.aiter_bytes())

    async def sse(self) -> AsyncIterator[tuple[str, str]]:
        """(event, data) pairs of a Server-Sent Events body."""
        async for events in self.sse_reads():
            for ev in events:
                yield ev

    async def sse_reads(self) -> AsyncIterator[list[tuple[str, str]]]:
        """The (event, data) pairs of a Server-Sent Events body, those of one network
        read at a time: a stream that yields per read, not per line or event."""
        reader = SSEReader()
        async for data in self._reads:
            if events := reader.feed(data):
                yield events
        if events := reader.end():
            yield events

    async def ndjson(self) -> AsyncIterator[Any]:
        """One JSON value per non-blank line of the body."""
        lines = LineSplitter()
        async for data in self._reads:
            for line in lines.feed(data):
                if line.strip():
                    yield loads(line)
        for line in lines.close():
            if line.strip():
                yield loads(line)

    async def read(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The whole body (a non-streamed answer), at most ``limit`` bytes."""
        parts: list[bytes] = []
        seen = 0
        async for data in self._reads:
            seen += len(data)
            if seen > limit:
                raise WireError(f"a body larger than {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    async def drain(self, limit: int = 1 << 16) -> None:
        """Read what is left after the end marker (``[DONE]``, ``done: true``), up to
        ``limit`` bytes: a body read to its end lets httpx keep the connection for the next
        request; one left unread makes it close it (a new TCP handshake every request)."""
        seen = 0
        async for data in self._reads:
            seen += len(data)
            if seen > limit:
                return


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
    import httpx

    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return Probe("down", error=f"health check timed out after {timeout:g}s")
    err = map_error(exc, provider)
    return Probe("down", error=str(err), refused=isinstance(err, ConnectionRefused))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
