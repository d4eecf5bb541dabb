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


def _cov_sqrt_trace(ca: Tensor, cb: Tensor) -> Tensor:
    """tr sqrt(ca cb) for covariances ca, cb: with ca = L L^T (Cholesky), ca cb has the
    eigenvalues of the symmetric L^T cb L, which a symmetric solver finds ~4x faster than the
    general one; falls back to the general solver when ca is singular."""
    chol, info = torch.linalg.cholesky_ex(ca)
    if int(info) == 0:
        ev = torch.linalg.eigvalsh(chol.T @ cb @ chol)
    else:
        ev = torch.linalg.eigvals(ca @ cb).real
    return ev.clamp_min(0).sqrt().sum()


def _frechet(mu_a: Tensor, ca: Tensor, mu_b: Tensor, cb: Tensor) -> float:
    """Fréchet distance between the Gaussians (mu_a, ca) and (mu_b, cb)."""
    return float(((mu_a - mu_b) ** 2).sum() + ca.trace() + cb.trace() - 2 * _cov_sqrt_trace(ca, cb))


def frechet(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets [N, F] and [M, F]."""
    return _frechet(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


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


class _Moments:
    """A feature set [B, V, F] whose subsets' mean and covariance are asked for repeatedly (the
    truth's, by both cells of a paired interval on the same subset: computed once)."""

    def __init__(self, feats: Tensor):
        self.feats = feats
        self._last: tuple[Tensor, tuple[Tensor, Tensor]] | None = None

    def mean_cov(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        if self._last is not None and self._last[0] is idx:
            return self._last[1]
        x = self.feats[idx].flatten(0, 1)
        out = (x.mean(0), torch.cov(x.T))
        self._last = (idx, out)
        return out


def _frechet_subset(real: _Moments, fake: _Moments, idx: Tensor) -> float:
    """``frechet`` on the views of the objects ``idx``."""
    return _frechet(*real.mean_cov(idx), *fake.mean_cov(idx))


class _KernelBlocks:
    """KID's kernel between the views of two feature sets [B, V, F], summed per object pair
    ([B, B]) with each object's own diagonal ([B]): a subset's KID is then sums over it."""

    def __init__(self, a: Tensor, b: Tensor):
        bsz, v, f = a.shape
        k = ((a.flatten(0, 1) @ b.flatten(0, 1).T) / f + 1) ** 3
        self.views = v
        self.diag = k.diagonal().reshape(bsz, v).sum(1) if a is b else None
        self.block = k.reshape(bsz, v, bsz, v).sum((1, 3))

    def total(self, idx: Tensor) -> Tensor:
        return self.block[idx][:, idx].sum()


def _kid_subset(aa: _KernelBlocks, bb: _KernelBlocks, ab: _KernelBlocks, idx: Tensor) -> float:
    """``kid`` on the views of the objects ``idx`` (same value, from the per-pair sums)."""
    n = idx.numel() * aa.views
    saa = (aa.total(idx) - aa.diag[idx].sum()) / (n * (n - 1))
    sbb = (bb.total(idx) - bb.diag[idx].sum()) / (n * (n - 1))
    return float(saa + sbb - 2 * ab.total(idx) / (n * n))


def _set_stats(real: Tensor, fake: Tensor, real_m: _Moments, real_k: _KernelBlocks) -> dict:
    """The subset statistics ``fid`` and ``kid`` of one generated set against the truth."""
    fm, fk, rf = _Moments(fake), _KernelBlocks(fake, fake), _KernelBlocks(real, fake)
    return {
        "fid": lambda idx: _frechet_subset(real_m, fm, idx),
        "kid": lambda idx: _kid_subset(real_k, fk, rf, idx),
    }


def distribution_metrics(
    real: Tensor, fake: Tensor, count: int = SET_BOOTSTRAP
) -> dict[str, float]:
    """FID and KID (with 95% subsampling half-widths from ``count`` subsets) between true and
    generated features [B, V, F] of the same objects."""
    stats = _set_stats(real, fake, _Moments(real), _KernelBlocks(real, real))
    out = {}
    for name, stat in stats.items():
        out[name], out[name + "_ci95"] = set_ci(stat, real.shape[0], count)
    return out


def paired_distribution(
    real: Tensor, fake_a: Tensor, fake_b: Tensor, count: int = SET_BOOTSTRAP
) -> dict[str, float]:
    """FID and KID of cell a minus cell b on the same objects, with paired 95% half-widths."""
    rm, rk = _Moments(real), _KernelBlocks(real, real)
    sa, sb = _set_stats(real, fake_a, rm, rk), _set_stats(real, fake_b, rm, rk)
    out = {}
    for name in sa:
        d, h = paired_set_ci(sa[name], sb[name], real.shape[0], count)
        out[name + "_diff"], out[name + "_diff_ci95"] = d, h
    return out
