"""The HTTP transport under every backend's client: aiohttp behind httpx's API.

The adapters speak httpx (``AsyncClient.stream``, ``get``, timeouts, redirects); this
transport carries the bytes over aiohttp's connection pool and HTTP parser, which cost
the client less than half the CPU per streamed token of httpx's own (h11) transport at
256 streams (docs/performance.md). httpx's own stays selectable
(``base.HTTP_TRANSPORT = "httpx"``).

aiohttp's errors become the httpx errors that say the same thing, here at the boundary
as httpx converts httpcore's, so ``base.map_error`` reads one family: a server that hangs
up before answering is ``RemoteProtocolError`` (a stale kept-alive connection, sent once
more by ``base._open``), a body cut midway is ``RemoteProtocolError`` or ``ReadError``
("connection dropped"), a refusal ``ConnectError``, the connect and read backstops
``ConnectTimeout`` and ``ReadTimeout``.
"""

from __future__ import annotations

import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import aiohttp
import httpx
from yarl import URL

READS = "timmy_magic.reads"
"""The response extension that holds the body's reads straight from aiohttp."""

# aiohttp class -> httpx class; most specific first (the table is read top to bottom).
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (aiohttp.ClientError, httpx.TransportError),
)


def httpx_error(exc: BaseException) -> httpx.TransportError | None:
    """The httpx error that says what ``exc`` (an aiohttp error) says; None for others."""
    for foreign, ours in _ERRORS:
        if isinstance(exc, foreign):
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, aiohttp.ServerTimeoutError):
                detail = ""  # aiohttp's text names its own setting (sock_read...)
            elif isinstance(exc, aiohttp.ClientConnectorError):
                detail = _connect_detail(exc.os_error)
            return ours(detail)
    return None


UNSENT_TRIES = 3
"""Sends of a request whose connection was gone before it left (``unsent``): each stale
pooled connection is dropped, so a few tries reach a live or a new one."""


def unsent(exc: BaseException) -> bool:
    """aiohttp could not write the request at all (the connection was gone): nothing
    reached the server, so sending it again on a new connection is safe."""
    return (isinstance(exc, aiohttp.ClientOSError)
            and not isinstance(exc, aiohttp.ClientConnectorError)
            and "Can not write request body" in str(exc))


def _connect_detail(err: OSError) -> str:
    """Why a connection failed, in words that do not change from run to run (aiohttp's
    own text carries the address and port, which the error already names)."""
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return "host name not resolved"
    return f"connection failed ({err.strerror or type(err).__name__})"


def _url(url: httpx.URL) -> URL:
    """The URL as httpx encoded it (encoding it again would change what a server reads),
    without credentials: httpx has made them the Authorization header."""
    return URL(str(url), encoded=True).with_user(None)


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        mapped = httpx_error(exc)
        if mapped is None:  # pragma: no cover - every ClientError is in the table
            raise
        raise mapped from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        with _mapped():
            while data := await content.readany():
                yield data


    async def aclose(self) -> None:
        # read to its end, the connection goes back to the pool; else it is closed
        self._response.release()


def _forget(connector: aiohttp.BaseConnector) -> None:
    """A transport dropped without ``aclose`` (a router never closed, the loop already
    gone): its sockets are closed quietly, as httpx's would be, instead of aiohttp
    printing "Unclosed client session" into the notebook when it is collected."""
    with suppress(Exception):
        connector._close()  # the synchronous part of close(); safe on a closed loop


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (its connection pool), opened on the first request (it needs
    the running loop); httpx's timeouts become aiohttp's connect and read timeouts."""

    def __init__(self, verify: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._ssl = verify
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            ssl=self._ssl, limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry or 5.0)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              cookie_jar=aiohttp.DummyCookieJar())
        weakref.finalize(self, _forget, connector)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        data = await request.aread()  # the JSON body (a redirect's is not read yet)
        with _mapped():
            for tries_left in range(UNSENT_TRIES - 1, -1, -1):
                try:
                    response = await session.request(
                        request.method, _url(request.url),
                        headers=request.headers.multi_items(), data=data or None,
                        allow_redirects=False, skip_auto_headers=("User-Agent",),
                        timeout=aiohttp.ClientTimeout(sock_connect=timeout.get("connect"),
                                                      sock_read=timeout.get("read"),
                                                      connect=timeout.get("pool")))
                    break
                except aiohttp.ClientOSError as exc:
                    if not tries_left or not unsent(exc):
                        raise
                    # a pooled connection the server closed as we reused it (llama-server
                    # closes one after a few requests): the request never left, so it
                    # goes again, on another connection
        body = _Body(response)
        # READS: the body's reads without httpx's layers, for ``base.Body`` to take
        # when there is no content-encoding (then httpx passes them through unchanged)
        return httpx.Response(response.status, headers=response.raw_headers,
                              stream=body, request=request,
                              extensions={"http_version": b"HTTP/1.1", READS: body.__aiter__})

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
