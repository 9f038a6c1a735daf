"""A loopback HTTP server that answers chat requests with exactly the bytes a test gives.

For wire fuzzing: the body is written as the given reads (one HTTP chunk each, flushed
apart), so a test controls how the bytes are split on the wire. Health and model-list
endpoints of every dialect (``/health``, ``/v1/models``, ``/api/tags``, ``/api/ps``)
answer 200 so the router sees a healthy provider.

    with ScriptServer() as srv:
        srv.script([b"data: {...}\\n\\n", b"data: [DONE]\\n\\n"])
        # POST /v1/chat/completions, /v1/messages or /api/chat -> those bytes
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from .faultserver import Responder, _LoopServer, _read_request


@dataclass
class Script:
    reads: list[bytes] = field(default_factory=list)
    content_type: str = "text/event-stream"
    status: int = 200
    pause: float = 0.0
    """Seconds between two reads (0: as fast as the socket takes them)."""
    endless: bytes | None = None
    """After the reads, send this over and over until the client leaves."""


class ScriptServer(_LoopServer):
    def __init__(self) -> None:
        super().__init__(cap=30.0)
        self.current = Script()
        self.chats = 0
        self.connections = 0
        self.sent = 0
        self.drop_reused = False
        """Hang up, without a byte of answer, on the second chat request of a kept-alive
        connection (what a server that closed an idle connection looks like)."""
        self.dropped = 0
        self.last_post: tuple[str, dict[str, object]] | None = None
        """The path and JSON body of the last POST (what the adapter asked)."""
        self.queue: list[Script] = []
        """Scripts for the next chat requests, one each in order (then ``current``)."""
        self.posts: list[tuple[str, dict[str, object]]] = []
        """Every POST's path and JSON body, in order."""

    def script(self, reads: list[bytes], content_type: str = "text/event-stream",
               status: int = 200, pause: float = 0.0, endless: bytes | None = None) -> None:
        self.current = Script(list(reads), content_type, status, pause, endless)

    def turns(self, *reads: list[bytes], content_type: str = "text/event-stream") -> None:
        """One script per coming chat request (a multi-turn exchange: tool calls)."""
        self.queue = [Script(list(r), content_type) for r in reads]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        chats_here = 0
        while True:  # keep-alive: one connection may carry many requests
            req = await _read_request(reader)
            if req is None:
                return
            method, target, _headers, raw = req
            out = Responder(reader, writer, self.cap)
            path = target.split("?")[0]
            if method == "GET":
                body: object = {"status": "ok"}
                if path.endswith("/models"):
                    body = {"object": "list", "data": [{"id": "script-model"}]}
                elif path.endswith("/api/tags"):
                    body = {"models": [{"name": "script-model"}]}
                elif path.endswith("/api/ps"):
                    body = {"models": []}
                await out.send_json(200, body)
                continue
            try:
                self.last_post = (path, json.loads(raw or b"{}"))
            except ValueError:
                self.last_post = (path, {})
            self.posts.append(self.last_post)
            chats_here += 1
            if self.drop_reused and chats_here > 1:
                self.dropped += 1
                writer.close()
                return
            self.chats += 1
            sc = self.queue.pop(0) if self.queue else self.current
            await out.start_chunked(sc.status, sc.content_type)
            for i, data in enumerate(sc.reads):
                if i and sc.pause:
                    await asyncio.sleep(sc.pause)
                await out.chunk(data)
                self.sent += len(data)
            if sc.endless is not None:
                while True:
                    await out.chunk(sc.endless)
                    self.sent += len(sc.endless)
            await out.end_chunked()


def sse(obj: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(obj) + "\n\n").encode()
