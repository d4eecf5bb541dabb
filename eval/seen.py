"""Seen-side fidelity: PSNR/SSIM on the target-view pixels whose surface the condition camera
sees, where the input determines the answer. Visibility comes from the true Gaussians: a target
pixel's surface point (its rendered depth) is seen when, projected into the condition camera,
it is not behind the condition view's own rendered surface."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from eval.metrics import ssim_window, to_unit
from recon.cameras import camera_rays
from recon.raster import rasterize
from scenes.samples import unpack_gaussians

DEPTH_TOLERANCE = 0.05  # scene units (objects have radius 0.6)
# a target view enters the pooled seen figures only when the condition camera sees at least this
# share of its object pixels over the evaluation set (on world 2: view 0 0.89, the side views
# 0.25-0.27 of grazing pixels that score barely above unseen ones, the back 0.02)
SEEN_SHARE_FLOOR = 0.5
ALPHA_MIN = 0.5  # a pixel is on the object when the truth's alpha exceeds this


def _render_depth(packed: Tensor, viewmats: Tensor, K: Tensor, size: int):
    g = unpack_gaussians(packed)
    vm = viewmats.to(packed).expand(packed.shape[0], -1, -1, -1)
    Ks = K.to(packed).expand(vm.shape[:-2] + (3, 3))
    _, alpha, depth = rasterize(g, vm, Ks, size, size)
    return alpha[..., 0], depth[..., 0]  # [B, C, H, W]


def visible_mask(
    packed: Tensor, target_viewmats: Tensor, cond_viewmat: Tensor, K: Tensor, size: int
) -> Tensor:
    """[B, V, H, W] bool: target pixels on the object whose surface the condition camera sees.
    ``packed`` are the true Gaussians [B, N, 14]; cameras are world-to-camera 4x4."""
    return seen_and_object_masks(packed, target_viewmats, cond_viewmat, K, size)[0]


@torch.no_grad()
def seen_and_object_masks(
    packed: Tensor, target_viewmats: Tensor, cond_viewmat: Tensor, K: Tensor, size: int
) -> tuple[Tensor, Tensor]:
    """The visible mask of ``visible_mask`` and the object mask (the truth's alpha > 0.5) of
    the target views it is computed from, both [B, V, H, W] bool, from one render."""
    a_t, d_t = _render_depth(packed, target_viewmats, K, size)  # [B, V, H, W]
    a_c, d_c = _render_depth(packed, cond_viewmat.reshape(1, 4, 4), K, size)  # [B, 1, H, W]
    origin, dirs = camera_rays(target_viewmats.to(packed), K.to(packed), size, size, False)
    pts = origin + dirs * d_t[..., None]  # [B, V, H, W, 3] world points (depth-1 directions)
    vm = cond_viewmat.reshape(4, 4).to(packed)
    cam = pts @ vm[:3, :3].T + vm[:3, 3]
    z = cam[..., 2]
    uv = cam[..., :2] / z[..., None].clamp_min(1e-6) @ K[:2, :2].to(packed).T + K[:2, 2].to(packed)
    u, v = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    inside = (u >= 0) & (u < size) & (v >= 0) & (v < size) & (z > 0)
    b = torch.arange(packed.shape[0]).reshape(-1, 1, 1, 1).expand_as(u)
    uc, vc = u.clamp(0, size - 1), v.clamp(0, size - 1)
    cond_depth = d_c[:, 0][b, vc, uc]
    cond_alpha = a_c[:, 0][b, vc, uc]
    seen = inside & (cond_alpha > ALPHA_MIN) & (z <= cond_depth + DEPTH_TOLERANCE)
    obj = a_t > ALPHA_MIN
    return seen & obj, obj


def masked_mse(a: Tensor, b: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of squared errors over masked pixels (all channels) and the masked value count, for
    images [..., 3, H, W] and masks [..., H, W]: both [...]."""
    m = mask[..., None, :, :].float()
    se = ((to_unit(a) - to_unit(b)) ** 2 * m).flatten(-3).sum(-1)
    return se, m.flatten(-3).sum(-1) * a.shape[-3]


def _psnr(se: Tensor, n: Tensor) -> Tensor:
    mse = se / n.clamp_min(1)
    out = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def masked_psnr(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """PSNR (dB, data range 1) over the masked pixels of each image: [...]; NaN where the mask
    is empty."""
    return _psnr(*masked_mse(a, b, mask))


def pooled_psnr(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """PSNR over the masked pixels of all views of an object pooled: [B] for [B, V, 3, H, W]."""
    se, n = masked_mse(a, b, mask)
    return _psnr(se.sum(1), n.sum(1))


def masked_ssim(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Mean of the SSIM map (Gaussian window 11, sigma 1.5, smaller on tiny images) over the
    masked pixels: [...]; NaN where the mask is empty."""
    lead = a.shape[:-3]
    x, y = to_unit(a).reshape(-1, *a.shape[-3:]), to_unit(b).reshape(-1, *b.shape[-3:])
    k = ssim_window(a.shape)
    _, full = structural_similarity_index_measure(
        x, y, data_range=1.0, reduction="none", kernel_size=k, return_full_image=True
    )
    smap = full.mean(1)  # [N, H, W]
    m = mask.reshape(-1, *mask.shape[-2:]).float()
    out = (smap * m).sum((-1, -2)) / m.sum((-1, -2)).clamp_min(1)
    out = torch.where(m.sum((-1, -2)) > 0, out, torch.full_like(out, float("nan")))
    return out.reshape(lead)


def seen_views(seen: Tensor, obj: Tensor, floor: float = SEEN_SHARE_FLOOR) -> list[int]:
    """The target views whose seen share (seen over object pixels, over all objects of the
    masks [B, V, H, W]) reaches ``floor``: those the pooled seen figures use."""
    share = seen.flatten(2).sum((0, 2)).double() / obj.flatten(2).sum((0, 2)).double().clamp_min(1)
    return [v for v in range(share.numel()) if share[v] >= floor]


def seen_metrics(gen: Tensor, gt: Tensor, mask: Tensor, views: list[int] | None = None) -> dict:
    """Per-object seen-side figures [B] for generated and true views [B, V, 3, H, W] and the
    visibility mask [B, V, H, W]: PSNR and SSIM pooled over ``views`` (default: all; see
    :func:`seen_views`), and view 0's PSNR."""
    idx = list(range(gen.shape[1])) if views is None else views
    g, t, m = gen[:, idx], gt[:, idx], mask[:, idx]
    return {
        "seen_psnr": pooled_psnr(g, t, m),
        "seen_psnr_view0": masked_psnr(gen[:, 0], gt[:, 0], mask[:, 0]),
        "seen_ssim": torch.nanmean(masked_ssim(g, t, m), 1),
    }
