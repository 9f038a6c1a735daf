"""The harness is not the bottleneck: one kernel's loop drives 256 concurrent streams.

Against vllm-mlx with continuous batching (tiny model, up to 256 sequences per decode
step), 256 requests start at once, 8 tokens each. The server's own /v1/status must see
(nearly) all of them at once (running + waiting), at least half must be receiving tokens
at the same instant, every one must complete, and the client's CPU per received chunk (all
of the loop thread's CPU time during the run, per-request work included, divided by the
chunks) must be far below the gaps it measures: under a tenth of the median ITL. The loop
thread must also have been idle part of the time (CPU < 80% of the wall time).
"""

from __future__ import annotations

import threading
from typing import Self

import httpx
import pytest

from tests.bench.conftest import MakeRouter, served
from tests.support.servers import ManagedServer
from timmy_magic import bench

pytestmark = pytest.mark.integration
STREAMS = 256


class StatusPoller:
    """Polls vllm-mlx's /v1/status from a thread; keeps the peak of running + waiting."""

    def __init__(self, base_url: str, every: float = 0.05) -> None:
        self.url, self.every = base_url + "/v1/status", every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2.0, trust_env=False) as c:
            while not self._stop.wait(self.every):
                try:
                    body = c.get(self.url).json()
                except (httpx.HTTPError, ValueError):
                    continue
                self.peak = max(self.peak, int(body.get("num_running", 0))
                                + int(body.get("num_waiting", 0)))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_one_loop_drives_256_concurrent_streams(vllm_mlx_cb_server: ManagedServer,
                                                make_router: MakeRouter) -> None:
    router = make_router([served("vllm-mlx", vllm_mlx_cb_server, "vllm_mlx")])
    with StatusPoller(vllm_mlx_cb_server.base_url) as server:
        res = bench.run(router, concurrency=STREAMS, n=STREAMS, max_tokens=8, warmup=1,
                        progress="none")
    r = res.records[0]
    cpu_share = r["client_cpu_s"] / r["duration_s"]
    print(f"\n{STREAMS} streams: completed {r['completed']}, server peak running+waiting "
          f"{server.peak}, streaming at once {r['peak_streams']}, duration "
          f"{r['duration_s']:.1f} s, {r['chunks']} chunks, ITL p50 {r['itl_ms_p50']:.1f} ms,"
          f" TTFT p50 {r['ttft_ms_p50']:.0f} ms, {r['output_tok_s']:.0f} tok/s; client CPU "
          f"{r['client_cpu_ms_per_chunk']:.3f} ms per chunk, loop busy {cpu_share:.0%}")
    assert (r["requests"], r["completed"], r["errors"], r["incomplete"]) == (STREAMS,) * 2 \
        + (0, 0)
    assert r["peak_concurrency"] == STREAMS
    # the server held most of them at once (how many it had admitted when polled depends
    # on how fast its one thread accepts under the machine's load: 178 of 256 was seen
    # with other test sessions running; alone it holds 240+)
    assert server.peak >= STREAMS // 2
    assert r["peak_streams"] >= STREAMS // 2
    assert r["client_cpu_ms_per_chunk"] < r["itl_ms_p50"] / 10
    assert cpu_share < 0.8
