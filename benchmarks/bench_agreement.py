"""Do ``timmy_magic.bench`` and vllm-mlx's own benchmark client agree?

Both clients measure the same vllm-mlx server with the same prompt, ``max_tokens`` and
concurrency, taking turns (ours first in even rounds, theirs first in odd ones, so drift on
a shared machine hits both alike). vllm-mlx's ``bench_serve.run_concurrent_requests``
fires ``c`` requests at once; ours runs ``n = c`` requests at concurrency ``c``, the same
shape. The figure of a round is the mean over its requests (bench_serve's own
aggregation); the table shows the median over rounds, side by side, with ours/theirs.

Figures compared (bench_serve's names in brackets):
- TTFT mean and p50 [ttft_ms], E2E mean [e2e_latency_ms];
- mean gap between content chunks: our pooled ITL mean [tpot_ms, which bench_serve
  computes as the mean gap between content chunks of a request, then averages over
  requests: the same number when requests have equal token counts; it is *not* vLLM's
  TPOT, (E2E - TTFT) / (tokens - 1)];
- output tokens/s: ours = tokens / wall time of the run; theirs [throughput_tps] =
  tokens / the longest E2E of the batch;
- requests/s [requests_per_s = c / longest E2E]; output tokens per request
  [completion_tokens], both from the server's usage.
Our TPOT (vLLM's definition, (E2E - TTFT) / (tokens - 1)) and our client's CPU time per
chunk are printed too: bench_serve has no such figures.

The server runs with ``--continuous-batching``: without it, vllm-mlx's simple engine
answers a second concurrent stream with an in-stream error ("serialized route is busy"),
which bench_serve counts as a success with zero tokens and we count as an error.

    python benchmarks/bench_agreement.py          # starts vllm-mlx --continuous-batching
    python benchmarks/bench_agreement.py --url http://127.0.0.1:8000 --model NAME
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / ".backends" / "vllm-mlx"
PROMPT = "Write a detailed story about a lighthouse keeper who finds a message in a bottle."
FIGURES = ("ttft_ms", "ttft_p50_ms", "e2e_ms", "gap_ms", "output_tok_s", "requests_per_s",
           "tokens_per_request")
AGREE = ("ttft_p50_ms", "gap_ms", "e2e_ms")
"""The figures pinned within 5 % (tests/bench/test_agreement.py): TTFT p50, the mean
chunk gap (our ITL mean, bench_serve's ``tpot_ms``) and E2E mean."""
LABELS = {"ttft_ms": "TTFT mean (ms)", "ttft_p50_ms": "TTFT p50 (ms)",
          "e2e_ms": "E2E mean (ms)",
          "gap_ms": "chunk gap mean (ms)", "output_tok_s": "output tok/s",
          "requests_per_s": "requests/s", "tokens_per_request": "output tokens/request",
          "tpot_ms": "TPOT, vLLM def. (ms)"}


def load_bench_serve(venv: Path = DEFAULT_VENV) -> ModuleType:
    """vllm-mlx's ``bench_serve`` module, loaded from its venv by file: it is a pure HTTP
    client (httpx, tabulate) and needs none of vllm-mlx's MLX code."""
    found = sorted(venv.glob("lib/python3*/site-packages/vllm_mlx/bench_serve.py"))
    if not found:
        raise FileNotFoundError(f"vllm_mlx/bench_serve.py not found under {venv}; run "
                                "scripts/setup_backends.sh")
    spec = importlib.util.spec_from_file_location("vllm_mlx_bench_serve", found[-1])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the two clients


def theirs(bs: ModuleType, url: str, model: str, concurrency: int, max_tokens: int,
           prompt: str = PROMPT) -> dict[str, float]:
    """One batch of ``concurrency`` requests by bench_serve, aggregated as its
    ``run_bench_serve`` does (means over requests; throughput over the longest E2E)."""

    async def batch() -> list[dict[str, Any]]:
        import httpx

        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), trust_env=False) as c:
            return list(await bs.run_concurrent_requests(
                client=c, base_url=url, prompts=[[{"role": "user", "content": prompt}]],
                model=model, concurrency=concurrency, max_tokens=max_tokens,
                do_validate=False))

    results = asyncio.run(batch())
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"bench_serve requests failed: {failed[0]}")
    longest = max(r["e2e_latency_ms"] for r in results) / 1000
    tokens = sum(r["completion_tokens"] for r in results)
    return {"ttft_ms": statistics.mean(r["ttft_ms"] for r in results),
            "ttft_p50_ms": statistics.median(r["ttft_ms"] for r in results),
            "e2e_ms": statistics.mean(r["e2e_latency_ms"] for r in results),
            "gap_ms": statistics.mean(r["tpot_ms"] for r in results),
            "output_tok_s": tokens / longest, "requests_per_s": concurrency / longest,
            "tokens_per_request": tokens / len(results)}


