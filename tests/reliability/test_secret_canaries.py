"""Secret canaries (issue 11): one planted secret of each kind a config can hold (an API
key, a header value, a URL password, a secret query parameter, an HTTP Basic credential)
goes to a loopback server that echoes back *everything* it received (request line and
every header) in a 401 body, in an in-stream error event after the first token, and in
the ``model`` field of an answer. Every place a user or a log can see is then scanned for
every canary and its usual encodings (percent-encoded, base64 ``user:password``):
cell outputs of every format, error blocks with ``--trace``, ``%llm status`` /
``providers``, reprs and ``str`` of the config, router, health and results, exceptions
with their whole traceback and causes, every log record at DEBUG and the panel's widget
state. A leak names the place and shows its context.

Figures: canary places checked, canary kinds, leaks (must be 0).
"""

from __future__ import annotations

import base64
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.reliability.conftest import Figures
from tests.reliability.test_secrets import everything_shown, widget_states
from tests.support.faultserver import FaultServer
from timmy_magic.notebook.display.render import answer_markdown

PART = "secret canaries"
API_KEY = "sk-canaryAPIKEY0a1b2c3d4e5f6a7b"
HEADER = "hdrCANARYHEADER9f8e7d6c5b4a"
URL_USER, URL_PASS = "alice", "pwCANARYURLPASS1q2w3e4r"
QUERY = "qkCANARYQUERY5t6y7u8i9o"
BASIC_USER, BASIC_PASS = "bob", "bpCANARYBASIC0p9o8i7u"
BASIC = base64.b64encode(f"{BASIC_USER}:{BASIC_PASS}".encode()).decode()
URL_BASIC = base64.b64encode(f"{URL_USER}:{URL_PASS}".encode()).decode()
CANARIES = {
    "api key": [API_KEY, API_KEY[7:]],
    "header value": [HEADER],
    "URL password": [URL_PASS, URL_BASIC],
    "query key": [QUERY],
    "Basic credential": [BASIC, BASIC_PASS],
}
"""Kind -> the strings whose presence anywhere is a leak (the secret, a long piece of it,
the encodings a client or server produces)."""


class Canaries:
    def __init__(self, figures: Figures) -> None:
        self.part = figures.part(PART, "canary places checked", "canary kinds", "leaks")
        self.part.set("canary kinds", len(CANARIES))
        self.leaks: dict[str, str] = {}

    def check(self, where: str, shown: object) -> None:
        text = shown if isinstance(shown, str) else repr(shown)
        self.part.add("canary places checked")
        for kind, needles in CANARIES.items():
            for needle in needles:
                for form in {needle, quote(needle, safe="")}:
                    i = text.find(form)
                    if i >= 0:
                        self.part.add("leaks")
                        self.leaks[f"{where}: {kind}"] = text[max(0, i - 100): i + 40]

    def check_error(self, where: str, exc: BaseException) -> None:
        self.check(f"{where}: str", str(exc))
        self.check(f"{where}: repr", repr(exc))
        self.check(f"{where}: traceback with causes", "".join(traceback.format_exception(exc)))
        for name in ("trace", "args"):
            if hasattr(exc, name):
                self.check(f"{where}: .{name}", getattr(exc, name))


def providers(srv: FaultServer) -> list[dict[str, Any]]:
    port = srv.url.rsplit(":", 1)[1]

    def url(mode: str, code: int = 401) -> str:
        return srv.base_url("echo", mode=mode, code=code)

    secret_url = (f"http://{URL_USER}:{URL_PASS}@127.0.0.1:{port}"
                  + url("status").split(str(port), 1)[1] + f"/v1?api-key={QUERY}&x=1")
    out: list[dict[str, Any]] = []
    for mode in ("status", "event", "model"):
        out.append({"name": f"echo-{mode}", "type": "openai_compatible", "cloud": True,
                    "priority": len(out) + 1, "api_key": "${CANARY_API_KEY}",
                    "headers": {"X-Org-Token": HEADER},
                    "base_url": url(mode), "models": [{"name": "m"}]})
    out.append({"name": "echo-urlcreds", "type": "openai_compatible", "cloud": True,
                "priority": 10, "base_url": secret_url, "models": [{"name": "m"}]})
    out.append({"name": "echo-basic", "type": "openai_compatible", "cloud": True,
                "priority": 11, "headers": {"Authorization": f"Basic {BASIC}"},
                "base_url": url("event"), "models": [{"name": "m"}]})
    out.append({"name": "claude-echo", "type": "anthropic", "priority": 12,
                "api_key": "${CANARY_API_KEY}", "headers": {"X-Org-Token": HEADER},
                "base_url": url("event"), "models": [{"name": "c"}]})
    return out


