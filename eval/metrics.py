"""Image metrics on [-1, 1] images, per image (callers aggregate)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure


def _unit(x: Tensor) -> Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image for [..., 3, H, W] in [-1, 1] (data range 1 after mapping to [0, 1])."""
    mse = ((_unit(a) - _unit(b)) ** 2).flatten(-3).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM per image (torchmetrics, Gaussian window 11, sigma 1.5) for [..., 3, H, W]."""
    lead = a.shape[:-3]
    x, y = _unit(a).reshape(-1, *a.shape[-3:]), _unit(b).reshape(-1, *b.shape[-3:])
    k = 11 if min(a.shape[-2:]) >= 11 else (min(a.shape[-2:]) // 2) * 2 - 1
    v = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none", kernel_size=k)
    return v.reshape(lead)


def mean_ci(values: Tensor) -> tuple[float, float]:
    """Mean and 95% normal-approximation half-width of the confidence interval."""
    v = values.double().flatten()
    if v.numel() < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(1.96 * v.std() / v.numel() ** 0.5)


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


ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet weights, LPIPS's backbone


def load_lpips():
    """(LPIPS model, "") when its AlexNet backbone weights are in the local torch cache, else
    (None, the reason). Never downloads."""
    from pathlib import Path

    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if not ckpt.exists():
        return None, (
            f"LPIPS needs AlexNet backbone weights, not in the local torch cache ({ckpt}) and "
            "this machine cannot download them"
        )
    import lpips

    return lpips.LPIPS(net="alex", verbose=False).eval(), ""


def sharpness(x: Tensor) -> Tensor:
    """Mean absolute Laplacian per image ([..., 3, H, W] in [-1, 1]): high-frequency energy.
    Compared with the truth's, < 1 means blurrier and > 1 means noisier or more detailed."""
    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32)
    flat = _unit(x).reshape(-1, 1, *x.shape[-2:])
    lap = torch.nn.functional.conv2d(flat, k[None, None])
    return lap.abs().reshape(*x.shape[:-2], -1).mean((-1, -2))
