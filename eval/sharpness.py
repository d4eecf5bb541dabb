"""Sharpness and grain: high-frequency energy (mean absolute Laplacian) of the object's pixels
relative to the truth's on the same pixels. 1.0 = the truth's; below 1 is blurrier, above 1
carries residual noise or false detail.

The pooled ratio can be fooled: a blurred view and a noisy view pool to 1, and blur plus noise
lands on the truth's energy. Two figures that cannot: the per-view log error (the mean over views
with object pixels of |log ratio|: 0 only when every view has the truth's energy) and the
high-frequency correlation with the truth on seen pixels (noise adds energy but no correlation,
so it does not count as detail)."""

from __future__ import annotations

import torch
from torch import Tensor

from eval.metrics import to_unit

_LAPLACE = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])


def laplacian_energy(x: Tensor) -> Tensor:
    """|Laplacian| summed over channels, [..., H-2, W-2], for images [..., 3, H, W] in [-1, 1]."""
    flat = to_unit(x).reshape(-1, 1, *x.shape[-2:])
    lap = torch.nn.functional.conv2d(flat, _LAPLACE[None, None].to(flat))
    return lap.abs().reshape(*x.shape[:-2], *lap.shape[-2:]).sum(-3)


def sharpness_ratio(gen: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Per object [B]: high-frequency energy of ``gen`` over that of ``gt`` on the object pixels
    ``mask`` [B, V, H, W] (views [B, V, 3, H, W]), pooled over views."""
    m = mask[..., 1:-1, 1:-1].float()
    num = (laplacian_energy(gen) * m).flatten(1).sum(1)
    den = (laplacian_energy(gt) * m).flatten(1).sum(1)
    return num / den.clamp_min(1e-8)


def sharpness(x: Tensor) -> Tensor:
    """Mean absolute Laplacian of each whole image [..., 3, H, W] -> [...] (no mask)."""
    return laplacian_energy(x).flatten(-2).mean(-1) / 3


def sharpness_log_error(gen: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Per object [B]: mean over views with object pixels of |log(energy ratio)| on ``mask``
    [B, V, H, W]; 0 when every view has the truth's high-frequency energy."""
    m = mask[..., 1:-1, 1:-1].float()
    num = (laplacian_energy(gen) * m).flatten(2).sum(2)  # [B, V]
    den = (laplacian_energy(gt) * m).flatten(2).sum(2)
    has = (m.flatten(2).sum(2) > 0) & (den > 1e-8)
    err = (num.clamp_min(1e-8) / den.clamp_min(1e-8)).log().abs()
    n = has.sum(1)
    out = (err * has).sum(1) / n.clamp_min(1)
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def _laplacian(x: Tensor) -> Tensor:
    """Signed Laplacian per channel, [..., 3, H-2, W-2], for images [..., 3, H, W]."""
    flat = to_unit(x).reshape(-1, 1, *x.shape[-2:])
    lap = torch.nn.functional.conv2d(flat, _LAPLACE[None, None].to(flat))
    return lap.reshape(*x.shape[:-2], *lap.shape[-2:])


def hf_correlation(gen: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Per object [B]: correlation of ``gen``'s and the truth's Laplacians (all channels) over
    the pixels of ``mask`` [B, V, H, W] (the seen pixels); 1 = the truth's detail, 0 = none of
    it (noise or blur); NaN without pixels."""
    m = mask[..., 1:-1, 1:-1][:, :, None].expand(-1, -1, 3, -1, -1).flatten(1).double()
    a, b = _laplacian(gen).flatten(1).double(), _laplacian(gt).flatten(1).double()
    n = m.sum(1).clamp_min(1)
    a = a - (a * m).sum(1, keepdim=True) / n[:, None]
    b = b - (b * m).sum(1, keepdim=True) / n[:, None]
    cov = (a * b * m).sum(1)
    var = ((a * a * m).sum(1) * (b * b * m).sum(1)).sqrt()
    out = cov / var.clamp_min(1e-12)
    return torch.where((m.sum(1) > 1) & (var > 0), out, torch.full_like(out, float("nan")))
