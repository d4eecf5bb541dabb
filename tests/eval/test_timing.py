"""Timings a sweep can rank on (eval/timing.py, eval/timing_report.py): cells timed interleaved,
median and interquartile range exact on known lists, the same-network agreement check, and
rankings that tie where the spreads overlap."""

import numpy as np
import pytest
import torch

from eval.timing import (
    cell_latencies,
    interleaved_times,
    network_key,
    pinned_threads,
    quartiles,
    spread,
)
from eval.timing_report import (
    amortised_rankings,
    latency_ranking,
    rank_tiers,
    ranking_text,
    same_network_checks,
    same_network_lines,
)


def test_calls_are_timed_round_robin_with_setup_untimed():
    log, now = [], [0.0]

    def fake(name, seconds):
        def f():
            log.append(name)
            now[0] += seconds

        return f

    def setup_c():  # untimed: it moves the clock, which must not count
        log.append("setup-c")
        now[0] += 100.0

    calls = {"a": fake("a", 0.001), "b": fake("b", 0.002), "c": (setup_c, fake("c", 0.003))}
    times = interleaved_times(calls, repeats=3, warmup=1, clock=lambda: now[0])
    assert log == ["a", "b", "setup-c", "c"] * 4  # one warm-up round, then three timed rounds
    assert times["a"] == pytest.approx([1.0] * 3)
    assert times["b"] == pytest.approx([2.0] * 3)
    assert times["c"] == pytest.approx([3.0] * 3)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        interleaved_times(calls, repeats=0)


def test_cell_latencies_interleave_cells_stage_by_stage():
    log = []

    def pipe(cell):
        return (
            None,
            lambda c, s: log.append((cell, "diffusion")) or torch.zeros(1),
            lambda v: log.append((cell, "recon")) or "g",
            lambda g: log.append((cell, "render")),
        )

    out = cell_latencies({"x": pipe("x"), "y": pipe("y")}, torch.zeros(2, 3), [0, 1], "cpu", 4)
    stages = ["diffusion", "recon", "render"]
    first = [("x", "diffusion"), ("x", "recon"), ("y", "diffusion"), ("y", "recon")]
    rounds = [(c, s) for c in "xy" for s in stages]
    assert log == first + rounds * 5  # the untimed first outputs, a warm-up round, 4 timed
    for cell in "xy":
        r = out[cell]
        assert r["latency_repeats"] == 4
        assert r["total_ms"] == pytest.approx(r["diffusion_ms"] + r["recon_ms"])
        assert r["total_ms_q1"] <= r["total_ms_q3"] and r["diffusion_ms_iqr"] >= 0


def test_quartiles_and_iqr_are_exact_on_known_lists():
    assert quartiles([1, 2, 3, 4, 5]) == (2.0, 3.0, 4.0)
    assert quartiles([4, 1, 3, 2]) == (1.75, 2.5, 3.25)
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
    s = spread("x_ms", [10, 1, 4, 7])  # sorted 1 4 7 10: quartiles at positions 0.75, 2.25
    assert s == {"x_ms": 5.5, "x_ms_iqr": 4.5, "x_ms_q1": 3.25, "x_ms_q3": 7.75}
    xs = [3.0, 9.0, 1.0, 4.0, 4.0, 12.0, 8.0]
    q1, q3 = np.percentile(xs, [25, 75])  # numpy's default: the same interpolation
    assert spread("y", xs)["y_iqr"] == pytest.approx(q3 - q1)
    with pytest.raises(ValueError, match="no timings"):
        quartiles([])


def test_threads_are_pinned_inside_and_restored():
    before = torch.get_num_threads()
    with pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pinned_threads(0):  # 0: left as they are
        assert torch.get_num_threads() == before


def _row(model, ms, network="abc", steps=50, recon=10.0):
    return {
        "model": model,
        "method": "teacher" if model == "teacher" else "finetune",
        "sampler": "euler",
        "steps": steps,
        "nfe": steps,
        "network": network,
        "diffusion_ms": ms,
        "recon_ms": recon,
    }


def test_same_network_check_flags_ten_percent_and_passes_two():
    bad = same_network_checks([_row("teacher", 1000.0), _row("finetune", 1100.0)])
    net = [c for c in bad if c["stage"] == "diffusion"]
    assert len(net) == 1 and not net[0]["agrees"]
    assert net[0]["disagreement"] == pytest.approx(0.10)
    line = same_network_lines(net)[0]
    assert "teacher@50 1000.0 ms, finetune@50 1100.0 ms" in line and "DISAGREE by 10.0%" in line
    good = same_network_checks([_row("teacher", 1000.0), _row("finetune", 1020.0)])
    (net,) = [c for c in good if c["stage"] == "diffusion"]
    assert net["agrees"] and "agree within 5% (2.0%)" in same_network_lines([net])[0]
    # the reconstructor runs in every cell: its medians are checked too
    (rec,) = [c for c in good if c["stage"] == "recon"]
    assert rec["agrees"] and rec["disagreement"] == 0
    # another network, or another step count, is not compared
    other = [_row("teacher", 1000.0), _row("dmd2", 300.0, network="xyz"), _row("f", 9.0, steps=1)]
    assert [c for c in same_network_checks(other) if c["stage"] == "diffusion"] == []
    assert "nothing to check" in same_network_lines([])[0]


def test_network_key_names_the_computation(tiny_teacher_dir):
    from students.module import Student, StudentConfig
    from teachers.io import load_teacher

    t = load_teacher(tiny_teacher_dir)
    plain = Student(t, StudentConfig())  # the teacher's network, nothing added (finetune)
    second = Student(t, StudentConfig(second_time=True))  # an extra time input
    assert network_key(plain) == network_key(t) != network_key(second)


def test_rankings_tie_where_spreads_overlap():
    items = [("b", 10.5, 10.0, 12.0), ("a", 10.0, 9.0, 11.0), ("c", 20.0, 19.0, 21.0)]
    assert rank_tiers(items) == [["a", "b"], ["c"]]
    assert ranking_text(rank_tiers(items)) == "a ≈ b < c"
    apart = [("a", 10.0, 9.5, 10.5), ("b", 12.0, 11.0, 13.0)]
    assert ranking_text(rank_tiers(apart)) == "a < b"

    def row(model, method, steps, total, q1, q3, train=0.0):
        return {"model": model, "method": method, "sampler": "euler", "steps": steps}, {
            "total_ms": total,
            "total_ms_q1": q1,
            "total_ms_q3": q3,
            "train_seconds": train,
        }

    rows = [
        {**a, **b}
        for a, b in (
            row("teacher", "teacher", 50, 800.0, 780.0, 830.0),
            row("dmd2", "dmd2", 1, 25.0, 21.0, 31.0, train=3600.0),
            row("shortcut", "shortcut", 1, 28.0, 24.0, 33.0, train=60.0),
        )
    ]
    assert latency_ranking(rows) == "dmd2@1 ≈ shortcut@1 < teacher@50"
    ranks = amortised_rankings(rows, 50)
    # 100 assets: dmd2 costs 36 s of training per asset, shortcut 0.6 s, the teacher 0.8 s
    assert ranks[0] == "- 1e+02 assets: shortcut@1 < teacher@50 < dmd2@1"
    assert ranks[-1] == "- 1e+07 assets: dmd2@1 ≈ shortcut@1 < teacher@50"
