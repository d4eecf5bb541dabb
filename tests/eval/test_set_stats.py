"""FID/KID on feature sets: the fast routes the intervals take equal the definitions."""

import pytest
import torch

from eval.distribution import (
    _cov_sqrt_trace,
    _KernelBlocks,
    _Moments,
    _set_stats,
    distribution_metrics,
    frechet,
    kid,
    paired_distribution,
)


def test_cholesky_route_equals_general_solver():
    torch.manual_seed(0)
    a = torch.randn(400, 8, dtype=torch.float64)
    # the symmetric (Cholesky) route to tr sqrt(ca cb) equals the general eigenvalue solver
    b = torch.randn(400, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    general = torch.linalg.eigvals(ca @ cb).real.clamp_min(0).sqrt().sum()
    assert float(_cov_sqrt_trace(ca, cb)) == pytest.approx(float(general), rel=1e-10)
    singular = torch.zeros(8, 8, dtype=torch.float64)  # no Cholesky: the general solver answers
    assert float(_cov_sqrt_trace(singular, cb)) == pytest.approx(0.0, abs=1e-9)


def test_subset_set_statistics_equal_the_definitions():
    """The intervals' subsets reuse per-object sums: on any subset of objects they give exactly
    frechet/kid of that subset's views, and the paired difference is the two recomputed."""
    torch.manual_seed(1)
    real = torch.randn(12, 3, 5, dtype=torch.float64)
    fa = real + 0.3 * torch.randn(12, 3, 5, dtype=torch.float64)
    fb = 2 * torch.randn(12, 3, 5, dtype=torch.float64) + 1
    rm, rk = _Moments(real), _KernelBlocks(real, real)
    for idx in (torch.arange(12), torch.tensor([3, 0, 7, 11, 5]), torch.tensor([2, 9])):
        r, f = real[idx].flatten(0, 1), fa[idx].flatten(0, 1)
        s = _set_stats(real, fa, rm, rk)
        assert s["fid"](idx) == pytest.approx(frechet(r, f), rel=1e-9, abs=1e-12)
        assert s["kid"](idx) == pytest.approx(kid(r, f), rel=1e-9, abs=1e-12)
    full = distribution_metrics(real, fb, count=50)
    assert full["fid"] == pytest.approx(frechet(real.flatten(0, 1), fb.flatten(0, 1)), rel=1e-9)
    paired = paired_distribution(real, fa, fb, count=50)
    whole_a = frechet(real.flatten(0, 1), fa.flatten(0, 1))
    whole_b = frechet(real.flatten(0, 1), fb.flatten(0, 1))
    assert paired["fid_diff"] == pytest.approx(whole_a - whole_b, rel=1e-9)
    assert paired["fid_diff"] < 0 < paired["fid_diff_ci95"]  # fa is the closer set
