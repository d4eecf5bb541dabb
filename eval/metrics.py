"""Whole-image metrics on [-1, 1] images, per image (callers aggregate): PSNR, SSIM, LPIPS.
The quality axis's other families live in eval/seen.py, unseen.py, sharpness.py, geometry.py
and distribution.py; intervals in eval/stats.py."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] images as float in [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def ssim_window(shape) -> int:
    """SSIM's Gaussian window: 11, or the largest odd size that fits a smaller image."""
    return 11 if min(shape[-2:]) >= 11 else (min(shape[-2:]) // 2) * 2 - 1


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image for [..., 3, H, W] in [-1, 1] (data range 1 after mapping to [0, 1])."""
    mse = ((to_unit(a) - to_unit(b)) ** 2).flatten(-3).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM per image (torchmetrics, Gaussian window 11, sigma 1.5) for [..., 3, H, W]."""
    lead = a.shape[:-3]
    x, y = to_unit(a).reshape(-1, *a.shape[-3:]), to_unit(b).reshape(-1, *b.shape[-3:])
    k = ssim_window(a.shape)
    v = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none", kernel_size=k)
    return v.reshape(lead)


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


LPIPS_MIN_SIZE = 64  # AlexNet's pooling needs the room: smaller views are upsampled first


def lpips_distance(model, a: Tensor, b: Tensor, batch: int = 256) -> Tensor:
    """LPIPS per image for [..., 3, H, W] in [-1, 1] -> [...]; views smaller than 64 px are
    upsampled (bilinear) to 64 first."""
    lead = a.shape[:-3]
    x, y = a.reshape(-1, *a.shape[-3:]).float(), b.reshape(-1, *b.shape[-3:]).float()
    if x.shape[-1] < LPIPS_MIN_SIZE:
        x, y = (
            torch.nn.functional.interpolate(z, size=LPIPS_MIN_SIZE, mode="bilinear") for z in (x, y)
        )
    with torch.no_grad():
        d = torch.cat(
            [model(x[i : i + batch], y[i : i + batch]).flatten() for i in range(0, len(x), batch)]
        )
    return d.reshape(lead)
