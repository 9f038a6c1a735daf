"""Managed local servers: start on first need, adopt one already running, wait for health,
stop on request, on idle and at exit. Never an orphan, never a second copy.

- Each server runs in its own process group (``start_new_session``) and, on Linux, gets
  SIGTERM if the kernel dies (``PR_SET_PDEATHSIG``); ``stop`` signals the group by the PID
  we started, then SIGKILL after a grace period.
- One asyncio lock per endpoint: concurrent requests wait for the same start.
- A healthy server already listening on the port is adopted and never stopped by us.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from timmy_magic.config import LaunchConfig
from timmy_magic.model.errors import TimmyError
from timmy_magic.privacy.redact import get_logger
from timmy_magic.servers.embedded import (
    NotInstalled,
    check_installed,
    describe,
    missing_program,
    resolve_command,
)

log = get_logger("timmy_magic.servers.launch")
LaunchState = Literal["stopped", "stopping", "starting", "running", "adopted", "failed",
                      "not_installed"]
_ALL: weakref.WeakSet[Launcher] = weakref.WeakSet()


class LaunchError(TimmyError):
    """A managed server could not be started (its command, its port, its health)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG
        except OSError:
            pass


@dataclass(eq=False)
class Launcher:
    """The managed server behind one endpoint URL."""

    provider: str
    url: str
    cfg: LaunchConfig
    state: LaunchState = "stopped"
    message: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    last_used: float = field(default_factory=time.monotonic)
    held: bool = False
    """Stopped on purpose: the cascade leaves it alone until it is started again."""
    runtime: str = ""
    """What the last start ran (``llama-server (compiled)``, ``llama.cpp prebuilt
    (xllamacpp)``, a program's name), for the notes."""
    _lock: asyncio.Lock | None = None

    def __post_init__(self) -> None:
        hint = check_installed(self.cfg.command)
        if hint:
            self.state, self.message = "not_installed", hint
        _ALL.add(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def crashed(self) -> str | None:
        """Why a server we started died on its own, or None."""
        if self.state == "running" and self.proc is not None and self.proc.poll() is not None:
            return (f"server exited unexpectedly (code {self.proc.returncode}); "
                    f"%llm start {self.provider} (or a request pinned to it) restarts it")
        return None

    async def ensure(self, healthy: Callable[[], Awaitable[bool]],
                     progress: Callable[[str], None] = lambda _m: None) -> None:
        """Make sure a healthy server answers at ``url``: adopt, or start and wait."""
        self.last_used = time.monotonic()
        self.held = False
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if await healthy():  # a server answers there: adopted, installed here or not
                if not self.running() and self.state != "adopted":
                    self.state, self.message = "adopted", "already running: adopted"
                elif self.running():
                    self.state = "running"
                return
            if self.state == "not_installed":
                raise LaunchError(self.message)
            if self.running():  # started but not (yet or any more) healthy
                await self._wait_ready(healthy, progress)
                return
            await self._start(healthy, progress)

    async def _start(self, healthy: Callable[[], Awaitable[bool]],
                     progress: Callable[[str], None]) -> None:
        try:
            argv = resolve_command(self.cfg.command, self.url)
        except NotInstalled as exc:
            self.state, self.message = "not_installed", exc.hint
            raise LaunchError(exc.hint) from None
        except KeyError as exc:
            self.state, self.message = "failed", str(exc.args[0])
            raise LaunchError(self.message) from None
        await self._wait_port_free(progress)
        fd, name = tempfile.mkstemp(prefix=f"timmy-{self.provider}-", suffix=".log")
        self.log_path = Path(name)
        self.runtime = describe(argv)
        progress(f"starting {self.provider}: {self.runtime}, log {name}")
        env = {**os.environ, **self.cfg.env}
        try:
            self.proc = subprocess.Popen(argv, stdout=fd, stderr=subprocess.STDOUT,  # noqa: ASYNC220
                                         stdin=subprocess.DEVNULL, cwd=self.cfg.cwd, env=env,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        except FileNotFoundError:  # gone from PATH since the config was read
            self.state = "not_installed"
            self.message = missing_program(argv[0]) or f"{argv[0]} is not installed here"
            raise LaunchError(self.message) from None
        except OSError as exc:
            self.state, self.message = "failed", f"cannot start {argv[0]}: {exc.strerror}"
            raise LaunchError(self.message) from None
        finally:
            os.close(fd)
        self.state, self.message = "starting", f"pid {self.proc.pid}"
        log.info("started %s pid %s: %s", self.provider, self.proc.pid, " ".join(argv))
        try:
            await self._wait_ready(healthy, progress)
        except BaseException:  # interrupted, or never ready: nothing half-started remains
            if self.state == "starting":
                self.stop(wait=False)
                self.message = "start interrupted: the server was stopped"
            raise

    async def _wait_port_free(self, progress: Callable[[str], None]) -> None:
        """Wait until nothing listens on our port any more (bounded): a server that is
        going, ours from a stop or another kernel's, holds it for a moment, and a start in
        that moment would fail to bind and read as a crash."""
        host, port = _host_port(self.url)
        deadline = time.monotonic() + min(self.cfg.ready_timeout, PORT_WAIT_S)
        noted = False
        while await _listening(host, port):
            if time.monotonic() >= deadline:
                self.state = "failed"
                self.message = (f"port {port} is in use by something that is not a healthy "
                                f"server: stop it, or give {self.provider} another port in "
                                f"its base_url")
                raise LaunchError(self.message)
            if not noted:
                progress(f"port {port} is still in use (a server going away?): waiting")
                noted = True
            await asyncio.sleep(0.2)

    async def _wait_ready(self, healthy: Callable[[], Awaitable[bool]],
                          progress: Callable[[str], None]) -> None:
        t0 = time.monotonic()
        next_note = t0 + 2
        while time.monotonic() - t0 < self.cfg.ready_timeout:
            if not self.running():
                code = self.proc.returncode if self.proc else None
                self.state = "failed"
                self.message = f"exited with code {code} during start-up: {self.log_tail(3)}"
                raise LaunchError(self.message)
            if await healthy():
                self.last_used = time.monotonic()  # idle time counts from readiness
                ready = f"ready in {time.monotonic() - t0:.1f}s" + \
                    (f" ({self.runtime})" if self.runtime else "")
                self.state, self.message = "running", f"pid {self.pid}, {ready}"
                progress(f"{self.provider} {ready}")
                return
            if time.monotonic() >= next_note:
                progress(f"waiting for {self.provider} ({time.monotonic() - t0:.0f}s)")
                next_note += 2
            await asyncio.sleep(0.2)
        self.stop(wait=False)
        self.state = "failed"
        self.message = f"not healthy within ready_timeout={self.cfg.ready_timeout:g}s"
        raise LaunchError(self.message)

    def idle_for(self) -> float:
        return time.monotonic() - self.last_used

    def stop(self, grace: float = 5.0, wait: bool = True) -> bool:
        """Stop the server we started (never an adopted one). True if something stopped.
        ``wait=False`` (on an event loop): send SIGTERM and return at once; a daemon
        thread waits ``grace`` seconds and kills what is left."""
        proc = self.proc
        if proc is None:
            if self.state == "adopted":
                self.state, self.message = "stopped", "adopted server left running"
            return False
        if proc.poll() is None:
            # stopping, not crashed: from here the exit is ours, whatever a health report
            # reads while the process goes (it is reaped in another thread)
            self.state, self.message = "stopping", "stopping"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            if wait:
                _reap(proc, grace)
            else:
                threading.Thread(target=_reap, args=(proc, grace), daemon=True,
                                 name=f"timmy-stop-{self.provider}").start()
        if self.proc is not proc:  # started again while this one was reaped: theirs now
            return True
        self.proc = None
        code = proc.returncode
        self.state, self.message = "stopped", "stopped" + (f" (exit {code})" if code is not None
                                                            else "")
        log.info("stopped %s pid %s", self.provider, proc.pid)
        return True

    async def astop(self, grace: float = 5.0,
                    only_if: Callable[[], bool] | None = None) -> bool:
        """``stop`` from the loop: under the lock ``ensure`` holds (a request that needs the
        server waits until it is gone, then starts a new one, instead of starting it while
        this stop still reaps the old one), the waiting done in a worker thread.
        ``only_if`` is checked again once the lock is held (the idle reaper: a request may
        have started using the server while the stop waited for the lock)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if only_if is not None and not only_if():
                return False
            return await asyncio.to_thread(self.stop, grace)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])


PORT_WAIT_S = 15.0
"""How long a start waits for its port to be released before it says who holds it."""


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "127.0.0.1",
            parts.port or (443 if parts.scheme == "https" else 80))


async def _listening(host: str, port: int) -> bool:
    """Something accepts connections at host:port (a connect that hangs counts: a full
    backlog is still a listener)."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
    except TimeoutError:
        return True
    except OSError:  # refused, unreachable: nothing we would collide with
        return False
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 0.5)
    return True


def _reap(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Wait for a process sent SIGTERM; SIGKILL its group after ``grace`` seconds."""
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)


def stop_all() -> None:
    for launcher in list(_ALL):
        with contextlib.suppress(Exception):
            launcher.stop()


atexit.register(stop_all)
