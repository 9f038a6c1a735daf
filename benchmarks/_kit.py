"""Shared helpers of the performance scripts (issue 8): the fast server in its own
process, a router configured in code, percentiles, CPU clocks, and plain tables.

Not a benchmark itself. Every script imports it as ``_kit`` (the scripts are run as
``python benchmarks/<name>.py``, which puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from anywhere: timmy_magic and tests.support import
    sys.path.insert(1, str(REPO))

FAST_CASCADE = ("cascade:\n  timeout_seconds: 60\n  connect_timeout_seconds: 3\n"
                "  first_token_timeout_seconds: 30\n  idle_timeout_seconds: 30\n"
                "  health_timeout_seconds: {health}\n  health_interval_seconds: 600\n"
                "  max_retries_per_provider: 0\n")


# ------------------------------------------------------------------ the fast server


@dataclass
class FastServer:
    proc: subprocess.Popen[str]
    port: int
    hang_ports: tuple[int, ...]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user + system)."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def fast_server(hang: int = 0) -> Iterator[FastServer]:
    """Start benchmarks/fastserver.py in its own process; stop it (by its PID) after."""
    cmd = [sys.executable, str(HERE / "fastserver.py"), "--hang", str(hang)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(_expect(proc, "PORT")[0])
        hangs = tuple(int(p) for p in _expect(proc, "HANG")[0].split(",")) if hang else ()
        yield FastServer(proc, port, hangs)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _expect(proc: subprocess.Popen[str], tag: str) -> list[str]:
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != tag:
        raise RuntimeError(f"fast server said {line!r}, expected {tag}")
    return line[1:]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def router_yaml(providers: Sequence[dict[str, Any]], health_timeout: float = 2.0) -> str:
    """providers.yaml text: the bench cascade settings plus ``providers``."""
    import yaml

    return FAST_CASCADE.format(health=health_timeout) + yaml.safe_dump(
        {"providers": list(providers)}, sort_keys=False)


def make_router(providers: Sequence[dict[str, Any]], health_timeout: float = 2.0,
                **kw: Any) -> Any:
    from timmy_magic.config import parse_config
    from timmy_magic.routing.router import Router

    return Router(parse_config(router_yaml(providers, health_timeout), source="<bench>"),
                  **kw)


def provider(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai_compatible", "base_url": url + "/v1",
            "models": [{"name": kw.pop("model", "fast"), "default": True}], **kw}


# ------------------------------------------------------------------ numbers


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return pct(values, 50)


def cpu() -> float:
    """CPU seconds of this whole process (all threads: the router's loop thread too)."""
    return time.process_time()


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ output


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def machine() -> str:
    cpu_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu_name = next((ln.split(":", 1)[1].strip() for ln in f
                             if ln.startswith("model name")), cpu_name)
    except OSError:
        pass
    return (f"{cpu_name}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {loadavg()} (1/5/15 min)")


def header(title: str, command: str) -> None:
    print(f"== {title}")
    print(f"   command: {command}")
    print(f"   machine: {machine()}")
    print(f"   started: {time.strftime('%Y-%m-%d %H:%M:%S')}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(
        zip(r, widths, strict=True))) for r in cells]
    return "\n".join([line, rule, *body])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# ------------------------------------------------------------------ a backend with no I/O


class NullBackend:
    """Answers the fast server's 8 tokens from memory: the router's own cost, alone."""

    def __init__(self, cfg: Any, url: str, timeouts: Any) -> None:
        from fastserver import DEFAULT_TOKENS, words

        from timmy_magic.model.chat import Usage
        from timmy_magic.providers.base import Chunk

        self.url = url
        self._chunks = [Chunk(model="fast"), *(Chunk(text=w) for w in words(DEFAULT_TOKENS)),
                        Chunk(usage=Usage(5, DEFAULT_TOKENS))]

    async def stream(self, request: Any, model: str | None) -> Any:
        for c in self._chunks:
            yield c

    async def probe(self, timeout: float) -> Any:
        from timmy_magic.providers.base import Probe

        return Probe("healthy", 0.0, ("fast",))

    async def aclose(self) -> None:
        pass


def register_null_backend() -> str:
    """Register the ``bench_null`` provider type (as a plugin would); returns its name."""
    from timmy_magic.providers import registry as registry

    registry.register(registry.ProviderKind("bench_null", cloud=False,
                                            default_url="http://null.invalid",
                                            needs_key=False, factory="_kit:NullBackend"))
    return "bench_null"
