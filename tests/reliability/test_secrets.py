"""Secret hygiene (issue 7): a distinctive fake API key, planted in the environment and in
providers.yaml, must appear 0 times in anything a user or a log can see.

Cloud-type providers point at the loopback fault server answering 401 (auth), 500, and 400
with an error body that echoes the key back (as real APIs do), and at a blackhole; one
local provider answers. Then: every ``%llm`` line command, ``%%llm`` cells through the
cascade, pinned to each failing provider, with ``--trace`` and each format; the error
paths (pinned failures, a bad reload whose bad value *is* the key, usage errors); the panel
(``get_state()`` of every widget); reprs, ``str`` and ``traceback.format_exception`` of
every object and error; every log record at DEBUG (ours, httpx's, httpcore's); and a
notebook executed by nbclient in a real kernel (every output and the widget state).

Figures: places checked, occurrences of the key found (must be 0).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.reliability.conftest import Figures
from tests.support.faultserver import Blackhole, FaultServer
from timmy_magic.notebook.display.render import answer_markdown

KEY = "sk-timmy-PLANTED-7f3a9c1e5b2d4068e1a9-secret"
CORE = "PLANTED-7f3a9c1e5b2d4068"  # any piece of the key long enough to be a leak
PART = "secret hygiene"


class Audit:
    """Collects the text of every place checked and counts the key in it."""

    def __init__(self, part: Any) -> None:
        self.part = part
        self.leaks: dict[str, int] = {}

    def check(self, where: str, text: object) -> None:
        s = text if isinstance(text, str) else repr(text)
        n = s.count(KEY) + (s.count(CORE) - s.count(KEY))
        self.part.add("places checked")
        self.part.add("occurrences found", n)
        if n:
            i = s.find(CORE)
            self.leaks[where] = n
            self.leaks[where + " (context)"] = s[max(0, i - 80): i + 60]  # type: ignore[assignment]

    def check_error(self, where: str, exc: BaseException) -> None:
        self.check(where + ": str", str(exc))
        self.check(where + ": repr", repr(exc))
        self.check(where + ": traceback", "".join(traceback.format_exception(exc)))
        for name in ("trace", "args"):
            if hasattr(exc, name):
                self.check(f"{where}: .{name}", getattr(exc, name))


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FaultServer, Blackhole]]:
    with FaultServer(cap=20) as srv, Blackhole(cap=20) as bh:
        yield srv, bh


def echo_url(srv: FaultServer) -> str:
    """A 400 whose JSON body echoes the key (as real APIs do). Every byte of the body is
    percent-encoded in the URL, so the key is not in the configured URL itself."""
    body = f'{{"error": {{"message": "Incorrect API key provided: {KEY}"}}}}'
    encoded = "".join(f"%{b:02X}" for b in body.encode())
    return f"{srv.url}/s/status/code=400,body={encoded}"


def providers_yaml(srv: FaultServer, bh: Blackhole) -> str:
    return f"""\
cascade: {{timeout_seconds: 6, connect_timeout_seconds: 0.5, first_token_timeout_seconds: 1,
           idle_timeout_seconds: 1, health_timeout_seconds: 0.5, health_interval_seconds: 60,
           max_retries_per_provider: 0}}
providers:
  - {{name: cloud-401, type: openai_compatible, cloud: true, priority: 1,
      api_key: '${{TIMMY_PLANTED_KEY}}', base_url: '{srv.base_url("status", code=401)}',
      models: [{{name: gpt-fake}}]}}
  - {{name: cloud-500, type: openai, priority: 2, api_key: '{KEY}',
      base_url: '{srv.base_url("status", code=500)}/v1', models: [{{name: gpt-fake}}]}}
  - {{name: cloud-echo, type: openai_compatible, cloud: true, priority: 3,
      api_key: '${{OPENAI_API_KEY}}', models: [{{name: gpt-fake}}],
      base_url: '{echo_url(srv)}'}}
  - {{name: claude-hole, type: anthropic, priority: 4, api_key: '${{ANTHROPIC_API_KEY}}',
      base_url: '{bh.url}', models: [{{name: claude-fake}}]}}
  - {{name: disabled-cloud, type: openai, enabled: false, api_key: '{KEY}'}}
  - {{name: local, type: vllm_mlx, priority: 9, models: [{{name: m}}],
      base_url: '{srv.base_url("ok", text="a local answer")}'}}
