"""3D quality of reconstructed Gaussians against the true object: Chamfer distance of the
centres, silhouette IoU in the held-out cameras, and multi-view consistency (the views
re-rendered from the Gaussians against the views they were made from)."""

from __future__ import annotations

import torch
from torch import Tensor

SILHOUETTE_ALPHA = 0.5


def chamfer(pred: Tensor, weights: Tensor, gt: Tensor, min_weight: float = 0.5) -> Tensor:
    """Chamfer distance (scene units) between weighted predicted points [B, N, 3] and ground
    truth [B, M, 3]: the weight-averaged distance from predictions to their nearest truth plus
    the mean distance from each truth point to its nearest prediction of weight >= min_weight,
    halved. Per object [B]."""
    d = torch.cdist(pred.float(), gt.float())  # [B, N, M]
    w = weights.float()
    p2g = (d.min(2).values * w).sum(1) / w.sum(1).clamp_min(1e-8)
    far = torch.full_like(d, float("inf"))
    g2p = torch.where((w >= min_weight)[..., None], d, far).min(1).values  # [B, M]
    g2p = torch.where(torch.isfinite(g2p), g2p, d.max(1).values)
    return 0.5 * (p2g + g2p.mean(1))


def silhouette_iou(pred_alpha: Tensor, true_alpha: Tensor) -> Tensor:
    """IoU of the silhouettes (alpha > 0.5) over all views of an object pooled: alphas
    [B, C, H, W] -> [B]; 1.0 when both are empty."""
    p, t = pred_alpha > SILHOUETTE_ALPHA, true_alpha > SILHOUETTE_ALPHA
    inter = (p & t).flatten(1).sum(1).double()
    union = (p | t).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
