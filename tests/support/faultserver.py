"""Stdlib-only fake LLM servers that misbehave on demand, for tests.

Every server runs an asyncio loop in a daemon thread, listens on 127.0.0.1 on
a free port, and is driven from synchronous test code::

    with FaultServer() as srv:
        base = srv.base_url("status", code=429, retry_after=2)
        # POST f"{base}/v1/chat/completions" -> 429 with Retry-After: 2

URL scheme: ``http://127.0.0.1:PORT/s/<scenario>/<params>/<endpoint>`` where
``<params>`` is ``k=v,k2=v2`` (values percent-encoded) or ``_`` for none, and
``<endpoint>`` is ``v1/chat/completions``, ``v1/messages`` (Anthropic),
``v1/models`` or ``health``. Any number of leading ``v1/`` segments is
accepted, so ``<base>/v1`` works as an OpenAI SDK ``base_url``.

Responses are written byte by byte by hand: streams use HTTP/1.1 chunked
transfer encoding (like uvicorn), so a *clean* end of stream (terminating
``0`` chunk) and an *abrupt* one (socket closed mid-body) are distinct on the
wire. Every hang lasts until ``stop()`` or ``cap`` seconds (default 60), then
the connection is aborted; ``stop()`` aborts all client transports at once.
"""

from __future__ import annotations

import asyncio
import http
import json
import re
import socket
import struct
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Self
from urllib.parse import quote, unquote, urlsplit

MODEL = "fault-model"
DEFAULT_CAP = 60.0
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


# ----------------------------------------------------------------- helpers


def closed_port() -> int:
    """A localhost port with nothing listening (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received. ``time`` is ``time.monotonic()`` at arrival."""

    method: str
    path: str
    scenario: str | None
    params: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any  # parsed body, or None if empty / not JSON
    time: float


class Params(dict[str, str]):
    """URL parameters of a scenario, with typed getters."""

    def getint(self, key: str, default: int) -> int:
        return int(self[key]) if key in self else default

    def getfloat(self, key: str, default: float) -> float:
        return float(self[key]) if key in self else default


# -------------------------------------------------------- thread + loop core


class _LoopServer:
    """A TCP server on 127.0.0.1:<free port> run by a private loop in a thread."""

    def __init__(self, *, cap: float = DEFAULT_CAP) -> None:
        self.cap = cap
        self.host = "127.0.0.1"
        self.port = 0
        self.errors: list[str] = []  # unexpected handler exceptions (tracebacks)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_evt: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections currently open on the server side."""
        return len(self._writers)

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError(f"{type(self).__name__} did not start")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self) -> None:
        """Abort every connection and stop the loop; returns promptly."""
        thread, loop, evt = self._thread, self._loop, self._stop_evt
        if thread is None:
            return
        if loop is not None and evt is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(evt.set)
            except RuntimeError:  # loop already closed
                pass
        thread.join(timeout=5.0)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop_evt = asyncio.Event()
        try:
            server = await asyncio.start_server(self._on_connect, self.host, 0, limit=_MAX_HEAD)
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        await self._stop_evt.wait()
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            self.errors.append(traceback.format_exc())
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class Blackhole(_LoopServer):
    """Accepts TCP connections, never reads a byte, never answers.

    Connections are held until ``stop()`` or ``cap`` seconds. ``accepted``
    counts connections ever accepted.
    """

    def __init__(self, *, cap: float = DEFAULT_CAP) -> None:
        super().__init__(cap=cap)
        self.accepted = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        transport = writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()
        await asyncio.sleep(self.cap)


