"""Fixtures for the benchmark tests: a fault server, routers over it or over the real
servers (tests.support.fixtures), and a fresh in-process IPython shell."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.faultserver import FaultServer
from tests.support.servers import ManagedServer, start_vllm_mlx
from timmy_magic import Router
from timmy_magic.config import parse_config

# Benchmarks must see each failure once: no retries, short deadlines.
CASCADE = {"timeout_seconds": 60, "connect_timeout_seconds": 2,
           "first_token_timeout_seconds": 30, "idle_timeout_seconds": 15,
           "health_timeout_seconds": 2, "max_retries_per_provider": 0,
           "retry_delay_seconds": 0}
MakeRouter = Callable[..., Router]


@pytest.fixture(scope="session")
def vllm_mlx_cb_server(tiny_model_dir: Path, server_log_dir: Path) -> Iterator[ManagedServer]:
    """vllm-mlx with ``--continuous-batching`` on the tiny model: concurrent streams share
    decode steps, up to 256 in one step (its default is 32). Without continuous batching,
    vllm-mlx's simple engine answers a second concurrent stream with an in-stream
    "serialized route is busy" error."""
    srv = start_vllm_mlx(tiny_model_dir, extra_args=[
        "--continuous-batching", "--completion-batch-size", "256",
        "--prefill-batch-size", "64"], log_dir=server_log_dir)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def fault() -> Iterator[FaultServer]:
    with FaultServer(cap=20) as srv:
        yield srv


def served(name: str, srv: ManagedServer, type: str, priority: int = 1) -> dict[str, Any]:
    """A provider entry for one of the real servers of tests.support.servers."""
    return provider(name, srv.base_url, type=type, priority=priority,
                    models=[{"name": srv.model}])


def provider(name: str, url: str, type: str = "openai_compatible", priority: int = 1,
             **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": type, "base_url": url, "priority": priority, **kw}


def fault_provider(srv: FaultServer, name: str, scenario: str = "ok", priority: int = 1,
                   **params: Any) -> dict[str, Any]:
    return provider(name, srv.base_url(scenario, **params) + "/v1", priority=priority,
                    models=[{"name": "fault-model"}])


@pytest.fixture
def make_router() -> Iterator[MakeRouter]:
    """``make_router([provider dicts], **cascade overrides)`` -> a Router, closed after."""
    made: list[Router] = []

    def make(providers: list[dict[str, Any]], **cascade: Any) -> Router:
        doc = {"cascade": {**CASCADE, **cascade}, "providers": providers}
        router = Router(parse_config(yaml.safe_dump(doc), source="bench-test.yaml"))
        made.append(router)
        return router

    yield make
    for r in made:
        r.close()


