"""benchmarks/bench_evaluate.py keeps working: tiny sizes, one round, its table printed.
Speed is measured by the script, never asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_evaluate


def test_bench_evaluate_runs_with_tiny_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    bench_evaluate.main(["--rounds", "1", "--rows", "12", "--concurrency", "4",
                         "--tokens", "3"])
    out = capsys.readouterr().out
    for part in ("map x2", "evaluate", "answers/s", "CPU ms/answer", "evaluate / two maps",
                 "load average"):
        assert part in out
