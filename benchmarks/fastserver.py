"""A tiny, fast OpenAI-compatible server for benchmarks, meant to run in its own process.

It answers at once (so a client's own overhead is what a benchmark sees), from bytes
built once per distinct request shape: raw asyncio, HTTP/1.1 keep-alive, no framework.

    python benchmarks/fastserver.py [--port 0] [--hang K]

prints ``PORT <n>`` (and ``HANG <p1,p2,...>`` with ``--hang``: K extra ports that accept
connections and never answer), then serves on 127.0.0.1 until its stdin closes (so it
never outlives the benchmark that started it).

Routes: ``GET /health`` -> ``{"status": "ok"}``; ``GET /stats`` -> ``{"connections": N}``
(TCP connections accepted so far: a client that reuses its connections opens few);
``GET /v1/models``; ``POST
/v1/chat/completions``, streaming (SSE, chunked, ``stream_options.include_usage``
honoured) or not, with usage. The model name sets the answer: ``fast`` (any name) is a
short fixed completion of 8 tokens; ``NAME:N`` has N tokens (fewer if ``max_tokens`` says
so); ``paced@R`` or ``paced@R:N`` streams its tokens at R tokens/s, one SSE event per
token (the first one at once). Everything else answers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from typing import Any, ClassVar

DEFAULT_TOKENS = 8
WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog",
         ".", " It", " was", " a", " bright", " cold", " day", " in", " April", ",",
         " and", " the", " clocks", " were", " striking", " thirteen", ".", "\n\n")
MODELS = json.dumps({"object": "list", "data": [
    {"id": "fast", "object": "model", "owned_by": "bench"}]}).encode()


def words(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


def http_head(status: str, ctype: str, length: int | None) -> bytes:
    framing = f"content-length: {length}" if length is not None else \
        "transfer-encoding: chunked"
    return (f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\n{framing}\r\n"
            "connection: keep-alive\r\n\r\n").encode()


def json_response(obj: Any, status: str = "200 OK") -> bytes:
    body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return http_head(status, "application/json", len(body)) + body


def completion(model: str, n: int, prompt_tokens: int) -> dict[str, Any]:
    return {"id": "chatcmpl-fast", "object": "chat.completion", "created": 1700000000,
            "model": model, "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "".join(words(n))}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                      "total_tokens": prompt_tokens + n}}


def _chunk(model: str, choices: list[Any], **extra: Any) -> bytes:
    obj = {"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 1700000000,
           "model": model, "choices": choices, **extra}
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_frames(model: str, n: int, prompt_tokens: int, usage: bool) -> list[bytes]:
    """The stream as HTTP chunks: role, one per token, finish, usage, [DONE], end."""
    frames = [_chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}])]
    frames += [_chunk(model, [{"index": 0, "delta": {"content": w}, "finish_reason": None}])
               for w in words(n)]
    frames.append(_chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if usage:
        frames.append(_chunk(model, [], usage={
            "prompt_tokens": prompt_tokens, "completion_tokens": n,
            "total_tokens": prompt_tokens + n}))
    done = b"data: [DONE]\n\n"
    frames.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return frames


SSE_HEAD = http_head("200 OK", "text/event-stream", None)


class Http(asyncio.Protocol):
    cache: ClassVar[dict[tuple[Any, ...], Any]] = {}
    connections: ClassVar[int] = 0

    def connection_made(self, transport: Any) -> None:
        Http.connections += 1
        self.t = transport
        self.buf = bytearray()
        self.busy: asyncio.Task[None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy is not None:
            self.busy.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.busy is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            length = 0
            for ln in lines[1:]:
                key, _, value = ln.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            method, target = lines[0].split(" ")[:2]
            self.handle(method, target.split("?")[0], body)

    def handle(self, method: str, path: str, body: bytes) -> None:
        if path == "/stats":
            self.t.write(json_response({"connections": Http.connections}))
        elif path.endswith("/health"):
            self.t.write(json_response({"status": "ok"}))
        elif path.endswith("/models"):
            self.t.write(json_response(MODELS))
        elif method == "POST" and path.endswith("/chat/completions"):
            self.chat(json.loads(body))
        else:
            self.t.write(json_response({"error": {"message": f"no route {path}"}},
                                       "404 Not Found"))

    def chat(self, req: dict[str, Any]) -> None:
        model = str(req.get("model") or "fast")
        n = int(model.partition(":")[2] or DEFAULT_TOKENS)
        cap = req.get("max_tokens") or req.get("max_completion_tokens")
        if cap:
            n = min(n, int(cap))
        prompt = sum(len(str(m.get("content", ""))) for m in req.get("messages", [])) // 4 + 1
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        key = (model, n, prompt, bool(req.get("stream")), usage)
        if not req.get("stream"):
            if key not in self.cache:
                self.cache[key] = json_response(completion(model, n, prompt))
            self.t.write(self.cache[key])
            return
        if key not in self.cache:
            self.cache[key] = sse_frames(model, n, prompt, usage)
        frames = self.cache[key]
        if model.startswith("paced@"):
            rate = float(model[6:].partition(":")[0])
            self.busy = asyncio.ensure_future(self.paced(frames, rate))
        else:
            self.t.write(SSE_HEAD + b"".join(frames))

    async def paced(self, frames: list[bytes], rate: float) -> None:
        loop = asyncio.get_running_loop()
        self.t.write(SSE_HEAD + frames[0] + frames[1])
        start = loop.time()
        for i, frame in enumerate(frames[2:], start=1):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.t.write(frame)
        self.busy = None
        if self.buf:
            self.data_received(b"")


class Hang(asyncio.Protocol):
    """Accepts a connection and never answers (a server that hangs)."""

    def connection_made(self, transport: Any) -> None:
        self.t = transport


async def serve(port: int, hang: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", port, backlog=1024)
    hangs = [await loop.create_server(Hang, "127.0.0.1", 0, backlog=1024)
             for _ in range(hang)]
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    if hangs:
        ports = ",".join(str(h.sockets[0].getsockname()[1]) for h in hangs)
        print(f"HANG {ports}", flush=True)
    closed: asyncio.Future[None] = loop.create_future()

    def stdin_readable() -> None:
        if not os.read(sys.stdin.fileno(), 4096) and not closed.done():
            closed.set_result(None)  # end of file: the parent is gone

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    await closed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--hang", type=int, default=0, help="extra ports that never answer")
    args = ap.parse_args()
    socket.setdefaulttimeout(None)
    asyncio.run(serve(args.port, args.hang))


if __name__ == "__main__":
    main()
