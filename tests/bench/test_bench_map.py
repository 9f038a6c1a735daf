"""benchmarks/bench_map.py keeps working: tiny sizes, one round, its table printed.

Speed is measured by the script (docs/performance.md, "map"), never asserted here: the
figures depend on the machine and its load. What is checked is that every way ran all
its rows against both replicas of the fast server and that the report has its parts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_map


def test_bench_map_runs_with_tiny_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    ratio = bench_map.main(["--rounds", "1", "--rows", "24", "--concurrency", "4",
                            "--tokens", "3"])
    out = capsys.readouterr().out
    assert ratio > 0
    for part in ("bench", "map", "raw sockets", "CPU ms/row", "map / bench throughput",
                 "map client CPU per row", "load average"):
        assert part in out
    split = next(ln for ln in out.splitlines() if "rows per replica" in ln)
    assert split.count("http://127.0.0.1:") == 2  # both replicas answered map's rows


def test_each_way_answers_every_row() -> None:
    runs = bench_map.measure(rows=10, concurrency=3, tokens=2, rounds=1, quiet=True)
    assert set(runs) == {"bench", "map", "raw sockets"}
    for figures in runs.values():
        (one,) = figures
        assert one["tok_s"] == pytest.approx(one["rows_s"] * 2)  # 2 tokens in every row
        assert one["cpu_ms_row"] > 0
    assert sum(runs["map"][0]["split"].values()) == 10
