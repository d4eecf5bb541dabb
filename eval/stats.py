"""Intervals over objects: 95% bootstrap intervals for per-object means and for set statistics
(FID, distribution distances), and paired intervals for the difference of two cells evaluated
on the same objects and noise. One fixed resampling seed, so reruns give the same intervals."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

BOOTSTRAP = 1000  # resamples for per-object means
SET_BOOTSTRAP = 200  # resamples for set statistics (each one recomputes the statistic)
SEED = 1234


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


def set_ci(
    stat: Callable[[Tensor], float], n: int, count: int = SET_BOOTSTRAP
) -> tuple[float, float]:
    """A set statistic ``stat(indices)`` on all ``n`` objects and the 95% half-width of its
    bootstrap over objects (``stat`` is called with resampled object indices)."""
    full = stat(torch.arange(n))
    boots = torch.tensor([stat(idx) for idx in resamples(n, count)])
    return float(full), _half_width(boots)


def paired_set_ci(
    stat_a: Callable[[Tensor], float],
    stat_b: Callable[[Tensor], float],
    n: int,
    count: int = SET_BOOTSTRAP,
) -> tuple[float, float]:
    """Difference of two set statistics on the same objects, with a paired bootstrap (both
    recomputed on the same resampled objects)."""
    full = stat_a(torch.arange(n)) - stat_b(torch.arange(n))
    boots = torch.tensor([stat_a(i) - stat_b(i) for i in resamples(n, count)])
    return float(full), _half_width(boots)


def excludes_zero(diff: float, half: float) -> bool:
    """A paired difference is resolved when its 95% interval excludes zero."""
    return bool(abs(diff) > half) if half == half else False
