"""Context windows as real servers report them (issue 13): llama-server's ``/props``
(``default_generation_settings.n_ctx``, one request's share of the KV cache) and vllm-mlx's
``/v1/models`` (which, in vllm-mlx 0.6, lists no ``max_model_len``: the window stays unknown
unless providers.yaml gives it). A request too big for the discovered window is skipped
with the reason in the trace."""

from __future__ import annotations

import httpx
import pytest

from tests.support.faultserver import FaultServer
from timmy_magic import Router
from timmy_magic.config import parse_config

pytestmark = pytest.mark.integration


def make(providers: str) -> Router:
    return Router(parse_config(
        "cascade: {health_timeout_seconds: 2, first_token_timeout_seconds: 30,"
        f" max_retries_per_provider: 0}}\nproviders:\n{providers}",
        source="real.yaml", env={}))


def test_llama_server_window_from_props(llama_server) -> None:
    props = httpx.get(llama_server.base_url + "/props", timeout=5).json()
    n_ctx = props["default_generation_settings"]["n_ctx"]
    assert n_ctx == 2048  # the fixture's -c 2048 with a unified KV cache
    with make(f"  - {{name: ls, type: llama_cpp, base_url: '{llama_server.base_url}'}}") as r:
        assert r.context_window("ls") is None
        assert r.check_health()["ls"].state == "healthy"
        assert r.context_window("ls") == n_ctx
        assert r.provider("ls").windows == {llama_server.model: n_ctx}


def test_a_request_too_big_for_llama_server_goes_to_the_next(llama_server) -> None:
    with FaultServer() as fs:
        providers = (f"  - {{name: ls, type: llama_cpp, priority: 1, "
                     f"base_url: '{llama_server.base_url}'}}\n"
                     f"  - {{name: backup, type: vllm_mlx, priority: 2, "
                     f"base_url: '{fs.base_url('ok')}'}}")
        with make(providers) as r:
            r.check_health()
            big = r.complete("word " * 1600, max_tokens=512)  # ~2k tokens + 512 > 2048
            small = r.complete("Say hi.", max_tokens=4)
    assert big.provider == "backup"
    assert [str(s) for s in big.trace.skipped] == \
        ["ls skipped (context window: 2.5k tokens > 2k)"]
    assert small.provider == "ls" and small.ok


def test_vllm_mlx_reports_no_window(vllm_mlx_server) -> None:
    listed = httpx.get(vllm_mlx_server.base_url + "/v1/models", timeout=5).json()
    assert all("max_model_len" not in m for m in listed["data"])  # what 0.6 really sends
    url = vllm_mlx_server.base_url
    with make(f"  - {{name: vm, type: vllm_mlx, base_url: '{url}'}}") as r:
        assert r.check_health()["vm"].state == "healthy"
        assert r.context_window("vm") is None
    yaml = (f"  - {{name: vm, type: vllm_mlx, base_url: '{url}', "
            f"models: [{{name: {vllm_mlx_server.model}, context_window: 4096}}]}}")
    with make(yaml) as r:
        r.check_health()
        assert r.context_window("vm") == 4096