@pytest.fixture
def canary_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with FaultServer(cap=20) as srv:
        monkeypatch.setenv("CANARY_API_KEY", API_KEY)
        doc = {"cascade": {"timeout_seconds": 6, "connect_timeout_seconds": 1,
                           "first_token_timeout_seconds": 2, "idle_timeout_seconds": 2,
                           "health_timeout_seconds": 1, "health_interval_seconds": 60,
                           "max_retries_per_provider": 0, "retry_delay_seconds": 0},
               "providers": providers(srv)}
        path = tmp_path / "providers.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        monkeypatch.setenv("TIMMY_PROVIDERS", str(path))
        yield path


CELLS = [
    *(f"%%llm -p {name}{extra}\nhello" for name in
      ("echo-status", "echo-event", "echo-model", "echo-urlcreds", "echo-basic", "claude-echo")
      for extra in ("", " --trace", " --no-stream", " -f text", " -f html")),
    "%%llm --trace\nthrough the cascade", "%%llm -f json --trace\nthrough the cascade",
    "%llm status", "%llm status --cached", "%llm providers", "%llm pin echo-basic",
    "%llm unpin", "%llm history", "%llm reload", "%llm help",
    "import timmy_magic; r = timmy_magic.get_router(); print(r, r.config, r.health(), "  # noqa: ISC004
    "r.metrics(), [r.provider(n) for n in r.names], repr(timmy_magic.last()))",
]


def test_no_canary_shows_anywhere_in_the_kernel(shell: InteractiveShell, canary_config: Path,
                                                figures: Figures,
                                                caplog: pytest.LogCaptureFixture) -> None:
    canaries = Canaries(figures)
    caplog.set_level(logging.DEBUG)
    with capture_output() as cap:
        shell.run_line_magic("load_ext", "timmy_magic")
    canaries.check("load_ext", everything_shown(cap))
    echoed = 0
    for source in CELLS:
        with capture_output() as cap:
            res = shell.run_cell(source)
        shown = everything_shown(cap)
        echoed += "you sent" in shown or "POST /s/echo" in shown
        canaries.check(source, shown)
        if res.error_in_exec is not None:
            canaries.check_error(source, res.error_in_exec)
    # the server did echo: the outputs hold its echo, masked (else this test proves nothing)
    assert echoed >= 20, echoed
    from timmy_magic import notebook as magics

    ext = magics.extension(shell)
    with capture_output():
        panel = ext.panel()
        panel.refresh().result(timeout=10)
        panel.show_details.value = True
    for name, state in widget_states(panel):
        canaries.check(f"panel widget {name}", state)
    r = ext.router
    for obj in (r, r.config, *r.config.providers, r.health(), r.metrics(), ext.last_result,
                ext.conversation):
        canaries.check(f"repr {type(obj).__name__}", repr(obj))
        canaries.check(f"str {type(obj).__name__}", str(obj))
    records = [(rec.name, rec.getMessage(), rec.exc_text or "",
                "".join(traceback.format_exception(*rec.exc_info)) if rec.exc_info else "")
               for rec in caplog.records]
    canaries.check(f"{len(records)} log records", records)
    assert not canaries.leaks, "\n".join(f"{k}\n    {v!r}" for k, v in canaries.leaks.items())


def test_no_canary_in_router_errors_and_their_causes(canary_config: Path,
                                                     figures: Figures) -> None:
    from timmy_magic import ChatRequest, Router
    from timmy_magic.model.errors import RoutingError

    canaries = Canaries(figures)
    with Router.from_config(str(canary_config)) as r:
        for p in r.config.providers:
            try:
                res = r.complete(ChatRequest.of("hi", provider=p.name))
            except RoutingError as exc:
                canaries.check_error(f"pinned {p.name}", exc)
                canaries.check(f"trace {p.name}", exc.trace.lines())
                assert "401" in str(exc) or "you sent" in str(exc), str(exc)
            else:  # an answer: partial with the echo as its error, or the echo as model
                canaries.check(f"result {p.name}", (res.model, res.error, res.footer(),
                                                    repr(res), answer_markdown(res)))
                echo = res.error if res.error else res.model
                assert "you sent" in (echo or "") or "POST" in (echo or ""), res
        canaries.check("health", (r.check_health(), r.health()))
        canaries.check("config repr", (repr(r.config), str(r.config)))
        canaries.check("shown urls", [p.shown_urls for p in r.config.providers])
    assert not canaries.leaks, "\n".join(f"{k}\n    {v!r}" for k, v in canaries.leaks.items())
