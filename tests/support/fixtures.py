"""pytest plugin: real local LLM servers as fixtures.

Register with ``pytest_plugins = ["tests.support.fixtures"]`` in the top-level
conftest. Session fixtures start each server once and stop it at the end of the
session; tests that kill or restart a server must use ``server_factory`` so the
shared servers stay healthy. A backend that is not installed makes the fixture
raise ``BackendMissing`` (an error, not a skip): run ``scripts/setup_backends.sh``.
"""

from __future__ import annotations

import atexit
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from .servers import (
    ManagedServer,
    ensure_gemma_gguf,
    ensure_tiny_model,
    start_llama_server,
    start_mlx_lm,
    start_server,
    start_vllm_mlx,
)

__all__ = [
    "ServerFactory",
    "gemma_gguf",
    "llama_server",
    "mlx_lm_server",
    "server_factory",
    "server_log_dir",
    "tiny_model_dir",
    "vllm_mlx_server",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: talks to real local LLM servers (see tests/support)"
    )


@pytest.fixture(scope="session")
def server_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory that holds the log file of every server the session starts."""
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """``.backends/models/tiny-llama`` (random-weight llama for the MLX servers)."""
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """``.backends/models/gemma-3-270m-q4_k_m.gguf`` (real Gemma 3 270M base)."""
    return ensure_gemma_gguf()


@pytest.fixture(scope="session")
def vllm_mlx_server(tiny_model_dir: Path, server_log_dir: Path) -> Iterator[ManagedServer]:
    """Shared vllm-mlx on the tiny model; request model name ``server.model`` ("tiny")."""
    srv = start_vllm_mlx(tiny_model_dir, log_dir=server_log_dir)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def mlx_lm_server(tiny_model_dir: Path, server_log_dir: Path) -> Iterator[ManagedServer]:
    """Shared mlx_lm.server on the tiny model; model name ``"default_model"``."""
    srv = start_mlx_lm(tiny_model_dir, log_dir=server_log_dir)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def llama_server(gemma_gguf: Path, server_log_dir: Path) -> Iterator[ManagedServer]:
    """Shared llama-server on the Gemma GGUF; model name ``server.model``."""
    srv = start_llama_server(gemma_gguf, log_dir=server_log_dir)
    try:
        yield srv
    finally:
        srv.stop()


class ServerFactory:
    """Starts private servers for one test and stops them all at teardown.

    ``factory("vllm-mlx" | "mlx-lm" | "llama-server", **kwargs)`` takes the
    keyword arguments of the matching ``start_*`` function in
    ``tests.support.servers`` (``port``, ``extra_args``, ``wait``, ...).
    """

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[ManagedServer] = []

    def __call__(self, kind: str, **kwargs: Any) -> ManagedServer:
        kwargs.setdefault("log_dir", self.log_dir)
        srv = start_server(kind, **kwargs)
        self.started.append(srv)
        return srv

    def vllm_mlx(self, **kwargs: Any) -> ManagedServer:
        return self("vllm-mlx", **kwargs)

    def mlx_lm(self, **kwargs: Any) -> ManagedServer:
        return self("mlx-lm", **kwargs)

    def llama_server(self, **kwargs: Any) -> ManagedServer:
        return self("llama-server", **kwargs)

    def stop_all(self) -> None:
        errors = []
        for srv in reversed(self.started):
            try:
                srv.stop()
            except (OSError, subprocess.SubprocessError) as e:  # keep stopping the others
                errors.append(e)
        self.started.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Function-scoped: start servers a test may kill/restart; all stopped after."""
    factory = ServerFactory(tmp_path / "server-logs")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def shell() -> Iterator[Any]:
    """A fresh in-process IPython shell; timmy_magic unloaded (its router closed) after."""
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    try:
        yield ip
    finally:
        if "timmy_magic" in ip.extension_manager.loaded:
            ip.run_line_magic("unload_ext", "timmy_magic")
        dispose_shell(ip)


def dispose_shell(ip: Any) -> None:
    """Let a test's shell go now. IPython registers each shell's exit work with atexit:
    that kept every test's shell (and all its namespace held) alive to the end of the run,
    then reset each one with a full ``gc.collect`` over what all of them held: 3-4 minutes
    after the last test of a CI run. Its history session is closed here instead."""
    from IPython.core.interactiveshell import InteractiveShell

    atexit.unregister(ip.atexit_operations)
    history = ip.history_manager
    if history is not None:
        thread = getattr(history, "save_thread", None)
        with suppress(Exception):
            history.end_session()
            history.close()
        if thread is not None:
            atexit.unregister(thread.stop)
        ip.history_manager = None
    # its namespace is not cleared: an in-process shell's is __main__'s own (pytest's),
    # which multiprocessing's spawn reads (__spec__)
    InteractiveShell.clear_instance()
