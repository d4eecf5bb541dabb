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


def test_requests_arriving_near_a_swap_count_as_during_swaps():
    windows = [(10.0, 10.2)]  # one activation call, answered at 10.2 s
    spans = [
        (9.0, 9.5, 1.0),  # arrived 1 s before the call: steady
        (9.6, 10.1, 2.0),  # arrived within the 0.5 s guard before it
        (10.5, 10.6, 3.0),  # arrived within the guard after it answered
        (10.8, 11.0, 4.0),  # after the guard: steady
        (8.0, 10.1, 5.0),  # in flight during the swap, but arrived long before: steady
    ]
    during, steady = load_test.split_by_swaps(spans, windows, guard=0.5)
    assert during == [2.0, 3.0] and steady == [1.0, 4.0, 5.0]
    stats = load_test.latency_stats(during)
    assert stats == {"requests": 2, "p50_ms": 3.0, "p95_ms": 3.0, "p99_ms": 3.0}


def test_swaps_that_cost_nothing_give_a_ratio_near_one():
    """Durations drawn independently of the swaps: splitting by arrival gives during and steady
    the same distribution; splitting by overlap (every request in flight during a swap) would
    pick the long requests and report swaps as slow."""
    import random

    rng = random.Random(0)
    windows = [(t, t + 0.05) for t in (2.0 * k for k in range(1, 500))]
    spans = []
    for _ in range(10000):
        t0 = rng.uniform(0, 1000)
        d = rng.lognormvariate(-0.5, 0.6)  # seconds, median 0.6
        spans.append((t0, t0 + d, d * 1000))
    during, steady = load_test.split_by_swaps(spans, windows, guard=0.5)
    ratio = load_test.pct(during, 0.99) / load_test.pct(steady, 0.99)
    assert 0.9 < ratio < 1.1, ratio
    # the overlap rule on the same data: biased towards long requests
    hit = [any(a <= w1 + 0.5 and b >= w0 for w0, w1 in windows[int(a // 2) - 1 : int(b // 2) + 2])
           for a, b, _ in spans]  # fmt: skip
    over = [ms for (_, _, ms), h in zip(spans, hit) if h]
    calm = [ms for (_, _, ms), h in zip(spans, hit) if not h]
    assert load_test.pct(over, 0.99) / load_test.pct(calm, 0.99) > 1.2
