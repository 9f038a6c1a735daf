"""``%llm bench`` through the real extension in an in-process IPython shell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.bench.conftest import CASCADE, fault_provider
from tests.support.faultserver import FaultServer
from timmy_magic.bench import BenchResult
from timmy_magic.notebook.magics.bench import make_parser, read_prompts


@pytest.fixture
def bench_shell(shell: InteractiveShell, fault: FaultServer, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    doc = {"cascade": CASCADE, "providers": [
        fault_provider(fault, "a", tokens=3, delay=0.01),
        fault_provider(fault, "b", tokens=5, priority=2)]}
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("TIMMY_PROVIDERS", str(path))
    monkeypatch.chdir(tmp_path)
    with capture_output():
        shell.run_line_magic("load_ext", "timmy_magic")
    return shell


def test_bench_line_runs_stores_exports_and_displays(bench_shell: InteractiveShell,
                                                     tmp_path: Path) -> None:
    with capture_output() as cap:
        bench_shell.run_line_magic(
            "llm", "bench -p a,b -c 1,2 -n 2 --max-tokens 5 --warmup 1 "
                   "--prompt 'say hi' -o res --csv out.csv --json out.json")
    res = bench_shell.user_ns["res"]
    assert isinstance(res, BenchResult)
    assert [(r["provider"], r["concurrency"], r["completed"]) for r in res.records] == [
        ("a", 1, 2), ("a", 2, 2), ("b", 1, 2), ("b", 2, 2)]
    assert len(res.warmup) == 2
    assert res.settings["prompts"] == ["say hi"] and res.settings["max_tokens"] == 5
    assert (tmp_path / "out.csv").read_text() == res.to_csv()
    assert json.loads((tmp_path / "out.json").read_text())["records"] == res.records
    shown = [o.data for o in cap.outputs]
    assert any("<table class='tm-bench'>" in d.get("text/html", "") for d in shown)
    # a front end collects the outputs: the notebook's widget bar, which at the end leaves
    # one line of text under its display id instead of a widget a saved notebook can't show
    bar, *updates = [o for o in cap.outputs if o.transient]
    assert "application/vnd.jupyter.widget-view+json" in bar.data
    last = updates[-1]
    assert last.update and last.transient == bar.transient
    assert last.data["text/plain"].startswith("bench: ran 10/10 requests in ")
    assert cap.stderr == ""


def test_bench_in_a_terminal_shell_draws_one_terminal_line(
        bench_shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    bench_shell.run_line_magic("llm", "bench -p a -n 2 --max-tokens 3 --warmup 0")
    err = capsys.readouterr().err
    assert err.endswith("\033[K\n") and err.count("\n") == 1
    assert err.rsplit("\r", 1)[1].startswith("bench: ran 2/2 requests in ")


def test_help_prints_and_returns_nothing(bench_shell: InteractiveShell) -> None:
    with capture_output() as cap:
        out = bench_shell.run_line_magic("llm", "bench -h")
    assert out is None
    assert "--max-tokens" in cap.stdout and "every healthy provider" in cap.stdout


@pytest.mark.parametrize(("args", "message"), [
    ("-c 0", "expected positive integers"),
    ("-c 1,x", "expected positive integers"),
    ("-n 0", "expected an integer >= 1"),
    ("--warmup -1", "expected an integer >= 0"),
    ("--prompt a --prompts f.txt", "not allowed with argument"),
    ("-p nope", "unknown provider nope; configured: a, b"),
    ("-o 1bad", "-o needs a variable name"),
    ("--csv /no/such/dir/x.csv", "the folder does not exist"),
    ("--prompt 'unbalanced", "No closing quotation"),
    ("--frobnicate", "unrecognized arguments"),
    ("--prompts missing.txt", "cannot read prompts file"),
])
def test_usage_errors_are_one_line(bench_shell: InteractiveShell, args: str,
                                   message: str) -> None:
    with pytest.raises(UsageError) as info:
        bench_shell.run_line_magic("llm", f"bench {args}")
    text = str(info.value)
    assert text.startswith("%llm bench: ") and message in text and "\n" not in text


def test_run_cell_shows_usage_errors_without_traceback(bench_shell: InteractiveShell) -> None:
    with capture_output() as cap:
        result = bench_shell.run_cell("%llm bench -c zero")
    assert isinstance(result.error_in_exec, UsageError)
    assert "Traceback" not in cap.stdout + cap.stderr


def test_read_prompts_formats(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second prompt\n")
    assert read_prompts(str(txt)) == ["first prompt", "  second prompt"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["a", {"prompt": "b"}]))
    assert read_prompts(str(js)) == ["a", "b"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('"x"\n{"prompt": "y"}\n')
    assert read_prompts(str(jl)) == ["x", "y"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"prompt": "not a list"}')
    with pytest.raises(UsageError, match="must hold a list"):
        read_prompts(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UsageError, match="non-empty prompt"):
        read_prompts(str(empty))


def test_parser_defaults() -> None:
    args = make_parser().parse_args([])
    assert (args.providers, args.concurrency, args.n, args.max_tokens, args.warmup) == (
        None, [1], 8, 64, 1)
    args = make_parser().parse_args(["-p", "x, y", "-c", "1,4,16", "-t", "0.5"])
    assert args.providers == ["x", "y"] and args.concurrency == [1, 4, 16]
    assert args.temperature == 0.5
