"""End-to-end benchmarks against the real local servers (small n, few tokens)."""

from __future__ import annotations

import pytest

from tests.bench.conftest import MakeRouter, served
from tests.support.servers import ManagedServer
from timmy_magic import bench

pytestmark = pytest.mark.integration


def test_three_backends_end_to_end(llama_server: ManagedServer, mlx_lm_server: ManagedServer,
                                   vllm_mlx_cb_server: ManagedServer,
                                   make_router: MakeRouter) -> None:
    router = make_router([served("llama-server", llama_server, "llama_cpp"),
                          served("vllm-mlx", vllm_mlx_cb_server, "vllm_mlx", 2),
                          served("mlx-lm", mlx_lm_server, "mlx_lm", 3)])
    res = bench.run(router, concurrency=(1, 2), n=2, max_tokens=8, warmup=1,
                    prompts=["Tell me about the sea.", "Name three colours."],
                    progress="none")
    print(res)
    assert [(r["provider"], r["concurrency"]) for r in res.records] == [
        (p, c) for p in ("llama-server", "vllm-mlx", "mlx-lm") for c in (1, 2)]
    models = {"llama-server": llama_server.model, "vllm-mlx": vllm_mlx_cb_server.model}
    for r in res.records:
        assert (r["requests"], r["completed"], r["errors"], r["incomplete"]) == (2, 2, 0, 0)
        assert not r["tokens_estimated"], r  # all three send usage in their streams
        assert 2 <= r["output_tokens"] <= 16 and r["input_tokens"] > 0
        assert 0 < r["ttft_ms_p50"] <= r["ttft_ms_p95"] < r["e2e_ms_p50"] * 2
        assert r["e2e_ms_p50"] > r["ttft_ms_p50"]
        assert r["output_tok_s"] > 0 and r["requests_per_s"] > 0
        assert r["total_tok_s"] > r["output_tok_s"]
        assert r["tpot_ms_p50"] is not None and r["itl_ms_p99"] is not None
        if r["provider"] in models:
            assert r["model"] == models[r["provider"]]
    assert [w["provider"] for w in res.warmup] == ["llama-server", "vllm-mlx", "mlx-lm"]
    assert all(w["status"] == "ok" for w in res.warmup)
    page = res._repr_html_()
    assert page.count("<tr>") == 7 and "data:image/png" in page


def test_unserialised_vllm_mlx_errors_are_counted(vllm_mlx_server: ManagedServer,
                                                  make_router: MakeRouter) -> None:
    """The shared vllm-mlx runs its simple engine: a stream that arrives while another is
    generating gets an in-stream error ("serialized route is busy"). A benchmark must show
    that, not hide it (bench_serve averages such requests in, with zero tokens)."""
    router = make_router([served("vllm-mlx", vllm_mlx_server, "vllm_mlx")])
    res = bench.run(router, concurrency=(1, 3), n=3, max_tokens=32, warmup=0,
                    progress="none")
    c1, c3 = res.records
    assert (c1["completed"], c1["errors"]) == (3, 0)
    assert c3["requests"] == 3 and c3["completed"] >= 1 and c3["errors"] >= 1
    assert c3["completed"] + c3["errors"] + c3["incomplete"] == 3
    assert "Internal server error" in c3["first_error"]
    assert f"vllm-mlx c=3: {c3['errors']} errors" in str(res)


def test_default_prompt_is_continued_by_the_shipped_default_model(
        llama_server: ManagedServer, make_router: MakeRouter) -> None:
    """The shipped ``local-gemma`` (a base model, asked in completion mode with its stops)
    continues the default prompt for the whole ``max_tokens``; an instruction, the old
    default, gets about one token from it, and a benchmark of that measures nothing."""
    from tests.notebooks.replay import shipped_gemma_model

    model = {**shipped_gemma_model(), "name": llama_server.model}
    router = make_router([served("local-gemma", llama_server, "llama_cpp")
                          | {"models": [model]}])
    res = bench.run(router, providers=["local-gemma"], n=2, max_tokens=32, warmup=0,
                    progress="none")
    (r,) = res.records
    assert res.settings["prompts"] == [bench.DEFAULT_PROMPT]
    assert (r["completed"], r["errors"], r["incomplete"]) == (2, 0, 0)
    assert r["output_tokens"] >= 2 * 24, r  # about 32 each, not 1
    assert r["tpot_ms_p50"] is not None and r["ttft_ms_p50"] is not None
    old_default = ("Write a detailed story about a lighthouse keeper who finds a message "
                   "in a bottle.")
    instruction = bench.run(router, providers=["local-gemma"], n=1, max_tokens=32,
                            warmup=0, progress="none", prompts=[old_default])
    assert instruction.records[0]["output_tokens"] <= 4  # why the default is not one
