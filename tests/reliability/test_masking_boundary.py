"""One masking boundary, on raw values (issue 20): the class of faults where a secret
leaves the kernel in part because a summary cut or escaped it before it was masked.

Generated, not listed: hypothesis makes the secret (any length from 4, letters, digits,
backslashes, quotes), where it comes from (a secret-named environment variable, a
configured key, an ``extra`` secret), the container it sits in (a long string, a dict, a
nested list, a tuple, a set, a namedtuple, a dataclass, an object whose repr shows it, a
DataFrame cell, a DataFrame column name, a Series, a cell's source, a cell's output, an
exception's message) and the budget the context is cut to. Every text sent is then
searched for the secret and for every piece of it of ``FRAGMENT`` characters: a leak
names the container and shows the piece.

Then the outbound paths, enumerated: every public way text leaves for a provider
(``%%llm`` with ``{name}``, ``--vars``, ``--cells``, ``--error``, ``%llm fix``,
``%llm explain``, side by side, ``map``, ``Router.complete`` / ``stream`` /
``acomplete`` / ``stream_many``) sends a canary to a real loopback server that records
every body; none may hold it. A test lists the outbound entry points by signature, so a
new one fails until it is added here.

Figures: secrets generated, containers, outbound paths, leaks (must be 0).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import os
import re
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.interactiveshell import InteractiveShell

from tests.magic.conftest import FAST_CASCADE, local
from tests.magic.conftest import run_shown as run
from tests.reliability.conftest import Figures
from tests.support.faultserver import FaultServer
from tests.support.fixtures import dispose_shell
from timmy_magic.context import build_context
from timmy_magic.privacy.masking import Masker
from timmy_magic.privacy.redact import REDACT, is_secret_name

PART = "masking boundary"
FRAGMENT = 10
"""A piece of a secret this long found in what is sent is a leak (a random 10-character
string does not occur by chance)."""
ALPHABET = string.ascii_letters + string.digits + "\\'\"-_/+=.!@#%"


def leaked(secret: str, text: str) -> str | None:
    """The secret or a piece of it (``FRAGMENT`` characters) found in ``text``."""
    if secret in text:
        return secret
    for i in range(max(0, len(secret) - FRAGMENT) + 1):
        piece = secret[i:i + FRAGMENT]
        if len(piece) == FRAGMENT and piece in text:
            return piece
    return None


@pytest.fixture(scope="module")
def part(figures: Figures) -> Any:
    return figures.part(PART, "secrets generated", "containers", "outbound paths",
                        "leaks")


# ---------------------------------------------------------------- containers

@dataclasses.dataclass
class Holder:
    label: str
    inner: Any


class Opaque:
    """An object whose repr shows the secret escaped (repr of a str inside)."""

    def __init__(self, s: str) -> None:
        self.s = s

    def __repr__(self) -> str:
        return f"Opaque(config={{'name': 'svc', 'value': {self.s!r}}}, more={'x' * 90!r})"


Pair = collections.namedtuple("Pair", "name value")


def _containers(secret: str) -> dict[str, Any]:
    import pandas as pd

    pad = "lorem ipsum " * 30
    return {
        "long string": f"{pad}{secret}{pad}",
        "dict": {"service": "db", "conn": f"host=db user=me dsn-{secret}-end", "n": 3},
        "nested list": [["a", ["b", secret + "x" * 90]], "c"],
        "tuple": ("first", secret, "x" * 120),
        "set": {secret, "other"},
        "namedtuple": Pair("db", secret),
        "dataclass": Holder("h", {"v": secret}),
        "object repr": Opaque(secret),
        "dataframe cell": pd.DataFrame({"user": ["ann", "bob"],
                                        "note": [f"k={secret} and more text here", "-"]}),
        "dataframe column": pd.DataFrame({f"col_{secret}": [1, 2]}),
        "series": pd.Series(["x", f"{secret}{'y' * 60}"], name="s"),
        "long list": ["item"] * 500 + [secret],
    }


SOURCES = ("env", "configured", "extra")


@pytest.fixture(scope="module")
def kernel() -> Iterator[InteractiveShell]:
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    yield ip
    dispose_shell(ip)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=st.text(ALPHABET, min_size=4, max_size=180).filter(
           lambda s: len(set(s)) >= min(len(s), 4)
           and s.lower() not in ("true", "false", "none", "null")),  # flags, not secrets
       source=st.sampled_from(SOURCES),
       budget=st.integers(min_value=60, max_value=3000))
def test_no_piece_of_a_secret_survives_any_summary_or_cut(
        kernel: InteractiveShell, part: Any, secret: str, source: str, budget: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"APP_SERVICE_TOKEN": secret} if source == "env" else {}
    extra = [secret] if source == "extra" else []
    if source == "configured":
        REDACT.add([secret])
    part.add("secrets generated")
    containers = _containers(secret)
    kernel.user_ns.update({f"v{i}": v for i, v in enumerate(containers.values())})
    names = [f"v{i}" for i in range(len(containers))]
    ctx = build_context(kernel, f"look at these (budget {budget})", names=names,
                        extra_secrets=extra, environ=env)
    for fitted in (ctx, ctx.fit(budget)):
        for item, label in zip(fitted.items, containers):
            part.add("containers")
            found = leaked(secret, item.text)
            if found is not None:
                part.add("leaks")
            assert found is None, f"{label}: {found!r} in {item.text[:300]!r}"
        assert leaked(secret, fitted.prompt_text()) is None


def test_a_cut_cell_and_a_cut_output_never_keep_the_head_of_a_token(
        shell: InteractiveShell, part: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell longer than the cell limit is cut in the middle: a token straddling the cut
    must not go out by its head, and an output's repr must not keep its tail."""
    secret = "TOK" + "a1B2c3D4e5" * 12
    monkeypatch.setenv("DEPLOY_TOKEN", secret)
    for cut_at in (2520, 2580, 2610, 2640, 4500, 4620):  # around the head's and tail's cut
        shell.run_cell("pass", store_history=True)
        body = ("x = 1\n" * (cut_at // 6) + f"token_used = os_get('{secret}')\n"
                + "y = 2\n" * ((6000 - cut_at) // 6))
        shell.run_cell(f"def os_get(v):\n    return v\n{body}\n{{'t': token_used}}",
                       store_history=True)
        ctx = build_context(shell, "q", cells="1")
        part.add("containers")
        assert ctx.items and ctx.items[0].cut  # the cell really was cut
        assert leaked(secret, ctx.prompt_text()) is None, cut_at


def test_an_error_message_and_its_cause_are_masked_before_they_are_cut(
        shell: InteractiveShell, part: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "pw\\" + "Zx9" * 30
    monkeypatch.setenv("APP_PASSWORD", secret)
    shell.run_cell("import os\nraise KeyError({'password_hint': os.environ['APP_PASSWORD'],"
                   " 'pad': 'p' * 5000})", store_history=True)
    ctx = build_context(shell, "why?", error=True)
    part.add("containers")
    assert leaked(secret, ctx.prompt_text()) is None
    assert leaked(secret, ctx.fit(300).prompt_text()) is None


# ---------------------------------------------------------------- shapes and names

SHAPED = {
    "github classic": "ghp_" + "Ab1" * 12,
    "github fine-grained": "github_pat_11ABCDEFG0" + "x_Y9" * 15,
    "hugging face": "hf_" + "QwErTy12" * 4,
    "aws access key id": "AKIAIOSFODNN7EXAMPL2",
    "aws secret key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE2",
    "slack bot": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack user": "xoxp-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9P",
    "openai project key": "sk-proj-" + "Zq8Wm2Lx" * 20,
    "pem block": ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq9" + "Qk3" * 40
                  + "\n-----END RSA PRIVATE KEY-----"),
}


@pytest.mark.parametrize("kind", sorted(SHAPED))
def test_credentials_recognised_by_their_shape_never_go_out(
        kernel: InteractiveShell, part: Any, kind: str) -> None:
    import pandas as pd

    secret = SHAPED[kind]
    body = secret.split("\n")[1] if kind == "pem block" else secret
    for value in ({"cfg": {"deep": secret}}, pd.DataFrame({"c": [secret]}),
                  "text " * 100 + secret, Opaque(secret)):
        kernel.user_ns["shaped"] = value
        ctx = build_context(kernel, "q", names=["shaped"], environ={})
        part.add("containers")
        assert leaked(body, ctx.prompt_text()) is None, (kind, type(value).__name__)


@pytest.mark.parametrize("name", ["password", "secret", "token", "api_key", "apiKey",
                                  "db_password", "client_secret", "ACCESS_TOKEN"])
def test_a_value_under_a_secret_name_is_masked_whatever_it_is(
        kernel: InteractiveShell, part: Any, name: str) -> None:
    import pandas as pd

    value = "plain7"  # short, no shape, registered nowhere: only its name says secret
    kernel.user_ns.update(d={name: value, "user": "ann"},
                          df=pd.DataFrame({name: [value], "user": ["ann"]}),
                          code_cell=f"{name} = '{value}'")
    ctx = build_context(kernel, "q", names=["d", "df", "code_cell"], environ={})
    part.add("containers", 3)
    text = ctx.prompt_text()
    assert value not in text and "ann" in text


@pytest.mark.parametrize("env_name,is_secret", [
    ("MYSQL_PWD", True), ("DB_PASS", True), ("NPM_AUTH", True), ("OPENAI_API_KEY", True),
    ("STRIPE_KEY", True), ("GH_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True),
    ("MY_SERVICE_TOKEN_2", True), ("KEYBOARD", False), ("MAX_TOKENS", False),
    ("SSH_AUTH_SOCK", False), ("API_KEY_ID", False), ("HOME", False),
    ("TOKENIZERS_PARALLELISM", False)])
def test_secret_environment_names(env_name: str, is_secret: bool) -> None:
    assert is_secret_name(env_name) is is_secret


def test_short_secrets_are_masked_from_four_characters() -> None:
    for value in ("abcd", "hunt3r!"):
        masker = Masker(environ={"DB_PASS": value})
        assert masker.text(f"the password is {value}.") == "the password is ***."
    assert Masker(environ={"DB_PASS": "abc"}).text("abc") == "abc"  # under 4: documented


def test_code_keyword_arguments_stay_but_quoted_literals_under_secret_names_go() -> None:
    m = Masker(environ={})
    assert m.text("OpenAI(api_key=key, token=tok)") == "OpenAI(api_key=key, token=tok)"
    assert m.text('password = "hunter2"') == 'password = "***"'
    assert m.text("max_tokens = '256'") == "max_tokens = '256'"


# ---------------------------------------------------------------- outbound paths

CANARY = "cnry-" + "Q7v" * 12
OUTBOUND = {
    "%%llm {name}", "%%llm --vars", "%%llm --cells", "%%llm --error", "%llm fix",
    "%llm explain", "side by side", "map", "Router.complete", "Router.stream",
    "Router.acomplete", "Router.astream", "Router.stream_many", "Router.astream_many",
    "ChatRequest", "evaluate", "%llm eval",
}
NOT_OUTBOUND = {"Router.plan": "plans a route for a request, sends nothing"}


def test_every_outbound_entry_point_is_one_this_suite_sends_a_canary_through() -> None:
    """The Router's public methods that take a request or a prompt, and the package's
    public functions that do: each must be listed in OUTBOUND (and so tested below)."""
    import timmy_magic
    from timmy_magic.routing.router import Router

    found = {f"Router.{name}" for name, fn in inspect.getmembers(Router, inspect.isfunction)
             if not name.startswith("_")
             and {"prompt", "request", "requests", "messages"} & set(
                 inspect.signature(fn).parameters)}
    for name in getattr(timmy_magic, "__all__", ()):
        obj = getattr(timmy_magic, name)
        if inspect.isfunction(obj) and {"prompt", "template", "messages"} & set(
                inspect.signature(obj).parameters):
            found.add(name)
    assert found <= OUTBOUND | set(NOT_OUTBOUND), f"new outbound entry points, not canary-tested: {found - OUTBOUND}"


@pytest.fixture
def canary_shell(shell: InteractiveShell, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[tuple[InteractiveShell, FaultServer]]:
    import yaml

    monkeypatch.setenv("CANARY_SERVICE_TOKEN", CANARY)
    with FaultServer(cap=20) as srv:
        doc = {"cascade": FAST_CASCADE, "providers": [
            local("alpha", srv.base_url("ok", text="fine"),
                  models=[{"name": "m1", "context_window": 2048}, {"name": "m2"}]),
            local("beta", srv.base_url("ok", text="fine"), priority=2)]}
        path = tmp_path / "providers.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        monkeypatch.setenv("TIMMY_PROVIDERS", str(path))
        run(shell, "%load_ext timmy_magic")
        shell.user_ns.update(tok=CANARY, cfg={"service": {"token_value": CANARY * 3}},
                             rows=[{"t": CANARY}])
        srv.reset()
        yield shell, srv


def _bodies(srv: FaultServer) -> str:
    return "\n".join(r.body.decode("utf-8", "replace") for r in srv.requests)


def test_no_outbound_path_sends_the_canary(canary_shell: tuple[InteractiveShell, FaultServer],
                                           part: Any) -> None:
    import timmy_magic

    ip, srv = canary_shell
    cells = {
        "%%llm {name}": "%%llm -p alpha\nIs {tok} right?",
        "%%llm --vars": "%%llm -p alpha --vars cfg,tok\nq",
        "%%llm --cells": "%%llm -p alpha --cells 2\nq",
        "%%llm --error": "%%llm -p alpha --error\nq",
        "%llm fix": "%llm fix -p alpha",
        "%llm explain": "%llm explain -p alpha",
        "side by side": "%%llm -p alpha -m m1,m2 --vars cfg\nq {tok}",
        "map": "r = timmy_magic.map('say {t}', [{'t': tok}], provider='alpha')",
        # the rows, the system prompt and a judge's rubric (its grading request) go out
        "evaluate": ("e = timmy_magic.evaluate([{'t': tok}], 'say {t}', ['alpha', 'beta'], "
                     "timmy_magic.judge('beta', f'not {tok}'), system=f'key {tok}', "
                     "progress=False)"),
        "%llm eval": "%llm eval rows 'say {t}' -p alpha,beta:m9 --system 'a {tok}'",
    }
    ip.run_cell("import timmy_magic\nprint(cfg, tok)", store_history=True)
    ip.run_cell("raise ValueError(f'bad token {tok} in ' + repr(cfg))", store_history=True)
    for label, source in cells.items():
        before = len(srv.requests)
        _, shown = run(ip, source)
        part.add("outbound paths")
        assert len(srv.requests) > before, f"{label}: nothing was sent ({shown[-300:]})"
        assert leaked(CANARY, _bodies(srv)) is None, label
    router = timmy_magic.get_router()
    from timmy_magic.model.chat import ChatRequest

    router.complete(f"why {CANARY}", provider="alpha")
    list(router.stream(ChatRequest.of(f"why {CANARY}", provider="alpha")))
    router.submit(router.acomplete(ChatRequest.of(f"why {CANARY}", provider="alpha"))
                  ).result(timeout=30)

    async def astream() -> None:
        async for _ in router.astream(ChatRequest.of(f"why {CANARY}", provider="alpha")):
            pass

    router.submit(astream()).result(timeout=30)
    list(router.stream_many([ChatRequest.of(f"a {CANARY}", provider="alpha"),
                             ChatRequest.of(f"b {CANARY}", provider="beta")]))

    async def astream_many() -> None:
        async for _ in router.astream_many([ChatRequest.of(f"c {CANARY}", provider="alpha")]):
            pass

    router.submit(astream_many()).result(timeout=30)
    part.add("outbound paths", 6)
    found = leaked(CANARY, _bodies(srv))
    if found:
        part.add("leaks")
    assert found is None
    assert os.environ["CANARY_SERVICE_TOKEN"] == CANARY  # still set: masked, not unset
    assert re.search(r"\*\*\*", _bodies(srv))  # the mask went out where the canary was
