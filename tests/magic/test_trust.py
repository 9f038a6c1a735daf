"""Workspace trust (issue 11): a providers.yaml found in the kernel's working directory
(a repository just cloned) runs no command and reads no environment variable until the
user trusts it with ``%llm trust``; a changed file needs trusting again.

Observed from outside: a ``launch:`` and a quota command that would each write a marker
file, a ``${VAR}`` whose value must never reach the loopback server (which records every
request), and the one line that says what was held back.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import FAST_CASCADE
from tests.support.faultserver import FaultServer
from timmy_magic import config as config_mod
from timmy_magic.config import trust as trust
from timmy_magic.model.errors import ConfigError

VALUE = "value-of-TIMMY_TRUST_PROBE-2f9c"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user config dir (the trust store lives there) and no TIMMY_PROVIDERS."""
    cfg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(cfg))
    monkeypatch.delenv("TIMMY_PROVIDERS", raising=False)
    monkeypatch.setenv("TIMMY_TRUST_PROBE", VALUE)
    assert trust.config_dir().is_relative_to(cfg)
    return cfg


@pytest.fixture
def srv() -> Iterator[FaultServer]:
    with FaultServer(cap=20) as s:
        yield s


def hostile_yaml(srv: FaultServer, work: Path) -> str:
    """A cloned repository's providers.yaml: a launch and a quota command that leave marker
    files, and an environment variable put into the URL the health check calls."""
    launch_marker, quota_marker = work / "launched", work / "quota-ran"
    launch = [sys.executable, "-c", f"open({str(launch_marker)!r}, 'w').write('x')"]
    quota = [sys.executable, "-c",
             f"open({str(quota_marker)!r}, 'w').write('x'); print('{{\"tier\": \"burst\"}}')"]
    return json.dumps({
        "cascade": FAST_CASCADE,
        "cloud_gate": {"quota": {"command": quota, "timeout_seconds": 5}},
        "providers": [
            {"name": "launched", "type": "llama_cpp", "priority": 1,
             "base_url": "http://127.0.0.1:9/v1", "models": [{"name": "m"}],
             "launch": {"command": launch, "ready_timeout": 3}},
            {"name": "leaky", "type": "openai_compatible", "cloud": True, "priority": 2,
             "base_url": srv.base_url("ok", text="leaky") + ",probe=${TIMMY_TRUST_PROBE}/v1",
             "models": [{"name": "m"}]},
            {"name": "plain", "type": "vllm_mlx", "priority": 3, "models": [{"name": "m"}],
             "base_url": srv.base_url("ok", text="a plain answer")},
        ],
    })


def run(shell: InteractiveShell, source: str) -> str:
    with capture_output() as cap:
        res = shell.run_cell(source)
    assert res.error_in_exec is None or source.startswith("%llm"), res.error_in_exec
    return cap.stdout + cap.stderr + "".join(repr(o.data) for o in cap.outputs)


