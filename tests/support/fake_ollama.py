"""A stdlib-only fake Ollama server following Ollama's documented HTTP API.

Endpoints (``docs/api.md`` of ollama/ollama):

- ``GET /`` and ``HEAD /``: ``Ollama is running`` (text/plain);
- ``GET /api/version``: ``{"version": "..."}``;
- ``GET /api/tags``: ``{"models": [{name, model, modified_at, size, digest, details}]}``;
- ``GET /api/ps``: loaded models, each also with ``expires_at`` and ``size_vram``;
- ``POST /api/show``: ``model_info`` (``llama.context_length``), ``parameters``;
- ``POST /api/chat``: with ``stream`` absent or true, ``application/x-ndjson``
  lines ``{"model","created_at","message":{"role":"assistant","content":...},"done":false}``
  then a final line with ``done: true``, ``done_reason: "stop"`` and
  ``total_duration``, ``load_duration``, ``prompt_eval_count``,
  ``prompt_eval_duration``, ``eval_count``, ``eval_duration`` (nanoseconds);
  with ``"stream": false`` one JSON object holding the whole message and the
  stats. An empty ``messages`` list loads the model (``done_reason: "load"``).
  Unknown model: 404 ``{"error": "model \\"x\\" not found, try pulling it first"}``.

A name without a tag means ``:latest``, as in Ollama. Usage::

    with FakeOllama(models=["llama3.2:latest"], tokens=3) as ollama:
        ollama.fail_next(500)             # the next POST /api/chat fails
        client_base_url = ollama.url      # http://127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from .faultserver import DEFAULT_CAP, Params, RecordedRequest, Responder, _HttpServer

LOAD_DURATION_NS = 1_234_567


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _full_name(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


class FakeOllama(_HttpServer):
    """Fake Ollama. Attributes ``models``, ``tokens``, ``token_delay`` and
    ``text`` may be changed while it runs; requests are recorded like
    ``FaultServer`` (``requests``, ``count(path_suffix=...)``, ``reset()``)."""

    def __init__(
        self,
        models: Sequence[str] = ("llama3.2:latest",),
        *,
        tokens: int = 5,
        token_delay: float = 0.0,
        text: str | None = None,
        version: str = "0.6.5",
        cap: float = DEFAULT_CAP,
    ) -> None:
        super().__init__(cap=cap)
        self.models = list(models)
        self.tokens = tokens
        self.token_delay = token_delay
        self.text = text
        self.version = version
        self.context_lengths: dict[str, int] = {}
        """``/api/show`` ``model_info`` context length by full model name (else 131072)."""
        self.num_ctx: dict[str, int] = {}
        """``/api/show`` ``num_ctx`` parameter by full model name (else none)."""
        self.capabilities: dict[str, list[str]] = {}
        """``/api/show`` ``capabilities`` by full model name (else ``["completion"]``)."""
        self._faults: list[tuple[str, int | None, str | None]] = []  # (path, code|None=hang, error)
        self._faults_lock = threading.Lock()

    def fail_next(
        self, code: int = 500, *, times: int = 1, error: str | None = None, path: str = "/api/chat"
    ) -> None:
        """The next ``times`` requests to ``path`` answer ``code`` with ``{"error": error}``."""
        with self._faults_lock:
            self._faults.extend([(path, code, error)] * times)

    def hang_next(self, *, times: int = 1, path: str = "/api/chat") -> None:
        """The next ``times`` requests to ``path`` never get an answer (until stop()/cap)."""
        with self._faults_lock:
            self._faults.extend([(path, None, None)] * times)

    def reset(self) -> None:
        """Forget recorded requests and pending faults."""
        super().reset()
        with self._faults_lock:
            self._faults.clear()

    def _take_fault(self, path: str) -> tuple[str, int | None, str | None] | None:
        with self._faults_lock:
            for i, fault in enumerate(self._faults):
                if fault[0] == path:
                    return self._faults.pop(i)
        return None

    # ------------------------------------------------------------ payloads

    def _model_entry(self, name: str) -> dict[str, Any]:
        full = _full_name(name)
        return {
            "name": full,
            "model": full,
            "modified_at": "2025-01-01T00:00:00.000000000Z",
            "size": 2_019_393_189,
            "digest": hashlib.sha256(full.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
            },
        }

    def _pieces(self) -> list[str]:
        if self.text is not None:
            return re.findall(r"\s*\S+\s*", self.text) or [self.text]
        return [f"tok{i} " for i in range(self.tokens)]

    # ------------------------------------------------------------ routing

    async def _dispatch(self, out: Responder, rec: RecordedRequest, params: Params) -> None:
        fault = self._take_fault(rec.path)
        if fault is not None:
            _, code, error = fault
            if code is None:
                await out.hang()
            else:
                await out.send_json(
                    code, {"error": error or f"fake-ollama: injected status {code}"}
                )
            return
        route = (rec.method, rec.path)
        if route == ("HEAD", "/"):
            await out.head(
                200, {"content-type": "text/plain; charset=utf-8", "content-length": "17"}
            )
        elif route == ("GET", "/"):
            await out.send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif route == ("GET", "/api/version"):
            await out.send_json(200, {"version": self.version})
        elif route == ("GET", "/api/tags"):
            await out.send_json(200, {"models": [self._model_entry(m) for m in self.models]})
        elif route == ("GET", "/api/ps"):
            expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
            loaded = [
                {**self._model_entry(m), "expires_at": expires, "size_vram": 2_019_393_189}
                for m in self.models
            ]
            await out.send_json(200, {"models": loaded})
        elif route == ("POST", "/api/chat"):
            await self._chat(out, rec)
        elif route == ("POST", "/api/show"):
            await self._show(out, rec)
        else:
            await out.send(404, b"404 page not found", "text/plain")

    async def _show(self, out: Responder, rec: RecordedRequest) -> None:
        """``POST /api/show``: ``model_info["llama.context_length"]`` (``context_lengths``,
        else 131072) and, if ``num_ctx`` names the model, ``num_ctx`` in ``parameters``."""
        body = rec.json if isinstance(rec.json, dict) else {}
        name = _full_name(str(body.get("model") or body.get("name") or ""))
        if name not in {_full_name(m) for m in self.models}:
            await out.send_json(404, {"error": f"model '{name}' not found"})
            return
        params = 'stop                           "<|eot_id|>"'
        if name in self.num_ctx:
            params += f"\nnum_ctx                        {self.num_ctx[name]}"
        await out.send_json(200, {
            "modelfile": f"FROM {name}\n",
            "parameters": params,
            "template": "{{ .Prompt }}",
            "details": self._model_entry(name)["details"],
            "model_info": {"general.architecture": "llama",
                           "general.parameter_count": 3212749888,
                           "llama.context_length": self.context_lengths.get(name, 131072),
                           "llama.embedding_length": 3072},
            "capabilities": self.capabilities.get(name, ["completion"]),
            "modified_at": "2025-01-01T00:00:00.000000000Z",
        })

    async def _chat(self, out: Responder, rec: RecordedRequest) -> None:
        body = rec.json
        if not isinstance(body, dict):
            await out.send_json(400, {"error": "invalid request body"})
            return
        model = body.get("model")
        if not model:
            await out.send_json(400, {"error": "model is required"})
            return
        if _full_name(str(model)) not in {_full_name(m) for m in self.models}:
            await out.send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        messages = body.get("messages") or []
        if not messages:  # load request
            await out.send_json(
                200,
                {
                    "model": model,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": "load",
                    "done": True,
                },
            )
            return

        started = time.monotonic_ns()
        pieces = self._pieces()
        prompt_count = max(
            1, sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
        )

        def final(content: str, eval_ns: int) -> dict[str, Any]:
            return {
                "model": model,
                "created_at": _now(),
                "message": {"role": "assistant", "content": content},
                "done_reason": "stop",
                "done": True,
                "total_duration": time.monotonic_ns() - started + LOAD_DURATION_NS,
                "load_duration": LOAD_DURATION_NS,
                "prompt_eval_count": prompt_count,
                "prompt_eval_duration": 1_000_000 * prompt_count,
                "eval_count": len(pieces),
                "eval_duration": max(eval_ns, 1),
            }

        if body.get("stream", True) is False:
            await asyncio.sleep(self.token_delay * len(pieces))
            await out.send_json(200, final("".join(pieces), time.monotonic_ns() - started))
            return
        await out.start_chunked(200, "application/x-ndjson")
        for piece in pieces:
            await asyncio.sleep(self.token_delay)
            line = {
                "model": model,
                "created_at": _now(),
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
            await out.chunk(json.dumps(line).encode() + b"\n")
        await out.chunk(json.dumps(final("", time.monotonic_ns() - started)).encode() + b"\n")
        await out.end_chunked()
