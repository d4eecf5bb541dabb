"""The load test's latency bookkeeping: quantiles and which requests count as during a swap."""

from __future__ import annotations

import importlib.util

from tiny_util import ROOT

spec = importlib.util.spec_from_file_location("load_test", ROOT / "scripts" / "load_test.py")
load_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(load_test)


def test_quantiles_are_nearest_rank_from_below():
    xs = [float(x) for x in range(1, 101)]  # 1..100
    assert load_test.pct(xs, 0.5) == 51.0
    assert load_test.pct(xs, 0.99) == 100.0
    assert load_test.pct(list(reversed(xs)), 0.95) == 96.0  # order does not matter
    assert load_test.pct([], 0.5) is None


def test_requests_overlapping_a_swap_or_its_guard_count_as_during_swaps():
    windows = [(10.0, 10.2)]  # one activation call, answered at 10.2 s
    spans = [
        (9.0, 9.5, 1.0),  # finished before the swap: steady
        (9.9, 10.1, 2.0),  # in flight while the swap was made
        (10.5, 10.6, 3.0),  # started within the 0.5 s guard after it answered
        (10.8, 11.0, 4.0),  # after the guard: steady
    ]
    during, steady = load_test.split_by_swaps(spans, windows, guard=0.5)
    assert during == [2.0, 3.0] and steady == [1.0, 4.0]
    stats = load_test.latency_stats(during)
    assert stats == {"requests": 2, "p50_ms": 3.0, "p95_ms": 3.0, "p99_ms": 3.0}