"""


@pytest.fixture
def planted(tmp_path: Path, servers, monkeypatch: pytest.MonkeyPatch) -> Path:
    srv, bh = servers
    for var in ("TIMMY_PLANTED_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(var, KEY)
    path = tmp_path / "providers.yaml"
    path.write_text(providers_yaml(srv, bh))
    monkeypatch.setenv("TIMMY_PROVIDERS", str(path))
    # a bad file whose offending value is the key itself (pasted into the wrong field)
    (tmp_path / "bad.yaml").write_text(
        "providers:\n  - {name: oops, type: openai_compatible, base_url: '${OPENAI_API_KEY}'}\n"
        f"  - {{name: oops2, type: openai, api_key: '{KEY}', priority: [1]}}\n")
    (tmp_path / "bad2.yaml").write_text(
        f"providers:\n  - {{name: oops3, type: openai_compatible, base_url: '{KEY}'}}\n")
    return path


def everything_shown(cap: Any) -> str:
    parts = [cap.stdout, cap.stderr]
    for out in cap.outputs:
        parts.append(repr(out.data))
        parts.append(repr(out.metadata))
    return "\n".join(parts)


def widget_states(widget: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """get_state() of a widget and of every widget below it."""
    seen: set[str] = set()
    todo = [widget]
    while todo:
        w = todo.pop()
        if w.model_id in seen:
            continue
        seen.add(w.model_id)
        yield type(w).__name__, w.get_state()
        for name in w.keys:
            value = getattr(w, name, None)
            kids = value if isinstance(value, (list, tuple)) else [value]
            todo += [k for k in kids if hasattr(k, "get_state") and hasattr(k, "model_id")]


LINE_COMMANDS = (
    "%llm", "%llm help", "%llm status", "%llm status --cached", "%llm providers",
    "%llm pin cloud-401", "%llm unpin", "%llm pin cloud-500", "%llm unpin",
    "%llm local-only on", "%llm local-only off", "%llm local-only",
    "%llm history", "%llm reset", "%llm start local", "%llm stop local", "%llm stop nope",
    "%llm pin nope", "%llm frobnicate", "%llm reload", "%llm reload {tmp}/bad.yaml",
    "%llm reload {tmp}/bad2.yaml", "%llm reload {tmp}/missing.yaml", "%llm status",
    "%llm bench -p local,cloud-401 -c 1 -n 2 --max-tokens 4 --warmup 0",
    "%llm bench --nonsense", "%config TimmyMagics",
)
CELLS = (
    "%%llm\nhello", "%%llm --trace\nhello", "%%llm --no-stream --trace\nhello",
    "%%llm -p cloud-401\nhello", "%%llm -p cloud-500 --trace\nhello",
    "%%llm -p cloud-echo\nhello", "%%llm -p claude-hole\nhello", "%%llm -p disabled-cloud\nhello",
    "%%llm -f json\nhello", "%%llm -f code\nhello", "%%llm -f html\nhello",
    "%%llm -o kept --chat\nhello", "%%llm --chat\nagain", "%llm history",
    "print(repr(kept), kept.trace, kept.footer())",
    "import timmy_magic; print(repr(timmy_magic.last()))",
    ("from timmy_magic import notebook; r = notebook.get_router(); print(r, r.config, r.health(),"
     " r.metrics(), [r.provider(n) for n in r.names])"),
)


def test_the_key_never_shows_in_the_kernel(shell: InteractiveShell, planted: Path,
                                           figures: Figures,
                                           caplog: pytest.LogCaptureFixture):
    part = figures.part(PART, "places checked", "occurrences found")
    audit = Audit(part)
    caplog.set_level(logging.DEBUG)
    tmp = planted.parent
    with capture_output() as cap:
        shell.run_line_magic("load_ext", "timmy_magic")
    audit.check("load_ext", everything_shown(cap))
    for source in (*LINE_COMMANDS, *CELLS):
        source = source.replace("{tmp}", str(tmp))
        with capture_output() as cap:
            res = shell.run_cell(source)
        audit.check(source, everything_shown(cap))
        if res.error_in_exec is not None:
            audit.check_error(source, res.error_in_exec)
        assert res.error_in_exec is None or source.startswith("%llm"), \
            (source, res.error_in_exec)
    from timmy_magic import notebook as magics

    ext = magics.extension(shell)
    with capture_output() as cap:
        p = ext.panel()
        p.refresh().result(timeout=5)
        p.show_details.value = True
    for name, state in widget_states(p):
        audit.check(f"panel widget {name}", state)
    audit.check("panel repr", repr(p))
    r = ext.router
    for obj in (r, r.config, *r.config.providers, r.health(), r.metrics(), ext.last_result,
                ext.conversation, shell.user_ns.get("kept")):
        audit.check(f"repr {type(obj).__name__}", repr(obj))
        audit.check(f"str {type(obj).__name__}", str(obj))
    audit.check("model_dump", [p_.model_dump() for p_ in r.config.providers])
    audit.check("model_dump_json", [p_.model_dump_json() for p_ in r.config.providers])
    records = [(rec.name, rec.getMessage(), rec.exc_text or "",
                "".join(traceback.format_exception(*rec.exc_info)) if rec.exc_info else "")
               for rec in caplog.records]
    assert any(rec[0].startswith("httpx") for rec in records), "httpx logged at DEBUG"
    audit.check(f"{len(records)} log records", records)
    audit.check("caplog text", caplog.text)
    assert not audit.leaks, audit.leaks


def test_router_errors_and_traces_never_hold_the_key(planted: Path, figures: Figures):
    from timmy_magic import ChatRequest, Router
    from timmy_magic.config import load_config
    from timmy_magic.model.errors import ConfigError, RoutingError

    audit = Audit(figures.part(PART, "places checked", "occurrences found"))
    with Router.from_config(str(planted)) as r:
        for name in ("cloud-401", "cloud-500", "cloud-echo", "claude-hole", "disabled-cloud"):
            with pytest.raises(RoutingError) as ei:
                r.complete(ChatRequest.of("hi", provider=name))
            audit.check_error(f"pinned {name}", ei.value)
            audit.check(f"trace lines {name}", ei.value.trace.lines())
        res = r.complete("hi")
        assert res.provider == "local"
        for what in (repr(res), str(res.trace), res.footer(), answer_markdown(res),
                     repr(r.check_health()), repr(r.health()), repr(r.metrics())):
            audit.check("result/health", what)
    for bad in ("bad.yaml", "bad2.yaml"):
        with pytest.raises(ConfigError) as ei:
            load_config(planted.parent / bad)
        audit.check_error(f"load {bad}", ei.value)
    assert not audit.leaks, audit.leaks


NOTEBOOK_CELLS = (
    "%load_ext timmy_magic", "%llm status", "%llm providers", "%%llm\nhello",
    "%%llm -p cloud-401 --trace\nhello", "%%llm -p cloud-echo\nhello",
    "%%llm -p cloud-500\nhello", "%llm panel", "%llm reload {tmp}/bad.yaml",
    "import os, timmy_magic\nprint(timmy_magic.last())",
)


def test_the_key_never_shows_in_an_executed_notebook(planted: Path, figures: Figures):
    import nbformat
    from nbclient import NotebookClient

    audit = Audit(figures.part(PART, "places checked", "occurrences found"))
    tmp = planted.parent
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.replace("{tmp}", str(tmp))) for c in NOTEBOOK_CELLS]
    NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp)}}).execute()
    for cell in nb.cells:
        audit.check(f"notebook cell {cell.source.splitlines()[0]}", nbformat.writes(
            nbformat.from_dict({**nb, "cells": [cell]})))
    audit.check("notebook metadata (widget state)", repr(nb.metadata))
    audit.check("whole notebook", nbformat.writes(nb))
    outputs = [o for c in nb.cells for o in c.outputs]
    assert any("a local answer" in repr(o) for o in outputs)
    assert any("cloud-401" in repr(o) and "401" in repr(o) for o in outputs)
    assert not audit.leaks, audit.leaks


FRESH = """
import sys
from timmy_magic.config import load_config
from timmy_magic.model.errors import ConfigError
for path in sys.argv[1:]:
    try:
        load_config(path)
    except ConfigError as exc:
        print(exc)