# --------------------------------------------------------------- HTTP layer


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    """Read one HTTP/1.1 request; None on clean EOF before a request."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while total <= _MAX_BODY:  # each size line is bounded by _MAX_HEAD
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            total += size
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
    return method, target, headers, body


class Responder:
    """Writes one HTTP response on a connection, byte by byte."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cap: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.cap = cap

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self, status: int, headers: Mapping[str, str]) -> None:
        """Status line and headers (nothing else is added)."""
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {status} {phrase}"] + [f"{k}: {v}" for k, v in headers.items()]
        await self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """A complete response delimited by Content-Length."""
        all_headers = {
            "content-type": content_type,
            "content-length": str(len(body)),
            **(headers or {}),
        }
        await self.head(status, all_headers)
        await self.write(body)

    async def send_json(
        self, status: int, obj: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        await self.send(status, json.dumps(obj).encode(), "application/json", headers)

    async def start_chunked(
        self, status: int, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        await self.head(
            status,
            {"content-type": content_type, "transfer-encoding": "chunked", **(headers or {})},
        )

    async def chunk(self, data: bytes) -> None:
        if data:
            await self.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def end_chunked(self) -> None:
        await self.write(b"0\r\n\r\n")

    async def hang(self) -> None:
        """Send nothing more until the client leaves, stop() or the cap; then abort."""
        deadline = time.monotonic() + self.cap
        while time.monotonic() < deadline:  # discard anything the client sends until EOF
            try:
                data = await asyncio.wait_for(self.reader.read(65536), deadline - time.monotonic())
            except TimeoutError:
                break
            if not data:
                break
        self.writer.transport.abort()

    async def drop(self, rst: bool = False) -> None:
        """Close the socket mid-response (FIN, or RST when ``rst``)."""
        transport = self.writer.transport
        for _ in range(100):  # let buffered bytes reach the kernel (<= ~1 s)
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.01)
        sock = transport.get_extra_info("socket")
        if rst and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


class _HttpServer(_LoopServer):
    """Keep-alive HTTP/1.1 request loop with request recording."""

    def __init__(self, *, cap: float = DEFAULT_CAP) -> None:
        super().__init__(cap=cap)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        """Most POSTs being answered at once since the last ``reset``."""

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    def count(self, scenario: str | None = None, path_suffix: str | None = None) -> int:
        """Number of recorded requests matching the scenario and/or path suffix."""
        return sum(
            1
            for r in self.requests
            if (scenario is None or r.scenario == scenario)
            and (path_suffix is None or r.path.endswith(path_suffix))
        )

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self.peak_in_flight = self.in_flight

    def _record(self, rec: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(rec)

    def _split_target(self, path: str) -> tuple[str | None, Params]:
        return None, Params()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():  # one iteration per request; idle capped
            request = await asyncio.wait_for(_read_request(reader), self.cap)
            if request is None:
                return
            method, target, headers, body = request
            path = urlsplit(target).path
            scenario, params = self._split_target(path)
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            rec = RecordedRequest(
                method, path, scenario, dict(params), headers, body, parsed, time.monotonic()
            )
            self._record(rec)
            posted = method == "POST"
            if posted:
                self.in_flight += 1  # on the server's one loop: no lock needed
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                await self._dispatch(Responder(reader, writer, self.cap), rec, params)
            finally:
                if posted:
                    self.in_flight -= 1
            if headers.get("connection", "").lower() == "close":
                return

    async def _dispatch(self, out: Responder, rec: RecordedRequest, params: Params) -> None:
        raise NotImplementedError


# --------------------------------------------------------------- dialects


def _sse(obj: Any, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(obj)}\n\n".encode()


@dataclass
class _Exchange:
    """One chat request being answered by a scenario handler."""

    out: Responder
    rec: RecordedRequest
    params: Params
    dialect: _Dialect
    server: FaultServer
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        return f"{self.dialect.id_prefix}fault{id(self):x}"

    @property
    def body(self) -> dict[str, Any]:
        return self.rec.json if isinstance(self.rec.json, dict) else {}

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def model(self) -> str:
        return str(self.body.get("model") or self.params.get("model", MODEL))

    @property
    def prompt_tokens(self) -> int:
        texts = [m.get("content") for m in self.body.get("messages", []) if isinstance(m, dict)]
        texts.append(self.body.get("system"))
        return max(1, sum(len(t.split()) for t in texts if isinstance(t, str)))

    def pieces(self, default_tokens: int = 5) -> list[str]:
        """Content deltas: ``text`` split at word starts, else ``tok0 tok1 ...``."""
        text = self.params.get("text")
        if text is not None:
            return re.findall(r"\s*\S+\s*", text) or [text]
        return [f"tok{i} " for i in range(self.params.getint("tokens", default_tokens))]

    async def open_stream(self) -> None:
        await self.out.start_chunked(
            200, "text/event-stream; charset=utf-8", {"cache-control": "no-cache"}
        )

    async def frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.out.chunk(frame)

    async def error(
        self, code: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        await self.out.send_json(code, self.dialect.error(code, message), headers)


class _Dialect(Protocol):
    """Wire format of an API: SSE frames and JSON bodies."""

    id_prefix: str

    def opening(self, ex: _Exchange) -> list[bytes]: ...
    def token(self, ex: _Exchange, text: str) -> bytes: ...
    def closing(self, ex: _Exchange, n_tokens: int) -> list[bytes]: ...  # last frame = end marker
    def complete(self, ex: _Exchange, content: str, n_tokens: int) -> dict[str, Any]: ...
    def error(self, code: int, message: str) -> dict[str, Any]: ...


class _OpenAI:
    """``data: {chat.completion.chunk}`` frames, then ``data: [DONE]``."""

    id_prefix = "chatcmpl-"

    def _chunk(self, ex: _Exchange, choices: list[Any], **extra: Any) -> bytes:
        envelope = {"id": ex.id, "object": "chat.completion.chunk", "created": ex.created}
        return _sse({**envelope, "model": ex.model, "choices": choices, **extra})

    def _delta(self, ex: _Exchange, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._chunk(ex, [{"index": 0, "delta": delta, "finish_reason": finish}])

    def opening(self, ex: _Exchange) -> list[bytes]:
        return [self._delta(ex, {"role": "assistant", "content": ""})]

    def token(self, ex: _Exchange, text: str) -> bytes:
        return self._delta(ex, {"content": text})

    def _usage(self, ex: _Exchange, n: int) -> dict[str, int]:
        return {
            "prompt_tokens": ex.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": ex.prompt_tokens + n,
        }

    def closing(self, ex: _Exchange, n_tokens: int) -> list[bytes]:
        frames = [self._delta(ex, {}, "stop")]
        if (ex.body.get("stream_options") or {}).get("include_usage"):
            frames.append(self._chunk(ex, [], usage=self._usage(ex, n_tokens)))
        return frames + [b"data: [DONE]\n\n"]

    def complete(self, ex: _Exchange, content: str, n_tokens: int) -> dict[str, Any]:
        return {
            "id": ex.id,
            "object": "chat.completion",
            "created": ex.created,
            "model": ex.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(ex, n_tokens),
        }

    def error(self, code: int, message: str) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
        }.get(code, "server_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": str(code)}}


class _Anthropic:
    """Messages API events: message_start .. content_block_delta .. message_stop."""

    id_prefix = "msg_"

    @staticmethod
    def _tool(ex: _Exchange) -> str | None:
        """The forced tool's name when the request forces one (structured output): the
        answer then streams as that tool's input, as Anthropic's API does."""
        choice = ex.body.get("tool_choice")
        return choice.get("name") if isinstance(choice, dict) and choice.get("type") == "tool" \
            else None

    def opening(self, ex: _Exchange) -> list[bytes]:
        message: dict[str, Any] = {
            "id": ex.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": ex.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": ex.prompt_tokens, "output_tokens": 1},
        }
        return [
            _sse({"type": "message_start", "message": message}, "message_start"),
            _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""} if not self._tool(ex) else
                    {"type": "tool_use", "id": "toolu_fault", "name": self._tool(ex),
                     "input": {}},
                },
                "content_block_start",
            ),
            _sse({"type": "ping"}, "ping"),
        ]

    def token(self, ex: _Exchange, text: str) -> bytes:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text} if not self._tool(ex) else
            {"type": "input_json_delta", "partial_json": text},
        }
        return _sse(delta, "content_block_delta")

    def closing(self, ex: _Exchange, n_tokens: int) -> list[bytes]:
        return [
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": n_tokens},
                },
                "message_delta",
            ),
            _sse({"type": "message_stop"}, "message_stop"),
        ]

    def complete(self, ex: _Exchange, content: str, n_tokens: int) -> dict[str, Any]:
        return {
            "id": ex.id,
            "type": "message",
            "role": "assistant",
            "model": ex.model,
            "content": [{"type": "text", "text": content}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": ex.prompt_tokens, "output_tokens": n_tokens},
        }

    def error(self, code: int, message: str) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(code, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}


# --------------------------------------------------------------- scenarios


async def _answer(
    ex: _Exchange, pieces: list[str], *, delay: float = 0.0, end: bool = True
) -> None:
    """A complete healthy answer, streamed or JSON."""
    if not ex.stream:
        await ex.out.send_json(200, ex.dialect.complete(ex, "".join(pieces), len(pieces)))
        return
    await ex.open_stream()
    await ex.frames(ex.dialect.opening(ex))
    for i, piece in enumerate(pieces):
        if i and delay:
            await asyncio.sleep(delay)
        await ex.out.chunk(ex.dialect.token(ex, piece))
    closing = ex.dialect.closing(ex, len(pieces))
    await ex.frames(closing if end else closing[:-1])
    await ex.out.end_chunked()


async def _partial(ex: _Exchange, default_tokens: int) -> None:
    """Stream: headers, opening and ``tokens`` deltas. JSON: headers and half the body."""
    pieces = ex.pieces(default_tokens)
    if ex.stream:
        await ex.open_stream()
        await ex.frames(ex.dialect.opening(ex))
        await ex.frames([ex.dialect.token(ex, p) for p in pieces])
    else:
        body = json.dumps(ex.dialect.complete(ex, "".join(pieces), len(pieces))).encode()
        await ex.out.head(
            200, {"content-type": "application/json", "content-length": str(len(body))}
        )
        await ex.out.write(body[: len(body) // 2])


async def sc_ok(ex: _Exchange) -> None:
    """200 answer of ``tokens`` (5) deltas, ``delay`` s apart, or ``text``; usage; [DONE]."""
    await _answer(ex, ex.pieces(), delay=ex.params.getfloat("delay", 0.0))


async def sc_status(ex: _Exchange) -> None:
    """``code`` (500) with an API-style JSON error (or raw ``body``); ``retry_after`` header."""
    code = ex.params.getint("code", 500)
    headers = {"retry-after": ex.params["retry_after"]} if "retry_after" in ex.params else {}
    if "body" in ex.params:
        await ex.out.send(code, ex.params["body"].encode(), "application/json", headers)
    else:
        await ex.error(code, f"fault-server: injected status {code}", headers)


async def sc_flaky(ex: _Exchange) -> None:
    """First ``fail`` (1) requests per scenario+params key act like ``status``, then ``ok``."""
    if ex.server._flaky_hit(ex.rec) < ex.params.getint("fail", 1):
        await sc_status(ex)
    else:
        await sc_ok(ex)


async def sc_hang_headers(ex: _Exchange) -> None:
    """Reads the request, never sends a byte."""
    await ex.out.hang()


async def sc_hang_mid_stream(ex: _Exchange) -> None:
    """Headers + opening + ``tokens`` (2) deltas, then silence (JSON: half a body)."""
    await _partial(ex, 2)
    await ex.out.hang()


async def sc_drop_mid_stream(ex: _Exchange) -> None:
    """Like hang_mid_stream, then the socket closes mid-body (``rst=1``: TCP RST)."""
    await _partial(ex, 2)
    await ex.out.drop(rst=ex.params.get("rst") == "1")


async def sc_malformed_json(ex: _Exchange) -> None:
    """JSON: 200 application/json with a truncated body. Stream: ``data: {not json`` then [DONE]."""
    if not ex.stream:
        await ex.out.send(200, b'{"id": "broken", "choices": [{"message": {"content": "trunc')
        return
    await ex.open_stream()
    await ex.frames([b"data: {not json\n\n", b"data: [DONE]\n\n"])
    await ex.out.end_chunked()


async def sc_malformed_sse(ex: _Exchange) -> None:
    """Stream with garbage lines: no ``data:`` prefix, invalid JSON ``data:``; JSON mode: ok."""
    if not ex.stream:
        await sc_ok(ex)
        return
    await ex.open_stream()
    await ex.frames(ex.dialect.opening(ex))
    await ex.frames(
        [
            b"this line has no data prefix\n\n",
            ex.dialect.token(ex, "tok0 "),
            b'data: {"choices": [{"delta": \n\n',
            b"\x00\xffgarbage\n\n",
            ex.dialect.token(ex, "tok1 "),
        ]
    )
    await ex.frames(ex.dialect.closing(ex, 2))
    await ex.out.end_chunked()


async def sc_no_done(ex: _Exchange) -> None:
    """Valid deltas and finish, then a clean chunked end without the end marker."""
    await _answer(ex, ex.pieces(), end=False)


async def sc_empty_stream(ex: _Exchange) -> None:
    """SSE headers then the end marker at once (``mode=close``: no data at all). JSON: empty body."""
    if not ex.stream:
        await ex.out.send(200, b"")
        return
    await ex.open_stream()
    if ex.params.get("mode", "done") != "close":
        await ex.out.chunk(ex.dialect.closing(ex, 0)[-1])
    await ex.out.end_chunked()


async def sc_huge_chunk(ex: _Exchange) -> None:
    """One content delta of ``size`` bytes (1 MiB)."""
    await _answer(ex, ["x" * ex.params.getint("size", 1 << 20)])


async def sc_drip(ex: _Exchange) -> None:
    """One delta every ``interval`` s (0.5) for ``tokens`` (5); JSON: body in ``tokens`` slices."""
    interval = ex.params.getfloat("interval", 0.5)
    pieces = ex.pieces()
    if ex.stream:
        await ex.open_stream()
        await ex.frames(ex.dialect.opening(ex))
        for piece in pieces:
            await asyncio.sleep(interval)
            await ex.out.chunk(ex.dialect.token(ex, piece))
        await ex.frames(ex.dialect.closing(ex, len(pieces)))
        await ex.out.end_chunked()
        return
    body = json.dumps(ex.dialect.complete(ex, "".join(pieces), len(pieces))).encode()
    await ex.out.head(200, {"content-type": "application/json", "content-length": str(len(body))})
    step = -(-len(body) // max(1, len(pieces)))
    for start in range(0, len(body), step):
        await asyncio.sleep(interval)
        await ex.out.write(body[start : start + step])


async def sc_wrong_content_type(ex: _Exchange) -> None:
    """200 text/html page, for stream and JSON requests alike."""
    await ex.out.send(
        200, b"<html><body><h1>Welcome to nginx!</h1></body></html>", "text/html; charset=utf-8"
    )


async def sc_redirect(ex: _Exchange) -> None:
    """``redirect_code`` (307) to the same endpoint of scenario ``to`` (ok); other params carried over."""
    params = {k: v for k, v in ex.params.items() if k not in ("to", "redirect_code")}
    to = ex.params.get("to", "ok")
    target = _scenario_url(ex.server.url, to, params) + _endpoint_tail(ex.rec.path)
    await ex.out.send(
        ex.params.getint("redirect_code", 307), b"", "text/plain", {"location": target}
    )


Handler = Callable[[_Exchange], Awaitable[None]]

async def sc_echo(ex: _Exchange) -> None:
    """Echoes what the client sent (method, path with query, every header) back, as a
    hostile or careless server would: ``mode=status`` (default) as the message of a
    ``code`` (401) error, ``mode=event`` as an in-stream error event after one token,
    ``mode=text`` as the answer itself, ``mode=model`` as the ``model`` field."""
    rec = ex.rec
    echoed = f"{rec.method} {rec.path} " + " ".join(f"{k}: {v}" for k, v in rec.headers.items())
    mode = ex.params.get("mode", "status")
    if mode == "status":
        await ex.error(ex.params.getint("code", 401), f"you sent: {echoed}")
    elif mode == "event":
        await ex.open_stream()
        await ex.frames(ex.dialect.opening(ex))
        await ex.out.chunk(ex.dialect.token(ex, "partial "))
        await ex.out.chunk(_sse(ex.dialect.error(401, f"you sent: {echoed}")))
        await ex.out.end_chunked()
    elif mode == "model":  # a model name is short: the credentials and the path only
        creds = [rec.headers.get(h, "") for h in ("authorization", "x-api-key", "x-org-token")]
        echoed = f"POST {rec.path} " + " ".join(c for c in creds if c)
        ex.body["model"] = echoed
        await _answer(ex, ["an ", "answer"])
    else:
        await _answer(ex, re.findall(r"\s*\S+\s*", echoed))


async def sc_sequence(ex: _Exchange) -> None:
    """The n-th request to this base URL gets the n-th of ``texts`` (a JSON list; the last
    repeats): an answer that breaks a schema first, then one that keeps it."""
    texts = json.loads(ex.params.get("texts", '[""]')) or [""]
    text = str(texts[min(ex.server._flaky_hit(ex.rec), len(texts) - 1)])
    if deep := ex.params.getint("deep", 0):  # JSON nested ``deep`` levels (too long a URL)
        text = "[" * deep + "]" * deep
    await _answer(ex, re.findall(r"\s*\S+\s*", text) or [text])


async def sc_prompt(ex: _Exchange) -> None:
    """Answers with the last user message as written, after ``delay`` s times the length
    of the message mod 3 (so answers finish out of order); a message holding ``FAIL``
    gets HTTP 400 (not retryable), one holding ``SLOW`` waits ``slow`` s (10) first."""
    msgs = [m for m in ex.body.get("messages", []) if isinstance(m, dict)
            and m.get("role") == "user"]
    text = str(msgs[-1].get("content", "")) if msgs else ""
    if "FAIL" in text:
        await ex.error(400, "this row is refused")
        return
    if "SLOW" in text:
        await asyncio.sleep(ex.params.getfloat("slow", 10.0))
    await asyncio.sleep(ex.params.getfloat("delay", 0.0) * (len(text) % 3))
    await _answer(ex, re.findall(r"\s*\S+\s*", text) or [text])


async def sc_steps(ex: _Exchange) -> None:
    """The n-th request to this base URL does the n-th of ``steps`` (a JSON list; the last
    repeats): a string is answered as text, ``"<hang>"`` sends nothing at all (as
    ``hang_headers``), ``"<drop>"`` sends two deltas and closes the socket (as
    ``drop_mid_stream``). For a server that answers a schema
    request badly and then hangs or drops on the retry."""
    steps = json.loads(ex.params.get("steps", '[""]')) or [""]
    step = str(steps[min(ex.server._flaky_hit(ex.rec), len(steps) - 1)])
    if step == "<hang>":
        await ex.out.hang()
    elif step == "<drop>":
        await _partial(ex, 2)
        await ex.out.drop()
    else:
        await _answer(ex, re.findall(r"\s*\S+\s*", step) or [step])


SCENARIOS: dict[str, Handler] = {
    "echo": sc_echo,
    "prompt": sc_prompt,
    "sequence": sc_sequence,
    "ok": sc_ok,
    "health_status": sc_ok,  # same as ok; use with health=<code>|hang
    "status": sc_status,
    "flaky": sc_flaky,
    "hang_headers": sc_hang_headers,
    "hang_mid_stream": sc_hang_mid_stream,
    "drop_mid_stream": sc_drop_mid_stream,
    "malformed_json": sc_malformed_json,
    "malformed_sse": sc_malformed_sse,
    "no_done": sc_no_done,
    "empty_stream": sc_empty_stream,
    "huge_chunk": sc_huge_chunk,
    "drip": sc_drip,
    "wrong_content_type": sc_wrong_content_type,
    "redirect": sc_redirect,
    "steps": sc_steps,
}

_DIALECTS: dict[str, _Dialect] = {"chat/completions": _OpenAI(), "messages": _Anthropic()}


def _scenario_url(root: str, scenario: str, params: Mapping[str, object]) -> str:
    encoded = ",".join(f"{quote(k, safe='')}={quote(str(v), safe='')}" for k, v in params.items())
    return f"{root}/s/{scenario}/{encoded or '_'}"


def _endpoint_tail(path: str) -> str:
    """``/s/ok/_/v1/v1/chat/completions`` -> ``/v1/chat/completions``."""
    rest = _split_path(path)[2]
    return "/health" if rest == "health" else f"/v1/{rest}"


def _split_path(path: str) -> tuple[str | None, Params, str]:
    """Path -> (scenario, params, endpoint without leading ``v1/`` segments)."""
    parts = path.strip("/").split("/")
    if len(parts) < 2 or parts[0] != "s":
        return None, Params(), path.strip("/")
    scenario, rest, params = parts[1], parts[2:], Params()
    if rest and (rest[0] == "_" or "=" in rest[0]):
        for item in rest.pop(0).split(","):
            key, sep, value = item.partition("=")
            if sep:
                params[unquote(key)] = unquote(value)
    while rest and rest[0] == "v1":
        rest.pop(0)
    return scenario, params, "/".join(rest)


# ------------------------------------------------------------------ server


class FaultServer(_HttpServer):
    """Fake OpenAI/Anthropic-compatible server; the URL path picks the fault.

    ``base_url(scenario, **params)`` gives a per-provider base URL; clients
    append ``/v1/chat/completions``, ``/v1/messages``, ``/v1/models`` or
    ``/health``. Params valid on every scenario:

    - ``delay_headers``: seconds to wait before the status line (chat/messages);
    - ``health``: ``/health`` and ``/v1/models`` answer this status code
      (JSON ``{"status": "unhealthy"}``), or never answer if ``hang``;
    - ``loaded=0``: health says ``model_loaded: false``;
    - ``model``: model name reported by health, models and (if the request has
      none) answers;
    - ``max_model_len``: ``/v1/models`` reports it (as vLLM does);
    - ``n_ctx``: ``/props`` answers ``default_generation_settings.n_ctx`` (llama-server).
    """

    def __init__(self, *, cap: float = DEFAULT_CAP) -> None:
        super().__init__(cap=cap)
        self._flaky: dict[tuple[str, str], int] = {}

    def base_url(self, scenario: str, **params: object) -> str:
        """``http://127.0.0.1:PORT/s/<scenario>/<k=v,...|_>`` (no trailing slash)."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {sorted(SCENARIOS)}")
        return _scenario_url(self.url, scenario, params)

    def reset(self) -> None:
        """Forget recorded requests and ``flaky`` counters."""
        super().reset()
        with self._lock:
            self._flaky.clear()

    def _flaky_hit(self, rec: RecordedRequest) -> int:
        """Return how many earlier requests hit this scenario+params key, and count this one."""
        key = (rec.scenario or "", json.dumps(rec.params, sort_keys=True))
        with self._lock:
            seen = self._flaky.get(key, 0)
            self._flaky[key] = seen + 1
            return seen

    def _split_target(self, path: str) -> tuple[str | None, Params]:
        scenario, params, _ = _split_path(path)
        return scenario, params

    async def _dispatch(self, out: Responder, rec: RecordedRequest, params: Params) -> None:
        endpoint = _split_path(rec.path)[2]
        handler = SCENARIOS.get(rec.scenario or "")
        if handler is None:
            await out.send_json(
                404, {"error": {"message": f"unknown scenario in {rec.path}", "type": "not_found"}}
            )
        elif endpoint == "health" and rec.method == "GET":
            await self._health(
                out,
                params,
                {
                    "status": "healthy",
                    "model_loaded": params.get("loaded") != "0",
                    "model_name": params.get("model", MODEL),
                },
            )
        elif endpoint == "models" and rec.method == "GET":
            model = {
                "id": params.get("model", MODEL),
                "object": "model",
                "created": 0,
                "owned_by": "fault-server",
            }
            if "max_model_len" in params:
                model["max_model_len"] = params.getint("max_model_len", 0)
            await self._health(out, params, {"object": "list", "data": [model]})
        elif endpoint == "props" and rec.method == "GET" and "n_ctx" in params:
            await out.send_json(200, {"default_generation_settings": {
                "n_ctx": params.getint("n_ctx", 0)}, "total_slots": 1})
        elif endpoint in _DIALECTS and rec.method == "POST":
            await asyncio.sleep(params.getfloat("delay_headers", 0.0))
            await handler(_Exchange(out, rec, params, _DIALECTS[endpoint], self))
        else:
            await out.send_json(
                404,
                {"error": {"message": f"no route {rec.method} {rec.path}", "type": "not_found"}},
            )

    async def _health(self, out: Responder, params: Params, healthy: dict[str, Any]) -> None:
        health = params.get("health", "200")
        if health == "hang":
            await out.hang()
        elif health == "200":
            await out.send_json(200, healthy)
        else:
            await out.send_json(int(health), {"status": "unhealthy", "model_loaded": False})
