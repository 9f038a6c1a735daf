"""notebooks/03-benchmarks.ipynb runs under nbval against the three real servers.

The notebook reads the servers' URLs from LLAMA_SERVER_URL, VLLM_MLX_URL and MLX_LM_URL;
cells whose output varies (timings, progress, tables) are tagged ``nbval-ignore-output``,
the others are compared with their stored output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import ManagedServer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "03-benchmarks.ipynb"


def test_benchmarks_notebook_runs_under_nbval(llama_server: ManagedServer,
                                              vllm_mlx_cb_server: ManagedServer,
                                              mlx_lm_server: ManagedServer,
                                              tmp_path: Path) -> None:
    env = dict(os.environ, LLAMA_SERVER_URL=llama_server.base_url,
               VLLM_MLX_URL=vllm_mlx_cb_server.base_url, MLX_LM_URL=mlx_lm_server.base_url,
               MPLBACKEND="Agg")
    env.pop("TIMMY_PROVIDERS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", str(NOTEBOOK), "-q",
         "-p", "no:cacheprovider", "--nbval-cell-timeout=240", "-o", "addopts=",
         f"--rootdir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert " passed" in out and "failed" not in out, out[-2000:]
