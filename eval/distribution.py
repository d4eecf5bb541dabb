"""FID and KID on the lab encoder's features, per object set, with bootstrap intervals over
objects (each object contributes all its views; resampling draws whole objects)."""

from __future__ import annotations

import torch
from torch import Tensor

from eval.stats import SET_BOOTSTRAP, paired_set_ci, set_ci


@torch.no_grad()
def features(encoder, views: Tensor, batch: int = 256) -> Tensor:
    """Encoder features of views [B, V, 3, H, W]: [B, V, F] in float64."""
    flat = views.flatten(0, 1)
    out = torch.cat([encoder(flat[i : i + batch]) for i in range(0, flat.shape[0], batch)])
    return out.double().reshape(*views.shape[:2], -1)


def frechet(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets [N, F] and [M, F]."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    # tr sqrt(ca cb) = sum of square roots of the eigenvalues of ca cb (real, >= 0 in theory)
    ev = torch.linalg.eigvals(ca @ cb).real.clamp_min(0)
    return float(((mu_a - mu_b) ** 2).sum() + ca.trace() + cb.trace() - 2 * ev.sqrt().sum())


def kid(a: Tensor, b: Tensor) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel (x.y / F + 1)^3 between [N, F] and
    [M, F] (the KID estimator, on the whole sets)."""
    f = a.shape[1]
    kaa, kbb, kab = ((a @ a.T) / f + 1) ** 3, ((b @ b.T) / f + 1) ** 3, ((a @ b.T) / f + 1) ** 3
    n, m = a.shape[0], b.shape[0]
    saa = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    sbb = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(saa + sbb - 2 * kab.mean())


def distribution_distances(encoder, real: Tensor, fake: Tensor) -> dict[str, float]:
    """FID and KID on the encoder's features between image sets [N, 3, H, W] (no interval)."""
    fr, ff = features(encoder, real[:, None]), features(encoder, fake[:, None])
    a, b = fr.flatten(0, 1), ff.flatten(0, 1)
    return {"fid": frechet(a, b), "kid": kid(a, b)}


def _stat(fn, real: Tensor, fake: Tensor):
    return lambda idx: fn(real[idx].flatten(0, 1), fake[idx].flatten(0, 1))


def distribution_metrics(
    real: Tensor, fake: Tensor, count: int = SET_BOOTSTRAP
) -> dict[str, float]:
    """FID and KID (with 95% subsampling half-widths from ``count`` subsets) between true and
    generated features [B, V, F] of the same objects."""
    n = real.shape[0]
    out = {}
    for name, fn in (("fid", frechet), ("kid", kid)):
        out[name], out[name + "_ci95"] = set_ci(_stat(fn, real, fake), n, count)
    return out


def paired_distribution(
    real: Tensor, fake_a: Tensor, fake_b: Tensor, count: int = SET_BOOTSTRAP
) -> dict[str, float]:
    """FID and KID of cell a minus cell b on the same objects, with paired 95% half-widths."""
    n = real.shape[0]
    out = {}
    for name, fn in (("fid", frechet), ("kid", kid)):
        d, h = paired_set_ci(_stat(fn, real, fake_a), _stat(fn, real, fake_b), n, count)
        out[name + "_diff"], out[name + "_diff_ci95"] = d, h
    return out
