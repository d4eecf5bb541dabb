"""Intervals and verdicts on cases with known answers."""

import math

import pytest
import torch

from eval.stats import (
    DIFFERENT,
    EQUIVALENT,
    INCONCLUSIVE,
    holm,
    holm_step_down,
    mean_above_zero_p,
    set_ci,
    subsamples,
    verdict,
)


def test_subsamples_draw_distinct_objects():
    idx = subsamples(50, 20, 25)
    assert idx.shape == (20, 25)
    assert all(len(set(r.tolist())) == 25 for r in idx)  # no object counts twice
    assert not torch.equal(idx[0], idx[1])


def test_set_interval_of_a_mean_is_the_textbook_one():
    x = torch.randn(400, generator=torch.Generator().manual_seed(0)).double()
    full, half = set_ci(lambda i: float(x[i].mean()), 400)
    assert full == pytest.approx(float(x.mean()))
    assert half == pytest.approx(1.96 * float(x.std()) / math.sqrt(400), rel=0.12)


def test_set_interval_ignores_a_small_sample_bias():
    """FID-like statistics are biased by c / (objects used): the subsample values' spread
    around their own mean is what sets the width, so a 1/m bias neither widens nor moves it."""
    x = torch.randn(200, generator=torch.Generator().manual_seed(1)).double()
    _, plain = set_ci(lambda i: float(x[i].mean()), 200)
    full, biased = set_ci(lambda i: float(x[i].mean()) + 5.0 / len(i), 200)
    assert biased == pytest.approx(plain, rel=1e-9)
    assert full == pytest.approx(float(x.mean()) + 5.0 / 200)


def test_three_way_verdicts():
    assert verdict(0.0, 0.1, 0.5, 100).verdict == EQUIVALENT
    assert verdict(1.0, 0.1, 0.5, 100).verdict == DIFFERENT
    # resolved from zero but inside the margin: equivalent, not "different"
    assert verdict(0.1, 0.05, 0.2, 100).verdict == EQUIVALENT
    # beyond the margin but its interval touches zero: not different
    assert verdict(0.6, 0.7, 0.5, 100).verdict == INCONCLUSIVE
    wide = verdict(0.0, 1.0, 0.5, 100)
    # TOST at 5%: the one-sided z (1.645) times SE (1 / 1.96) must fit in the 0.5 margin
    assert wide.verdict == INCONCLUSIVE
    assert wide.objects_to_decide == math.ceil(
        100 * (1.6448536269514722 / 1.959963984540054 / 0.5) ** 2
    )
    assert wide.objects_to_decide == 282
    # beyond the margin: the two-sided z (1.96) times SE must fit under the difference
    far = verdict(0.8, 1.0, 0.5, 100)
    assert far.verdict == INCONCLUSIVE and far.objects_to_decide == math.ceil(100 / 0.8**2)
    assert verdict(0.0, float("nan"), 0.5, 100).verdict == INCONCLUSIVE
    with pytest.raises(ValueError, match="a margin must be > 0"):
        verdict(0.0, 0.1, 0.0, 100)


def test_two_one_sided_tests_match_the_90_percent_interval():
    # equivalence at 5% by TOST <=> the 90% interval lies inside the margin
    half95, margin = 0.2, 0.3
    se = half95 / 1.959963984540054
    edge = margin - 1.6448536269514722 * se  # the mean where the 90% interval touches it
    assert verdict(edge - 1e-6, half95, margin, 50).verdict == EQUIVALENT
    assert verdict(edge + 1e-3, half95, margin, 50).verdict == INCONCLUSIVE


def test_holm_keeps_only_what_survives_the_family():
    # p = 0.04 each: 0.5 - d = z(0.96) x SE with SE = 0.2 / 1.96
    d = 0.5 - 1.7506860712521692 * 0.2 / 1.959963984540054
    weak = verdict(d, 0.2, 0.5, 100)
    assert weak.p_equivalent == pytest.approx(0.04) and weak.verdict == EQUIVALENT
    strong = verdict(0.0, 0.05, 0.5, 100)
    assert strong.p_equivalent < 1e-6
    # Holm: the smallest p faces 0.05 / 2, the next 0.05 / 1
    assert [v.verdict for v in holm([strong, weak], [100, 100])] == [EQUIVALENT, EQUIVALENT]
    two_weak = holm([weak, weak], [100, 100])
    assert [v.verdict for v in two_weak] == [INCONCLUSIVE, INCONCLUSIVE]  # 0.04 > 0.025 stops
    assert two_weak[0].objects_to_decide > 100
    # the count is at the level each test faces in the family: 0.025 for the smaller p, where
    # the unadjusted level (p = 0.04 <= 0.05) would claim the 100 objects already decide it
    z = 1.959963984540054  # one-sided at 0.025
    need = math.ceil(100 * (z * (0.2 / 1.959963984540054) / (0.5 - d)) ** 2)
    assert sorted(v.objects_to_decide for v in two_weak) == [101, need]


def test_holm_step_down_is_holm_not_bonferroni():
    # levels 0.05/3, 0.05/2, 0.05/1: all three reject; Bonferroni (0.05/3 each) would stop at 0.02
    assert holm_step_down([0.04, 0.001, 0.02]) == ([True, True, True], [0.05, 0.05 / 3, 0.025])
    # the step-down stops at the first p above its level: 0.03 > 0.025, so neither rejects
    assert holm_step_down([0.03, 0.03])[0] == [False, False]
    # a test without an interval (NaN) never rejects, and faces the last level
    assert holm_step_down([float("nan"), 0.001]) == ([False, True], [0.05, 0.025])


def test_mean_above_zero_p_from_an_interval():
    se = 0.05
    z95 = 1.959963984540054
    assert mean_above_zero_p(1.6448536269514722 * se, z95 * se) == pytest.approx(0.05)
    assert mean_above_zero_p(0.0, 0.1) == pytest.approx(0.5)
    assert math.isnan(mean_above_zero_p(0.1, float("nan")))
