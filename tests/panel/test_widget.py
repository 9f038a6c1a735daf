"""The panel over a real Router whose providers are loopback fault-server endpoints (healthy,
hanging, refused), driven in-process: state, clicks, router-driven updates, sync between
panels, close, reload. Flushes run through a manual timer unless the test is about the
real timer thread."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from IPython.display import display
from IPython.utils.capture import capture_output

from tests.support.faultserver import FaultServer, closed_port
from tests.support.fixtures import dispose_shell
from timmy_magic import Router
from timmy_magic.config import load_config
from timmy_magic.model.errors import NoProviderAvailable, PinnedProviderFailed
from timmy_magic.notebook.display.panel_html import AUTO_VALUE
from timmy_magic.notebook.display.widget import Panel, panel

from .conftest import FakeClock, ManualTimers, make_router, prov

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def badges(p: Panel) -> dict[str, str]:
    return dict(re.findall(r'class="timmy-badge" data-provider="([^"]+)" data-state="([^"]+)"',
                           p.table.value))


def row(p: Panel, name: str) -> str:
    m = re.search(rf'<tr class="timmy-row" data-provider="{re.escape(name)}".*?</tr>',
                  p.table.value, re.DOTALL)
    assert m, f"no row for {name}"
    return m.group(0)


def cells(p: Panel, name: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row(p, name), re.DOTALL)


def descendants(widget: object) -> list[object]:
    kids = list(getattr(widget, "children", ()))
    return kids + [d for k in kids for d in descendants(k)]


def open_panel(router: Router, timers: ManualTimers, clock: FakeClock, **kw: object) -> Panel:
    return panel(router, schedule=timers, clock=clock, check_on_open=False, **kw)


@pytest.fixture
def mixed(srv: FaultServer) -> Router:
    providers = (prov("fast", srv.base_url("ok", tokens=4, delay=0.01), 1)  # paced: a rate
                 + prov("second", srv.base_url("ok", tokens=3, model="other"), 2)
                 + prov("hangs", srv.base_url("ok", health="hang"), 3)
                 + prov("refused", f"http://127.0.0.1:{closed_port()}", 4)
                 + prov("spare", srv.base_url("ok"), 5, "enabled: false")
                 + "  - {name: cloud, type: openai, priority: 9, api_key: '${NO_SUCH_KEY}'}\n")
    r = make_router(providers, gate="cloud_gate:\n  daily_budget_usd: 2.0\n")
    yield r
    r.close()


def test_badges_follow_a_real_health_pass(mixed: Router, timers: ManualTimers,
                                          clock: FakeClock) -> None:
    p = open_panel(mixed, timers, clock)
    assert badges(p) == {"fast": "unknown", "second": "unknown", "hangs": "unknown",
                         "refused": "unknown", "spare": "disabled", "cloud": "not_configured"}
    t0 = time.monotonic()
    mixed.check_health()
    assert time.monotonic() - t0 < 0.5 + 1.5  # one health deadline for the whole pass
    timers.run()
    # "refused" never answered (a local server not started): grey "not running", with how
    # to start it; "hangs" accepts connections but its health check times out: red "down"
    assert badges(p) == {"fast": "healthy", "second": "healthy", "hangs": "down",
                         "refused": "not_running", "spare": "disabled",
                         "cloud": "not_configured"}
    fast = row(p, "fast")
    assert "model_loaded: True" in fast and "model_name: fault-model" in fast  # hover text
    assert "timed out" in row(p, "hangs") and "#cf222e" in row(p, "hangs")
    assert "#8c959f" in row(p, "refused") and "hint: nothing listening at http://127.0.0.1:" \
        in row(p, "refused") and "not running" in row(p, "refused")
    # the pin control offers what can answer: not the disabled, keyless or not running
    assert [v for _, v in p.pin_control.options] == [AUTO_VALUE, "fast", "second", "hangs"]
    assert "hint: set NO_SUCH_KEY" in row(p, "cloud") and "#8c959f" in row(p, "cloud")
    p.close()


def test_checking_state_is_shown_while_a_pass_runs(mixed: Router, timers: ManualTimers,
                                                   clock: FakeClock) -> None:
    p = open_panel(mixed, timers, clock)
    fut = p.refresh()  # returns at once: the hanging provider keeps the pass open 0.5 s
    assert not fut.done()
    deadline = time.monotonic() + 2
    while not timers.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    timers.run()
    assert badges(p)["hangs"] == "checking" and badges(p)["spare"] == "disabled"
    fut.result(timeout=3)
    timers.run()
    assert badges(p)["hangs"] == "down" and "last refresh" in p.status.value
    p.close()


def test_pin_is_bound_both_ways_and_routes_the_next_request(mixed: Router,
                                                            timers: ManualTimers,
                                                            clock: FakeClock) -> None:
    p = open_panel(mixed, timers, clock)
    labels = [label for label, _ in p.pin_control.options]  # not checked yet: all but the
    assert labels == ["Auto (cascade)", "fast", "second", "hangs", "refused"]  # off and keyless
    assert p.pin_control.value == AUTO_VALUE
    assert mixed.complete("hi").provider == "fast"
    p.pin_control.value = "second"  # what a click in the front end does
    assert mixed.pinned == "second"
    assert mixed.complete("hi").provider == "second"
    timers.run()
    assert "timmy-pinned" in row(p, "second") and "timmy-pinned" not in row(p, "fast")
    mixed.pin("fast")  # %llm pin fast
    timers.run()
    assert p.pin_control.value == "fast"
    mixed.pin(None)  # %llm unpin
    timers.run()
    assert p.pin_control.value == AUTO_VALUE and mixed.pinned is None
    p.close()


def test_metrics_refresh_after_every_request(mixed: Router, timers: ManualTimers,
                                             clock: FakeClock) -> None:
    p = open_panel(mixed, timers, clock)
    assert cells(p, "fast")[4] == "0"
    for _ in range(3):
        mixed.complete("hi")
    timers.run()
    c = cells(p, "fast")
    assert c[4] == "3" and c[5] == "0"  # requests, errors
    assert c[6] != "—" and c[7] != "—" and c[8] != "—"  # p50, TTFT, tok/s
    with pytest.raises(PinnedProviderFailed):
        mixed.complete("hi", provider="refused")
    timers.run()
    assert "1" in cells(p, "refused")[5] and badges(p)["refused"] == "not_running"
    assert [v for _, v in p.pin_control.options] == [AUTO_VALUE, "fast", "second", "hangs"]
    mixed.pin("refused")  # pinned all the same (%llm pin): shown, so the pin is visible
    timers.run()
    assert p.pin_control.value == "refused" and "refused" in [v for _, v in
                                                              p.pin_control.options]
    p.close()


def test_gate_toggle_and_budget(mixed: Router, timers: ManualTimers, clock: FakeClock) -> None:
    p = open_panel(mixed, timers, clock)
    assert p.local_only.value is False and "cloud open" in p.gate.value
    assert "daily budget: $0.00 used of $2.00, $2.00 left" in p.gate.value
    assert p.budget.value == 0 and p.budget.description == ""  # the text before says "used"
    assert list(p.gate_row.children).index(p.budget) > list(p.gate_row.children).index(p.gate)
    p.local_only.value = True  # click
    assert mixed.local_only is True and not mixed.gate().open
    timers.run()
    assert "cloud closed" in p.gate.value and "local-only mode" in p.gate.value
    mixed.set_local_only(False)  # from code / the magic
    mixed.ledger.add(0.5)
    timers.run()
    assert p.local_only.value is False and "cloud open" in p.gate.value
    assert "$0.50 used of $2.00, $1.50 left" in p.gate.value and p.budget.value == 25
    p.close()


def test_two_panels_stay_in_sync_and_a_closed_one_stops(mixed: Router,
                                                        timers: ManualTimers,
                                                        clock: FakeClock) -> None:
    t2 = ManualTimers()
    a, b = open_panel(mixed, timers, clock), open_panel(mixed, t2, clock)
    a.pin_control.value = "second"
    timers.run(), t2.run()
    assert b.pin_control.value == "second" and a.pin_control.value == "second"
    b.pin_control.value = AUTO_VALUE
    timers.run(), t2.run()
    assert a.pin_control.value == AUTO_VALUE and mixed.pinned is None
    a.close()
    assert a.closed and a.comm is None
    assert all(x.comm is None for x in descendants(a))
    before, scheduled = a.renders, timers.scheduled
    mixed.pin("fast")
    mixed.complete("hi")
    timers.run(), t2.run()
    assert a.renders == before and timers.scheduled == scheduled  # no longer subscribed
    assert b.pin_control.value == "fast" and cells(b, "fast")[4] == "1"
    b.close()
    assert mixed.listeners == ()


def test_zero_providers(timers: ManualTimers, clock: FakeClock) -> None:
    r = make_router("")
    p = open_panel(r, timers, clock)
    assert "No providers configured" in p.table.value and badges(p) == {}
    assert [label for label, _ in p.pin_control.options] == ["Auto (cascade)"]
    p.refresh().result(timeout=3)
    timers.run()
    assert "last refresh" in p.status.value
    p.close()
    r.close()


def test_one_provider(srv: FaultServer, timers: ManualTimers, clock: FakeClock) -> None:
    r = make_router(prov("only", srv.base_url("ok"), 1))
    p = open_panel(r, timers, clock)
    r.check_health()
    timers.run()
    assert badges(p) == {"only": "healthy"}
    p.close()
    r.close()


def test_twelve_providers_all_down(timers: ManualTimers, clock: FakeClock) -> None:
    names = [f"p{i:02d}" for i in range(12)]
    r = make_router("".join(prov(n, f"http://127.0.0.1:{closed_port()}", i)
                            for i, n in enumerate(names)))
    p = open_panel(r, timers, clock)
    r.check_health()
    timers.run()
    assert badges(p) == dict.fromkeys(names, "not_running")  # local, never answered
    assert [v for _, v in p.pin_control.options] == [AUTO_VALUE]
    assert p.table.value.count('class="timmy-row"') == 12
    with pytest.raises(NoProviderAvailable):
        r.complete("hi")
    timers.run()
    assert all(b == "not_running" for b in badges(p).values())
    p.close()
    r.close()


def test_reload_removes_and_adds_providers(srv: FaultServer, tmp_path: Path,
                                           timers: ManualTimers, clock: FakeClock) -> None:
    from .conftest import CASCADE

    path = tmp_path / "providers.yaml"
    path.write_text(CASCADE + "providers:\n" + prov("a", srv.base_url("ok"), 1)
                    + prov("b", srv.base_url("ok"), 2))
    r = Router(load_config(path))
    p = open_panel(r, timers, clock)
    p.pin_control.value = "b"
    path.write_text(CASCADE + "providers:\n" + prov("a", srv.base_url("ok"), 1)
                    + prov("c", srv.base_url("ok"), 3))
    r.reload()
    timers.run()
    assert set(badges(p)) == {"a", "c"}
    assert [v for _, v in p.pin_control.options] == [AUTO_VALUE, "a", "c"]
    assert p.pin_control.value == AUTO_VALUE and r.pinned is None  # the pinned one went away
    p.pin_control.value = "c"
    assert r.pinned == "c"
    path.write_text(CASCADE + "providers: []\n")
    r.reload()
    timers.run()
    assert badges(p) == {} and "No providers configured" in p.table.value
    p.close()
    r.close()


def test_details_section_expands(mixed: Router, timers: ManualTimers,
                                 clock: FakeClock) -> None:
    p = open_panel(mixed, timers, clock)
    assert p.details.layout.display == "none"
    mixed.check_health()
    p.show_details.value = True
    assert p.details.layout.display == ""
    assert "model_name: other" in p.details.value and "timed out" in p.details.value
    p.close()


def test_auto_refresh_probes_on_its_own_and_stops_on_close(srv: FaultServer,
                                                           timers: ManualTimers,
                                                           clock: FakeClock) -> None:
    r = make_router(prov("a", srv.base_url("ok", model="auto-refresh-probe"), 1))
    p = open_panel(r, timers, clock, auto_refresh_choices=(("off", 0.0), ("fast", 0.1)))

    def probes() -> int:
        return sum(1 for q in srv.requests if "auto-refresh-probe" in q.path
                   and q.path.endswith("/health"))

    p.auto_refresh.value = 0.1
    deadline = time.monotonic() + 3
    while probes() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert probes() >= 3
    p.close()
    time.sleep(0.3)
    seen = probes()
    time.sleep(0.4)
    assert probes() == seen  # stopped
    r.close()


def test_real_timer_coalesces_a_storm(srv: FaultServer) -> None:
    """The real timer thread: 60 notifications in a burst -> a handful of flushes, and the
    last state is shown."""
    r = make_router(prov("a", srv.base_url("ok"), 1))
    p = panel(r, interval=0.2, check_on_open=False)
    start = p.renders
    for i in range(60):
        r.pin("a" if i % 2 else None)
        time.sleep(0.005)
    r.pin("a")
    time.sleep(0.5)
    assert 1 <= p.renders - start <= 5
    assert p.pin_control.value == "a"
    p.close()
    r.close()


def test_updates_from_the_router_thread_reach_the_widgets(srv: FaultServer) -> None:
    r = make_router(prov("a", srv.base_url("ok"), 1))
    p = panel(r, interval=0.05, check_on_open=True)  # submits a pass: badge unknown -> healthy
    deadline = time.monotonic() + 3
    while badges(p).get("a") != "healthy" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert badges(p) == {"a": "healthy"}
    p.close()
    r.close()


def test_displays_as_a_widget_with_a_readable_text_fallback(mixed: Router,
                                                            timers: ManualTimers,
                                                            clock: FakeClock) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    p = open_panel(mixed, timers, clock)
    with capture_output() as cap:
        display(p)
    dispose_shell(ip)
    data = cap.outputs[0].data
    assert data[WIDGET_MIME]["model_id"] == p.model_id
    assert data["text/plain"].startswith("<timmy-magic panel: 6 providers, pin: auto")
    state = p.get_state()
    assert len(state["children"]) == 6
    p.close()


def test_a_click_during_a_background_render_is_not_muted(mixed: Router,
                                                         timers: ManualTimers,
                                                         clock: FakeClock) -> None:
    """The mirroring guard is per thread: while the timer thread renders, a click handled
    on the kernel thread still reaches the router."""
    p = open_panel(mixed, timers, clock)
    inside, release = threading.Event(), threading.Event()

    def slow_render() -> None:
        with p._quiet():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=slow_render)
    t.start()
    assert inside.wait(5)
    p.pin_control.value = "second"
    release.set()
    t.join(5)
    assert mixed.pinned == "second"
    p.close()


def test_timmy_magic_panel_is_the_function_whatever_was_imported(srv: FaultServer) -> None:
    """The widget module is ``timmy_magic.notebook.display.widget``, so importing it cannot rebind the
    documented call ``timmy_magic.panel(...)`` (no module-class trick needed)."""
    import timmy_magic
    import timmy_magic.notebook
    import timmy_magic.notebook.display.widget

    r = make_router(prov("a", srv.base_url("ok"), 1))
    p = timmy_magic.panel(r, check_on_open=False)
    assert isinstance(p, Panel) and badges(p) == {"a": "unknown"}
    p.close()
    r.close()
