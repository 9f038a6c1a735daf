"""``%%llm --bg`` in a real in-process IPython shell against loopback servers: the cell
returns a Job while the server is still streaming, the answer lands in the cell's own
display, a cancel closes the request and keeps the partial answer, and every other cell
option (cache, replay, schema, side by side, pin) behaves as in the foreground."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import WriteProviders, local, wait_for
from tests.support.faultserver import FaultServer
from timmy_magic.jobs import Job, JobCancelled, JobTimeout
from timmy_magic.notebook.display.css import unwrapped


def run(shell: InteractiveShell, source: str) -> tuple[Any, str]:
    with capture_output() as cap:
        res = shell.run_cell(source, store_history=True)
    return res, cap.stdout + cap.stderr + "".join(repr(o.data) for o in cap.outputs)


def chats(fault: FaultServer) -> int:
    return sum(1 for r in fault.requests if r.path.endswith("/chat/completions"))


@pytest.fixture
def bg(shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    monkeypatch.setenv("TIMMY_CACHE_PATH", str(tmp_path / "answers.sqlite3"))
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)
    write_providers([local("slow", fault.base_url("drip", tokens=40, interval=0.05)),
                     local("quick", fault.base_url("ok", text="hello there"), priority=2),
                     local("echo", fault.base_url("prompt"), priority=3)])
    run(shell, "%load_ext timmy_magic")
    fault.reset()
    return shell


def test_a_bg_cell_returns_a_job_while_the_answer_streams_into_its_display(
        bg: InteractiveShell, fault: FaultServer) -> None:
    import timmy_magic

    with capture_output() as cap:
        res = bg.run_cell("%%llm --bg -p slow -o ans\nwrite a lot", store_history=True)
        job = bg.user_ns["ans"]
        assert res.error_in_exec is None and isinstance(job, Job)
        assert res.result is job  # the cell's Out is the Job too
        assert not job.done()  # returned while the server still streams
        assert wait_for(lambda: job.progress.tokens >= 3, 5)
        assert "running" in repr(job) and "slow" in repr(job) and "tokens" in repr(job)
        result = job.result(timeout=10)
    assert job.status == "done" and result.text.startswith("tok0 tok1") and "tok39" in result.text
    assert timmy_magic.last() is result and bg.user_ns["ans"] is job
    assert job.text == result.text  # reads through once done
    first, *updates = cap.outputs
    assert "waiting for an answer" in first.data["text/plain"]  # placeholder, in the cell
    assert updates and all(o.update for o in updates)
    final = updates[-1].data["text/markdown"]
    assert unwrapped(final).startswith("tok0 tok1") and "slow · fault-model" in final
    # the Job displays nothing in its own cell (the live answer is its output) ...
    assert not any("Job" in repr(o.data) for o in cap.outputs)
    # ... and shows its answer when displayed later
    _, later = run(bg, "ans")
    assert "tok39" in later


def test_cancel_closes_the_request_and_keeps_the_partial_answer(
        bg: InteractiveShell, fault: FaultServer) -> None:
    run(bg, "%%llm --bg -p slow -o ans\nwrite a lot")
    job = bg.user_ns["ans"]
    assert wait_for(lambda: job.progress.tokens >= 3, 5)
    streaming = fault.open_connections  # this stream's, and idle health-check ones
    res, shown = run(bg, "%llm cancel ans")
    assert res.error_in_exec is None and "Cancelled 1 job" in shown
    # the server saw the stream's connection close
    assert wait_for(lambda: fault.open_connections == streaming - 1, 1.0)
    partial = job.result(timeout=1)
    assert job.status == "cancelled" and partial.error == "interrupted by the user"
    assert partial.text.startswith("tok0 tok1") and "tok39" not in partial.text
    _, shown = run(bg, "%llm cancel ans")
    assert "Nothing to cancel" in shown and "cancelled already" in shown


def test_jobs_table_cancel_all_and_unknown_names(bg: InteractiveShell,
                                                 fault: FaultServer) -> None:
    run(bg, "%%llm --bg -p slow -o a\nfirst")
    run(bg, "%%llm --bg -p slow\nsecond")
    run(bg, "%%llm --bg -p quick -o c\nthird")
    bg.user_ns["c"].result(5)
    _, table = run(bg, "%llm jobs")
    assert "| job | cell | kind | provider | state | tokens | elapsed | prompt |" in table
    assert "1 (a)" in table and "3 (c)" in table and "done" in table and "running" in table
    res, shown = run(bg, "%llm cancel nope")
    assert res.error_in_exec is not None and "no job 'nope' in this session" in shown
    assert "jobs: 1 (a), 2, 3 (c)" in shown
    streaming = fault.open_connections
    _, shown = run(bg, "%llm cancel all")
    assert "Cancelled 2 jobs (1, 2)" in shown
    assert wait_for(lambda: fault.open_connections == streaming - 2, 1.0)
    _, shown = run(bg, "%llm cancel all")
    assert "no job is running" in shown


def test_several_jobs_share_the_router_and_its_metrics(bg: InteractiveShell) -> None:
    from timmy_magic.notebook import session

    jobs = []
    for i in range(3):
        run(bg, f"%%llm --bg -p slow -o j{i}\nanswer {i}")
        jobs.append(bg.user_ns[f"j{i}"])
    assert wait_for(lambda: all(j.progress.tokens for j in jobs), 5)
    router = session(bg).router
    assert router.metrics()["slow"].in_flight == 3  # what the panel shows
    res, shown = run(bg, "%%llm -p quick\nin the foreground meanwhile")
    assert res.error_in_exec is None and "hello there" in shown
    assert not all(j.done() for j in jobs)
    for j in jobs:
        assert j.result(10).ok
    assert router.metrics()["slow"].successes == 3


def test_cache_and_replay_behave_as_in_the_foreground(bg: InteractiveShell,
                                                      fault: FaultServer) -> None:
    run(bg, "%llm cache on")
    run(bg, "%%llm --bg -p quick -o a\nWhat is a cache?")
    first = bg.user_ns["a"].result(5)
    assert chats(fault) == 1 and not first.cached
    _, shown = run(bg, "%%llm --bg -p quick -o b\nWhat is a cache?")
    assert "answered from the cache" in shown
    again = bg.user_ns["b"].result(5)
    assert again.cached and again.text == "hello there" and chats(fault) == 1
    run(bg, "%llm cache replay")
    res, miss = run(bg, "%%llm --bg -p quick -o c\nnever recorded")
    assert res.error_in_exec is None and "replay: no recorded answer" in miss
    assert "c" not in bg.user_ns and chats(fault) == 1  # as a foreground miss: nothing sent


def test_schema_pin_and_side_by_side_run_in_the_background(bg: InteractiveShell) -> None:
    import timmy_magic

    run(bg, "schema = {'type': 'object', 'properties': {'city': {'type': 'string'}}, "
            "'required': ['city']}")
    run(bg, "%%llm --bg -p echo --schema schema -o s\n{\"city\": \"Paris\"}")
    assert bg.user_ns["s"].result(5).data == {"city": "Paris"}
    run(bg, "%%llm --bg -p slow,quick -o cmp\ncompare us")
    job = bg.user_ns["cmp"]
    comparison = job.result(10)
    assert type(comparison).__name__ == "Comparison" and timmy_magic.last() is comparison
    texts = [r.text for r in comparison.results]
    assert texts[0].startswith("tok0") and texts[1] == "hello there"


def test_bad_options_are_one_line_and_code_format_is_refused(bg: InteractiveShell) -> None:
    res, shown = run(bg, "%%llm --bg -f code -p quick\nwrite code")
    assert res.error_in_exec is not None and "--bg -f code" in shown
    res, shown = run(bg, "%%llm --bg -p nowhere\nhi")
    assert res.error_in_exec is not None and "nowhere" in shown
    run(bg, "1/0")
    res, shown = run(bg, "%llm fix --bg -p quick")
    assert res.error_in_exec is not None and "%llm fix: --bg does not apply" in shown


def test_a_failing_job_shows_its_failure_and_result_raises_it(
        bg: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    write_providers([local("down", fault.base_url("status", code=500))])
    run(bg, "%llm reload")
    run(bg, "%%llm --bg -p down -o bad\nhi")
    job = bg.user_ns["bad"]
    assert job.wait(5) and job.status == "failed"
    with pytest.raises(Exception, match="down"):
        job.result()
    with pytest.raises(AttributeError, match="job is failed"):
        _ = job.text


def test_unload_cancels_every_job_and_leaves_no_thread_or_connection(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    before = {t.ident for t in threading.enumerate()}
    base = fault.open_connections
    write_providers([local("slow", fault.base_url("drip", tokens=200, interval=0.05))])
    run(shell, "%load_ext timmy_magic")
    run(shell, "%%llm --bg -o a\none")
    run(shell, "%%llm --bg -o b\ntwo")
    a, b = shell.user_ns["a"], shell.user_ns["b"]
    assert wait_for(lambda: a.progress.tokens and b.progress.tokens, 5)
    run(shell, "%unload_ext timmy_magic")
    assert a.status == b.status == "cancelled" and a.result().error == "interrupted by the user"
    assert wait_for(lambda: fault.open_connections <= base, 1.0), (fault.open_connections, base)
    assert wait_for(lambda: {t.ident for t in threading.enumerate()} <= before, 5)


def test_map_in_the_background_returns_a_job_with_progress(bg: InteractiveShell) -> None:
    import timmy_magic

    with capture_output() as cap:
        job = timmy_magic.map("Say {w}", [{"w": "alpha"}, {"w": "beta"}, {"w": "gamma"}],
                              provider="echo", background=True)
        assert isinstance(job, Job)
        result = job.result(10)
    assert [r.text for r in result.results] == ["Say alpha", "Say beta", "Say gamma"]
    assert job.status == "done" and "3/3 rows" in job.progress.line
    assert timmy_magic.last() is result
    assert cap.outputs  # the progress shown in the cell that started it
    _, table = run(bg, "%llm jobs")
    assert "map" in table and "Say {w}" in table


def test_a_job_can_be_awaited_and_times_out_clearly(bg: InteractiveShell) -> None:
    run(bg, "%%llm --bg -p slow -o ans\nwrite a lot")
    job = bg.user_ns["ans"]
    with pytest.raises(JobTimeout, match="still running after 0.05s"):
        job.result(timeout=0.05)

    async def wait() -> Any:
        return await job

    assert asyncio.run(wait()).text.startswith("tok0")


def test_a_job_cancelled_before_it_starts_raises_job_cancelled() -> None:
    from timmy_magic.config import Config
    from timmy_magic.routing.router import Router

    started = threading.Event()

    async def work(job: Job[int]) -> int:
        started.set()
        await asyncio.sleep(30)
        return 1

    with Router(Config()) as router:
        job = Job.start(router, work, kind="test")
        assert job.cancel()
        with pytest.raises(JobCancelled):
            job.result(2)
        assert job.status == "cancelled" and not job.cancel()


def test_in_a_terminal_the_answer_is_printed_once_done(
        bg: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    bg.run_line_magic("config", "TimmyMagics.display_mode = 'terminal'")
    res = bg.run_cell("%%llm --bg -p slow -o ans\nwrite a lot")
    assert res.error_in_exec is None
    returned = capsys.readouterr().out
    assert "tok0" not in returned  # nothing streams over the prompt the user types at
    bg.user_ns["ans"].result(10)  # the print is the job's last step: done, it is out
    printed = capsys.readouterr().out
    assert printed.startswith("tok0 tok1") and "tok39" in printed
    assert "slow · fault-model" in printed


def test_a_done_job_displays_its_value(bg: InteractiveShell) -> None:
    run(bg, "%%llm --bg -p slow,quick -o cmp\ncompare us")
    bg.user_ns["cmp"].result(10)
    _, shown = run(bg, "cmp")
    assert "hello there" in shown and "tok39" in shown  # the Comparison's grid
    run(bg, "%%llm --bg -p slow -o later\nwrite")
    _, shown = run(bg, "later")
    assert "job 2: running" in shown or "job 2: queued" in shown  # its state line


def test_waiting_for_a_job_on_the_loop_itself_is_refused_not_a_deadlock(
        bg: InteractiveShell) -> None:
    from timmy_magic.notebook import session

    run(bg, "%%llm --bg -p slow -o ans\nwrite a lot")
    job = bg.user_ns["ans"]

    async def wait_on_the_loop() -> str:
        try:
            job.result()
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    said = session(bg).router.submit(wait_on_the_loop()).result(5)
    assert "would deadlock" in said and "await it instead" in said


def test_a_cell_run_again_replaces_its_running_job(bg: InteractiveShell) -> None:
    with capture_output():
        bg.run_cell("%%llm --bg -p slow -o first\nwrite", store_history=True, cell_id="c1")
        bg.run_cell("%%llm --bg -p slow -o other\nwrite", store_history=True, cell_id="c2")
        bg.run_cell("%%llm --bg -p slow -o again\nwrite", store_history=True, cell_id="c1")
    first, other, again = (bg.user_ns[v] for v in ("first", "other", "again"))
    assert first.wait(2) and first.status == "cancelled"  # the cell's old job
    assert not other.done() and not again.done()  # another cell's job goes on
    assert again.result(10).ok and other.result(10).ok


def test_background_jobs_queue_at_a_providers_max_concurrency(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    """Jobs share the router and its limits: with ``max_concurrency: 1``, three --bg
    cells reach the server one at a time, and all three answer."""
    write_providers([local("one", fault.base_url("drip", tokens=10, interval=0.03),
                           max_concurrency=1)])
    run(shell, "%load_ext timmy_magic")
    fault.reset()
    for i in range(3):
        res, _ = run(shell, f"%%llm --bg -o j{i}\nwrite {i}")
        assert res.error_in_exec is None
    jobs = [shell.user_ns[f"j{i}"] for i in range(3)]
    results = [j.result(timeout=20) for j in jobs]
    assert all(r.ok and "tok9" in r.text for r in results)
    assert fault.peak_in_flight == 1
