import threading

from timmy_magic.routing.metrics import ProviderMetrics, percentile


def test_percentile_matches_linear_interpolation():
    assert percentile([], 50) is None
    assert percentile([5], 99) == 5
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 95) == 48.0
    assert percentile([3, 1, 2], 0) == 1 and percentile([3, 1, 2], 100) == 3


def test_counters_and_derived_values():
    m = ProviderMetrics()
    for total, ttft in ((1.0, 0.1), (3.0, 0.3)):
        m.started()
        m.succeeded(total, ttft, 50.0, 0.01)
    m.started()
    m.failed()
    m.started()
    m.was_cancelled()
    m.started()  # still in flight
    s = m.snapshot("open")
    assert (s.requests, s.successes, s.failures, s.cancelled, s.in_flight) == (5, 2, 1, 1, 1)
    assert s.consecutive_failures == 1 and s.error_rate == 1 / 3
    assert s.latency_p50_s == 2.0 and s.ttft_p50_s == 0.2 and s.output_tok_s == 50.0
    assert abs(s.cost_usd - 0.02) < 1e-12 and s.circuit == "open"


def test_safe_under_concurrent_use():
    m = ProviderMetrics()

    def work():
        for i in range(2000):
            m.started()
            if i % 3:
                m.succeeded(0.01, 0.001, 10.0, 0.0)
            else:
                m.failed()
            m.snapshot()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = m.snapshot()
    assert s.requests == 16000 and s.successes + s.failures == 16000 and s.in_flight == 0
