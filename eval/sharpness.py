"""Sharpness and grain: high-frequency energy (mean absolute Laplacian) of the object's pixels
relative to the truth's on the same pixels. 1.0 = the truth's; below 1 is blurrier, above 1
carries residual noise or false detail."""

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
