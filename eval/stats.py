"""Intervals over objects: 95% bootstrap intervals for per-object means, m-out-of-n subsampling
intervals for set statistics (FID, KID, distribution distances), paired intervals for the
difference of two cells evaluated on the same objects and noise, and three-way verdicts
(equivalent / different / inconclusive) against a margin fixed in advance, with Holm's
correction within a family. One fixed resampling seed, so reruns give the same intervals."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

BOOTSTRAP = 1000  # resamples for per-object means
SET_BOOTSTRAP = 1000  # subsamples for set statistics (each one recomputes the statistic)
SUBSAMPLE = 0.5  # set statistics: subsamples of this fraction of the objects, without replacement
SEED = 1234
Z95 = 1.959963984540054  # a 95% half-width over the standard error (normal quantile)
ALPHA = 0.05  # level of every verdict (two one-sided tests, the difference test, Holm)


def resamples(n: int, count: int, seed: int = SEED) -> Tensor:
    """[count, n] object indices drawn with replacement (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(n, (count, n), generator=g)


def _half_width(stats: Tensor) -> float:
    lo, hi = torch.quantile(stats.double(), torch.tensor([0.025, 0.975], dtype=torch.double))
    return float((hi - lo) / 2)


def mean_ci(values: Tensor, count: int = BOOTSTRAP) -> tuple[float, float]:
    """Mean over objects and the half-width of its 95% bootstrap interval (NaN entries, objects
    where the metric is undefined, are left out)."""
    v = values.double().flatten()
    v = v[~torch.isnan(v)]
    if v.numel() < 2:
        return (float(v.mean()) if v.numel() else float("nan")), float("nan")
    idx = resamples(v.numel(), count)
    return float(v.mean()), _half_width(v[idx].mean(1))


def paired_ci(a: Tensor, b: Tensor, count: int = BOOTSTRAP) -> tuple[float, float]:
    """Mean of a - b over the same objects and its 95% bootstrap half-width."""
    d = a.double().flatten() - b.double().flatten()
    return mean_ci(d, count)


def subsamples(n: int, count: int, m: int, seed: int = SEED) -> Tensor:
    """[count, m] object indices, each row ``m`` distinct objects of ``n`` (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:m] for _ in range(count)])


def _subsample_half_width(stats: Tensor, m: int, n: int) -> float:
    """95% half-width for a root-n statistic from its values on m-of-n subsamples: the spread
    of the subsample values around their own mean (so the statistic's small-sample bias, e.g.
    FID's, does not move the interval), rescaled from m to n objects. Without replacement the
    subsample variance of a mean is (1/m - 1/n) times the population's, hence sqrt(m / (n - m))
    (Politis & Romano's m-out-of-n subsampling with the finite-population factor)."""
    dev = stats.double() - stats.double().mean()
    return _half_width(dev) * math.sqrt(m / (n - m))


def set_ci(
    stat: Callable[[Tensor], float], n: int, count: int = SET_BOOTSTRAP
) -> tuple[float, float]:
    """A set statistic ``stat(indices)`` on all ``n`` objects and the 95% half-width of its
    m-out-of-n subsampling distribution (``stat`` is called with subsets of distinct objects, so
    no object counts twice)."""
    full = stat(torch.arange(n))
    if n < 4:
        return float(full), float("nan")
    m = max(2, int(n * SUBSAMPLE))
    boots = torch.tensor([stat(idx) for idx in subsamples(n, count, m)], dtype=torch.float64)
    return float(full), _subsample_half_width(boots, m, n)


def paired_set_ci(
    stat_a: Callable[[Tensor], float],
    stat_b: Callable[[Tensor], float],
    n: int,
    count: int = SET_BOOTSTRAP,
) -> tuple[float, float]:
    """Difference of two set statistics on the same objects, with paired subsampling (both
    recomputed on the same subsets of distinct objects)."""
    full = stat_a(torch.arange(n)) - stat_b(torch.arange(n))
    if n < 4:
        return float(full), float("nan")
    m = max(2, int(n * SUBSAMPLE))
    boots = torch.tensor(
        [stat_a(i) - stat_b(i) for i in subsamples(n, count, m)], dtype=torch.float64
    )
    return float(full), _subsample_half_width(boots, m, n)


def excludes_zero(diff: float, half: float) -> bool:
    """A paired difference is resolved when its 95% interval excludes zero."""
    return bool(abs(diff) > half) if half == half else False


EQUIVALENT, DIFFERENT, INCONCLUSIVE = "equivalent", "different", "inconclusive"


@dataclass
class Verdict:
    """One comparison against a margin: the verdict, its p-values and what would decide it."""

    verdict: str  # equivalent | different | inconclusive
    diff: float
    half: float  # 95% half-width of the paired difference
    margin: float
    p_equivalent: float  # two one-sided tests: max of the two one-sided p-values
    p_different: float  # two-sided test of a zero difference
    objects_to_decide: int | None = None  # inconclusive: objects that would decide it


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def verdict(diff: float, half: float, margin: float, objects: int) -> Verdict:
    """Three-way verdict of a paired difference (mean ``diff``, 95% half-width ``half`` over
    ``objects`` objects) against ``margin`` (> 0, fixed before the data): *equivalent* when two
    one-sided tests put it inside (-margin, margin), *different* when it excludes zero and exceeds
    the margin, else *inconclusive*, with the objects that would decide it at this variance.
    p-values from the normal approximation of the bootstrap (SE = half / 1.96); Holm's
    correction (:func:`holm`) may turn a verdict inconclusive."""
    if not margin > 0:
        raise ValueError(f"a margin must be > 0, got {margin}")
    if half != half or half <= 0 or objects < 2:
        return Verdict(INCONCLUSIVE, diff, half, margin, 1.0, 1.0)
    se = half / Z95
    p_eq = max(_normal_sf((diff + margin) / se), _normal_sf((margin - diff) / se))
    p_diff = min(1.0, 2 * _normal_sf(abs(diff) / se))
    v = Verdict(INCONCLUSIVE, diff, half, margin, p_eq, p_diff)
    return _decide_at(v, objects, (ALPHA, ALPHA), (ALPHA, ALPHA))


def _decide_at(v: Verdict, objects: int, gates: tuple, levels: tuple) -> Verdict:
    """Fill in the verdict from the p-values: each test passes when its p is at most its gate
    (the level itself, or 1 / 0 where Holm has already decided it); ``levels`` are the tests' own
    levels, for the count of objects that would decide an inconclusive comparison."""
    (gate_eq, gate_diff), (level_eq, level_diff) = gates, levels
    if v.p_equivalent <= gate_eq:
        v.verdict = EQUIVALENT
    elif v.p_different <= gate_diff and abs(v.diff) > v.margin:
        v.verdict = DIFFERENT
    else:
        v.verdict = INCONCLUSIVE
    v.objects_to_decide = (
        None if v.verdict != INCONCLUSIVE else objects_to_decide(v, objects, level_eq, level_diff)
    )
    return v


def objects_to_decide(
    v: Verdict, objects: int, level_eq: float = ALPHA, level_diff: float = ALPHA
) -> int:
    """Objects at which the standard error, shrinking as 1/sqrt(objects) at the measured
    variance, would decide the comparison at the levels it faces (its Holm levels within a
    family): two one-sided tests at ``level_eq`` inside the margin (|d| < margin), the two-sided
    test at ``level_diff`` beyond it. At least ``objects`` + 1: the comparison is inconclusive
    at ``objects`` (Holm's step-down can stop a test that its own level alone would pass)."""
    if abs(v.diff) < v.margin:
        gap, z = v.margin - abs(v.diff), NormalDist().inv_cdf(1 - level_eq)
    else:
        gap, z = abs(v.diff), NormalDist().inv_cdf(1 - level_diff / 2)
    if gap <= 0 or v.half != v.half:
        return -1  # on the margin itself: no number of objects decides it
    se = v.half / Z95
    return max(objects + 1, int(math.ceil(objects * (z * se / gap) ** 2)))


def holm_step_down(pvalues: list[float], alpha: float = ALPHA) -> tuple[list[bool], list[float]]:
    """Holm's step-down over one family of p-values: whether each test rejects, and the level
    each faces (alpha / (k - rank), rank 0 the smallest p; the step-down stops at the first p
    above its level, so no later test rejects). NaN p-values never reject."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda i: (pvalues[i] != pvalues[i], pvalues[i]))
    passed, rejects, levels = True, [False] * k, [alpha] * k
    for rank, i in enumerate(order):
        levels[i] = alpha / (k - rank)
        passed = passed and pvalues[i] <= levels[i]
        rejects[i] = passed
    return rejects, levels


def mean_above_zero_p(mean: float, half: float) -> float:
    """One-sided p-value that a per-object mean exceeds 0, from its mean and 95% bootstrap
    half-width (normal approximation, SE = half / 1.96; NaN without an interval)."""
    if half != half or half <= 0:
        return float("nan")
    return _normal_sf(mean / (half / Z95))


def holm(verdicts: list[Verdict], objects: list[int], alpha: float = ALPHA) -> list[Verdict]:
    """Holm's step-down correction within one family of verdicts, for each of its two tests
    (equivalence and difference); returns the verdicts decided at the corrected levels."""
    levels, own = {}, {}
    for test in ("p_equivalent", "p_different"):
        rejects, own[test] = holm_step_down([getattr(v, test) for v in verdicts], alpha)
        levels[test] = [1.0 if r else 0.0 for r in rejects]  # 1: rejects at its Holm level
    out = []
    for i, v in enumerate(verdicts):
        w = Verdict(v.verdict, v.diff, v.half, v.margin, v.p_equivalent, v.p_different)
        # a test that passed Holm is decided at level 1 (any p), one that did not at level 0;
        # its own Holm level says how many objects would decide it
        gates = (levels["p_equivalent"][i], levels["p_different"][i])
        out.append(
            _decide_at(w, objects[i], gates, (own["p_equivalent"][i], own["p_different"][i]))
        )
    return out