"""
NUMERIC_KEY = "98765432109876543210"


def test_config_errors_in_a_fresh_process_never_echo_the_key(tmp_path: Path, figures: Figures):
    """No key loaded yet (nothing registered for redaction): a file whose bad value is the
    key (pasted into the wrong field, or expanded from a *_KEY variable) must not echo it."""
    import os
    import subprocess
    import sys

    audit = Audit(figures.part(PART, "places checked", "occurrences found"))
    files = {
        "env_key_in_url.yaml": "{name: a, type: openai_compatible, base_url: '${OPENAI_API_KEY}'}",
        "key_in_url.yaml": f"{{name: b, type: openai_compatible, base_url: '{KEY}'}}",
        "key_with_bad_priority.yaml": f"{{name: c, type: openai, api_key: '{KEY}', priority: x}}",
        "numeric_key.yaml": f"{{name: d, type: openai, api_key: {NUMERIC_KEY}}}",
    }
    paths = []
    for name, entry in files.items():
        (tmp_path / name).write_text(f"providers:\n  - {entry}\n")
        paths.append(str(tmp_path / name))
    env = dict(os.environ, OPENAI_API_KEY=KEY, PYTHONPATH=str(Path(__file__).parents[2]))
    out = subprocess.run([sys.executable, "-c", FRESH, *paths], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == len(files) and not out.stderr, out
    for name, line in zip(files, lines):
        audit.check(f"fresh process: {name}", line)
        assert NUMERIC_KEY not in line, line
    assert not audit.leaks, audit.leaks