def ours(router: Any, provider: str, concurrency: int, max_tokens: int,
         prompt: str = PROMPT, warmup: int = 0) -> dict[str, float]:
    from timmy_magic import bench

    res = bench.run(router, [provider], concurrency=concurrency, n=concurrency,
                    max_tokens=max_tokens, prompts=[prompt], warmup=warmup,
                    progress="none")
    r = res.records[0]
    if r["completed"] != concurrency:
        raise RuntimeError(f"timmy_magic.bench: {r['first_error']}")
    return {"ttft_ms": r["ttft_ms_mean"], "ttft_p50_ms": r["ttft_ms_p50"],
            "e2e_ms": r["e2e_ms_mean"],
            "gap_ms": r["itl_ms_mean"], "output_tok_s": r["output_tok_s"],
            "requests_per_s": r["requests_per_s"],
            "tokens_per_request": r["output_tokens"] / r["completed"],
            "tpot_ms": r["tpot_ms_mean"], "client_cpu_ms_per_chunk":
                r["client_cpu_ms_per_chunk"]}


# ------------------------------------------------------------------ comparison


@dataclass(frozen=True)
class Row:
    concurrency: int
    figure: str
    ours: float
    theirs: float | None

    @property
    def ratio(self) -> float | None:
        return self.ours / self.theirs if self.theirs else None


def make_router(url: str, model: str) -> Any:
    from timmy_magic.config import parse_config
    from timmy_magic.routing.router import Router

    return Router(parse_config(
        "cascade: {max_retries_per_provider: 0, timeout_seconds: 120}\n"
        f"providers:\n  - {{name: vllm-mlx, type: vllm_mlx, base_url: '{url}', "
        f"models: [{{name: '{model}'}}]}}\n", source="bench_agreement"))


def compare(url: str, model: str, concurrency: Sequence[int] = (1, 4),
            max_tokens: int = 16, rounds: int = 5, prompt: str = PROMPT,
            bench_serve: ModuleType | None = None) -> list[Row]:
    """``rounds`` turns of each client per level; medians over rounds."""
    bs = bench_serve or load_bench_serve()
    router = make_router(url, model)
    try:
        ours(router, "vllm-mlx", 1, max_tokens, prompt, warmup=1)  # warm both paths once
        theirs(bs, url, model, 1, max_tokens, prompt)
        rows: list[Row] = []
        for c in concurrency:
            mine: list[dict[str, float]] = []
            other: list[dict[str, float]] = []
            for i in range(rounds):
                if i % 2 == 0:
                    mine.append(ours(router, "vllm-mlx", c, max_tokens, prompt))
                    other.append(theirs(bs, url, model, c, max_tokens, prompt))
                else:
                    other.append(theirs(bs, url, model, c, max_tokens, prompt))
                    mine.append(ours(router, "vllm-mlx", c, max_tokens, prompt))
            for fig in FIGURES:
                rows.append(Row(c, fig, statistics.median(m[fig] for m in mine),
                                statistics.median(o[fig] for o in other)))
            for fig in ("tpot_ms", "client_cpu_ms_per_chunk"):
                rows.append(Row(c, fig, statistics.median(m[fig] for m in mine), None))
        return rows
    finally:
        router.close()


def format_rows(rows: Sequence[Row]) -> str:
    lines = [f"{'c':>3}  {'figure':<26}{'timmy_magic':>12}{'bench_serve':>12}{'ratio':>8}"]
    for r in rows:
        label = LABELS.get(r.figure, r.figure)
        theirs_text = f"{r.theirs:12.2f}" if r.theirs is not None else f"{'—':>12}"
        ratio = f"{r.ratio:8.2f}" if r.ratio is not None else f"{'':>8}"
        lines.append(f"{r.concurrency:>3}  {label:<26}{r.ours:12.2f}{theirs_text}{ratio}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--url", help="a running vllm-mlx server (default: start one)")
    p.add_argument("--model", default="tiny")
    p.add_argument("-c", "--concurrency", default="1,4")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    server = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(REPO))
        from tests.support.servers import start_vllm_mlx

        server = start_vllm_mlx(extra_args=["--continuous-batching"])
        url = server.base_url
    try:
        rows = compare(url, args.model, levels, args.max_tokens, args.rounds)
    finally:
        if server is not None:
            server.stop()
    print(f"vllm-mlx at {url}, model {args.model}, max_tokens {args.max_tokens}, "
          f"median of {args.rounds} alternating rounds per level\n")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