def test_an_untrusted_working_dir_config_runs_nothing_and_reads_no_variable(
        shell: InteractiveShell, home: Path, srv: FaultServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "clone"
    work.mkdir()
    (work / "providers.yaml").write_text(hostile_yaml(srv, work))
    monkeypatch.chdir(work)

    shown = run(shell, "%load_ext timmy_magic")
    assert "is not trusted: held back launch of 'launched', quota command" in shown, shown
    assert "${TIMMY_TRUST_PROBE} in 'leaky' (disabled)" in shown and "%llm trust" in shown
    answer = run(shell, "%%llm\nhello")
    assert "a plain answer" in answer, answer  # the rest of the file works
    run(shell, "%llm status")
    assert not (work / "launched").exists() and not (work / "quota-ran").exists()
    assert srv.requests and all(r.params.get("probe") != VALUE for r in srv.requests)

    # trusting it: the same file now runs its commands and expands its variables
    shown = run(shell, "%llm trust")
    assert "Trusted " in shown and "launch of 'launched'" in shown, shown
    assert "the quota command" in shown and "Reloaded 3 providers" in shown, shown
    from timmy_magic import notebook as magics

    cfg = magics.get_router().config
    assert cfg.trusted and not cfg.held_back and cfg.trusted_by == "trusted with %llm trust"
    run(shell, "%%llm -p leaky\nhello")
    assert any(r.params.get("probe") == VALUE for r in srv.requests)  # expanded, trusted
    assert "matches" in run(shell, "%llm trust --list")

    # a changed file is untrusted again, on reload as on load
    (work / "providers.yaml").write_text(hostile_yaml(srv, work) + "\n# edited\n")
    shown = run(shell, "%llm reload")
    assert "is not trusted: held back launch of 'launched'" in shown, shown
    assert "changed" in run(shell, "%llm trust --list")

    # untrust forgets it
    run(shell, "%llm trust")
    assert magics.get_router().config.trusted
    shown = run(shell, "%llm untrust")
    assert "Untrusted" in shown and "held back" in shown, shown
    assert not magics.get_router().config.trusted


def test_what_a_user_names_or_owns_is_trusted(home: Path, srv: FaultServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clone" / "providers.yaml"
    path.parent.mkdir()
    path.write_text(hostile_yaml(srv, path.parent))
    monkeypatch.chdir(path.parent)
    found = config_mod.load_config()  # found by the search: not trusted
    assert not found.trusted and found.held_back
    with config_mod.found_by_search():
        assert not config_mod.load_config(path).trusted
    named = config_mod.load_config(path)  # an explicit path is the user's choice
    assert named.trusted and named.trusted_by == "named explicitly"
    assert named.provider("launched").launch is not None
    monkeypatch.setenv("TIMMY_PROVIDERS", str(path))
    assert config_mod.load_config().trusted_by == "named by $TIMMY_PROVIDERS"
    monkeypatch.delenv("TIMMY_PROVIDERS")
    own = config_mod.user_config_path()
    own.parent.mkdir(parents=True)
    own.write_bytes(path.read_bytes())
    with config_mod.found_by_search():
        assert config_mod.load_config(own).trusted_by == "in the user config dir"
    packaged = config_mod.packaged_default()
    copy = tmp_path / "clone" / "copy-of-default.yaml"
    copy.write_bytes(packaged.read_bytes())
    with config_mod.found_by_search():
        assert config_mod.load_config(copy).trusted_by == "the packaged default"


def test_a_secret_named_variable_never_goes_into_a_url_or_a_command(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-a-url-0123456789")
    for field, entry in {
        "base_url": {"base_url": "http://127.0.0.1:9/v1?leak=${OPENAI_API_KEY}"},
        "launch.command.1": {"launch": {"command": ["server", "${OPENAI_API_KEY}"]}},
    }.items():
        doc = {"providers": [{"name": "p", "type": "llama_cpp",
                              "base_url": "http://127.0.0.1:9/v1", **entry}]}
        path = tmp_path / "named.yaml"
        path.write_text(json.dumps(doc))
        with pytest.raises(ConfigError) as info:  # even in a trusted (named) file
            config_mod.load_config(path)
        assert info.value.field == field and "looks like a secret" in str(info.value)
        assert "sk-never" not in str(info.value)
    ok = {"providers": [{"name": "p", "type": "openai_compatible",
                         "base_url": "http://127.0.0.1:9/v1", "api_key": "${OPENAI_API_KEY}",
                         "headers": {"X-Key": "${OPENAI_API_KEY}"}}]}
    (tmp_path / "ok.yaml").write_text(json.dumps(ok))
    cfg = config_mod.load_config(tmp_path / "ok.yaml")
    assert cfg.providers[0].key() == "sk-never-in-a-url-0123456789"
    assert "sk-never-in-a-url-0123456789" not in repr(cfg)


def test_a_corrupt_trust_store_trusts_nothing_and_is_rewritten(
        home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = trust.store_path()
    store.parent.mkdir(parents=True)
    store.write_text("{not json")
    f = tmp_path / "p.yaml"
    f.write_text("providers: []\n")
    assert trust.entries() == [] and "corrupt" in caplog.text
    entry = trust.trust(f, f.read_bytes())
    assert trust.is_trusted(f.resolve(), entry.sha256)
    assert json.loads(store.read_text())["trusted"][0]["path"] == str(f.resolve())
    assert trust.untrust(f) and not trust.untrust(f)


def test_a_failure_caused_by_what_was_held_back_names_it_and_the_fix(
        shell: InteractiveShell, home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An edited copy of the repo's providers.yaml is untrusted: its default's launch is
    held back and no provider can answer. The block says so first, with the command that
    fixes it, not "set an API key" or "start a server"."""
    work = tmp_path / "clone"
    work.mkdir()
    marker = work / "launched"
    launch = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"]
    (work / "providers.yaml").write_text(json.dumps({"cascade": FAST_CASCADE, "providers": [
        {"name": "local-gemma", "type": "llama_cpp", "base_url": "http://127.0.0.1:9/v1",
         "models": [{"name": "m"}], "launch": {"command": launch, "ready_timeout": 3}}]}))
    monkeypatch.chdir(work)
    run(shell, "%load_ext timmy_magic")
    shown = run(shell, "%%llm\nhello")
    assert "no provider could answer" in shown
    first_hint = shown.split("What to do", 1)[-1]
    assert "is not trusted, so it was loaded without launch of" in first_hint, shown
    assert "%llm trust" in first_hint and not marker.exists()
