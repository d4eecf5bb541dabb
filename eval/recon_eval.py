"""Quality and speed of a reconstructor: held-out renders, geometry, latency, and a baseline."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from eval.geometry import chamfer
from eval.metrics import lpips_distance, psnr, ssim
from eval.stats import mean_ci
from eval.timing import device_name, time_ms
from recon.cameras import camera_rays
from recon.gaussians import Gaussians
from recon.raster import rasterize

BACKGROUND_LEVEL = 0.97  # a pixel whose channels are all above this (in [0, 1]) is background


def unproject_baseline(views: Tensor, viewmats: Tensor, Ks: Tensor, distance: float) -> Gaussians:
    """The naive reconstructor: every non-background input pixel becomes an opaque isotropic
    Gaussian at a constant camera depth (the rig distance), one pixel wide, with its colour."""
    b, v, _, h, w = views.shape
    origin, dirs = camera_rays(viewmats, Ks, w, h, normalize=False)
    means = (origin + distance * dirs).expand(b, v, h, w, 3).reshape(b, -1, 3)
    colors = ((views + 1) / 2).movedim(2, -1).reshape(b, -1, 3)
    opac = (colors.min(-1).values < BACKGROUND_LEVEL).float() * 0.99
    px = distance / Ks[..., 0, 0].reshape(-1)[0]
    return Gaussians(
        means=means,
        quats=torch.tensor([1.0, 0, 0, 0]).expand(b, means.shape[1], 4),
        scales=torch.full_like(means, float(px) * 0.7),
        opacities=opac,
        colors=colors,
    )


def render_images(g: Gaussians, viewmats: Tensor, K: Tensor, size: int) -> Tensor:
    """Renders [B, C, 3, H, W] in [-1, 1] on white of Gaussians [B, N] in cameras [C, 4, 4]."""
    return render_with_alpha(g, viewmats, K, size)[0]


def render_with_alpha(g: Gaussians, viewmats: Tensor, K: Tensor, size: int):
    """``render_images`` and the rendered alpha [B, C, H, W] of the same pass."""
    b = g.means.shape[0]
    vm = viewmats.to(g.means).expand(b, -1, -1, -1)
    Ks = K.to(g.means).expand(b, vm.shape[1], 3, 3)
    rgb, alpha, _ = rasterize(
        g, vm, Ks, size, size, background=torch.ones(3, device=g.means.device)
    )
    return (rgb.clamp(0, 1) * 2 - 1).movedim(-1, -3), alpha[..., 0]


def recon_metrics(
    g: Gaussians,
    heldout: Tensor,
    heldout_vm: Tensor,
    K: Tensor,
    truth_means: Tensor,
    lpips=None,
) -> dict[str, Tensor]:
    """Per-object held-out PSNR/SSIM (and LPIPS with its model) and Chamfer distance of
    opacity-weighted centres."""
    size = heldout.shape[-1]
    img = render_images(g, heldout_vm, K, size).cpu()
    out = {
        "psnr": psnr(img, heldout).mean(1),
        "ssim": ssim(img, heldout).mean(1),
        "chamfer": chamfer(g.means.cpu(), g.opacities.cpu(), truth_means),
    }
    if lpips is not None:
        out["lpips"] = lpips_distance(lpips, img, heldout).mean(1)
    return out


def summarize(per_object: dict[str, Tensor]) -> dict[str, float]:
    out = {}
    for k, v in per_object.items():
        out[k], out[k + "_ci95"] = mean_ci(v)
    return out


def evaluate(
    reconstruct: Callable[[Tensor], Gaussians],
    targets: Tensor,
    heldout: Tensor,
    truth_means: Tensor,
    heldout_vm: Tensor,
    K: Tensor,
    batch: int = 16,
    lpips=None,
) -> dict[str, float]:
    """Mean metrics over objects of ``reconstruct(views [B, V, 3, H, W]) -> Gaussians``."""
    parts: dict[str, list[Tensor]] = {}
    with torch.inference_mode():
        for i in range(0, targets.shape[0], batch):
            g = reconstruct(targets[i : i + batch])
            m = recon_metrics(
                g, heldout[i : i + batch], heldout_vm, K, truth_means[i : i + batch], lpips
            )
            for k, v in m.items():
                parts.setdefault(k, []).append(v)
    return summarize({k: torch.cat(v) for k, v in parts.items()})


def latency(
    reconstruct: Callable[[Tensor], Gaussians],
    views: Tensor,
    heldout_vm: Tensor,
    K: Tensor,
    device: torch.device | str,
    repeats: int = 5,
) -> dict[str, float | str]:
    """Median latency of reconstructing one object and rendering its held-out views."""
    views = views[:1].to(device)
    g = reconstruct(views)
    size = views.shape[-1]
    return {
        "recon_ms": time_ms(lambda: reconstruct(views), device, repeats=repeats),
        "render_ms": time_ms(
            lambda: render_images(g, heldout_vm.to(device), K.to(device), size),
            device,
            repeats=repeats,
        ),
        "render_views": int(heldout_vm.shape[0]),
        "device": device_name(device),
    }
