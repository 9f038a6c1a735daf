import datetime as dt

from timmy_magic.routing.gate import QuotaSignal, SpendLedger, cost_usd, decide
from timmy_magic.routing.planner import ProviderView, pick_endpoint, plan_route


def v(name, prio, **kw):
    base = dict(enabled=True, is_cloud=False, state="healthy", circuit_available=True)
    base.update(kw)
    return ProviderView(name, prio, **base)


def test_gate_decisions():
    assert decide(local_only=True, spent_usd=0, budget_usd=None, tier=None).reason == \
        "local-only mode"
    d = decide(local_only=False, spent_usd=5, budget_usd=5, tier=None)
    assert not d.open and "budget" in d.reason
    assert not decide(local_only=False, spent_usd=0, budget_usd=5, tier="resting").open
    assert decide(local_only=False, spent_usd=0, budget_usd=5, tier="burst").open
    assert decide(local_only=False, spent_usd=1, budget_usd=5, tier="active").open


def test_ledger_rolls_over_at_midnight():
    day = [dt.date(2026, 1, 1)]
    led = SpendLedger(today=lambda: day[0])
    led.add(1.5)
    led.add(0.25)
    assert led.spent_today == 1.75
    day[0] = dt.date(2026, 1, 2)
    assert led.spent_today == 0


def test_cost():
    assert cost_usd(1000, 2000, 0.5, 1.0) == 2.5
    assert cost_usd(None, None, 1, 1) == 0


def test_quota_signal_callable_command_and_garbage():
    t = [0.0]
    calls = []
    q = QuotaSignal(func=lambda: calls.append(1) or "Resting\n", ttl=10, clock=lambda: t[0])
    assert q.tier() == "resting" and q.tier() == "resting" and len(calls) == 1
    t[0] = 11
    q.tier()
    assert len(calls) == 2
    assert QuotaSignal(command=["echo", "burst"]).tier() == "burst"
    bad = QuotaSignal(command=["echo", "sleepy"])
    assert bad.tier() is None and "sleepy" in bad.last_error
    broken = QuotaSignal(command=["false"])
    assert broken.tier() is None and "failed" in broken.last_error


def test_plan_orders_by_priority_then_file_order_and_says_why():
    views = [v("cloud", 10, is_cloud=True), v("b", 2), v("a", 1), v("a2", 1),
             v("off", 0, enabled=False), v("open", 3, circuit_available=False,
                                           circuit_retry_in=12),
             v("down", 4, state="down", detail="refused"),
             v("nokey", 5, is_cloud=True, state="not_configured")]
    p = plan_route(views, cloud_open=False, cloud_reason="local-only mode")
    assert p.order == ("a", "a2", "b")
    reasons = {s.provider: (s.reason, s.detail) for s in p.skipped}
    assert reasons == {"off": ("disabled", ""), "open": ("circuit_open", "retry in 12s"),
                       "down": ("unhealthy", "refused"),
                       "nokey": ("not_configured", ""),
                       "cloud": ("cloud_gate", "local-only mode")}
    assert p.considered[0] == "off"


def test_local_providers_are_never_gated():
    p = plan_route([v("local", 1), v("cloud", 2, is_cloud=True)], cloud_open=False)
    assert p.order == ("local",)


def test_pin_is_the_only_candidate_even_if_disabled_or_down():
    views = [v("a", 1), v("b", 2, enabled=False, state="down")]
    p = plan_route(views, pin="b")
    assert p.order == ("b",)
    assert p.skipped[0].reason == "pinned_elsewhere"
    # ...but a pin does not pass an open circuit or a closed cloud gate
    p = plan_route([v("c", 1, is_cloud=True)], pin="c", cloud_open=False)
    assert p.order == () and p.skipped[0].reason == "cloud_gate"


def test_model_filter():
    views = [v("llama", 1, models=frozenset({"gemma"})), v("oai", 2, models=frozenset()),
             v("x", 3, models=frozenset({"gpt-4o"}))]
    assert plan_route(views, model="gpt-4o").order == ("oai", "x")


def test_pick_endpoint_least_outstanding_healthy_first_round_robin():
    assert pick_endpoint([3, 1, 2], [True] * 3, [True] * 3) == 1
    assert pick_endpoint([0, 0], [True, True], [True, True], start=1) == 1
    assert pick_endpoint([0, 5], [False, True], [True, True]) == 1
    assert pick_endpoint([0, 5], [True, True], [False, True]) == 1
    assert pick_endpoint([0, 0], [False, False], [True, True]) is None


def test_half_open_circuit_gets_its_probe_even_if_last_seen_down():
    p = plan_route([v("a", 1, state="down", half_open=True), v("b", 2)])
    assert p.order == ("a", "b")


def test_an_assistants_task_skips_base_models_even_pinned():
    views = [v("base", 1, completion=True, model="gemma"), v("chat", 2)]
    plain = plan_route(views)
    assert plain.order == ("base", "chat")  # a plain prompt may go to a base model
    task = plan_route(views, needs_instructions=True)
    assert task.order == ("chat",)
    [skip] = task.skipped
    assert (skip.provider, skip.reason) == ("base", "completion_model")
    assert "gemma is a base model" in skip.detail
    pinned = plan_route(views, pin="base", needs_instructions=True)
    assert pinned.order == () and pinned.skipped_for("completion_model") == ["base"]
    # a provider that is down says so first, not that it is a base model
    down = plan_route([v("base", 1, completion=True, state="down")], needs_instructions=True)
    assert down.skipped_for("unhealthy") == ["base"]
