"""The splatting math every rasterizer path shares (3DGS, Kerbl et al. 2023, as gsplat):

1. project: world -> camera (OpenCV w2c), EWA covariance with the clamped perspective Jacobian,
   a 0.3 px low-pass added to the 2D covariance, an opacity-aware 3.33-sigma bounding box,
   near/far culling;
2. composite: per pixel, alpha = min(0.999, o * exp(-q)), skipped below 1/255, front-to-back
   with transmittance T; a pixel stops before the Gaussian that would bring T to <= 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recon.gaussians import Gaussians, covariance

ALPHA_THRESHOLD = 1.0 / 255.0  # alphas below this are skipped
ALPHA_MAX = 0.999  # alpha clamp
T_STOP = 1e-4  # a pixel stops before the Gaussian that would bring T to <= this
EXTEND = 3.33  # bounding box half-size in standard deviations (before the opacity bound)


@dataclass
class Projected:
    """Screen-space Gaussians for I images of N Gaussians each (flattened to [I * N])."""

    means2d: Tensor  # [I*N, 2]
    conics: Tensor  # [I*N, 3] inverse 2D covariance (a, b, c)
    depths: Tensor  # [I*N]
    opacities: Tensor  # [I*N]
    colors: Tensor  # [I*N, 3]
    radii: Tensor  # [I*N, 2] int, 0 when culled
    visible: Tensor  # [I*N] bool


def project(
    g: Gaussians,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> Projected:
    """Project Gaussians [I, N] into I cameras [I, 4, 4] / [I, 3, 3] (EWA splatting)."""
    R = viewmats[:, None, :3, :3]
    tr = viewmats[:, None, :3, 3]
    mc = (R @ g.means[..., None]).squeeze(-1) + tr  # [I, N, 3]
    cov_c = R @ covariance(g.quats, g.scales) @ R.transpose(-1, -2)
    x, y, z = mc.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keep culled entries finite
    fx, fy = Ks[:, None, 0, 0], Ks[:, None, 1, 1]
    cx, cy = Ks[:, None, 0, 2], Ks[:, None, 1, 2]
    # 1. clamped perspective Jacobian, as gsplat's persp_proj
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z * torch.minimum(
        (width - cx) / fx + 0.3 * tan_x, torch.maximum(-(cx / fx + 0.3 * tan_x), x / z)
    )
    ty = z * torch.minimum(
        (height - cy) / fy + 0.3 * tan_y, torch.maximum(-(cy / fy + 0.3 * tan_y), y / z)
    )
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2 = J @ cov_c @ J.transpose(-1, -2)
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    # 2. low-pass filter and conic
    a = cov2[..., 0, 0] + eps2d
    b = cov2[..., 0, 1]
    c = cov2[..., 1, 1] + eps2d
    det = a * c - b * b
    ok = in_depth & (det > 0)
    det = torch.where(ok, det, torch.ones_like(det))
    conic = torch.stack([c / det, -b / det, a / det], dim=-1)
    # 3. opacity-aware bounding box and culling (not differentiable)
    op = g.opacities.expand(z.shape)
    with torch.no_grad():
        ok = ok & (op >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = extend.clamp(max=EXTEND)
        rx = torch.ceil(extend * a.clamp_min(0).sqrt())
        ry = torch.ceil(extend * c.clamp_min(0).sqrt())
        ok = ok & ((rx > 0) | (ry > 0))
        mx, my = mean2d[..., 0], mean2d[..., 1]
        ok = ok & ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
        radii = torch.stack([rx, ry], dim=-1).int() * ok[..., None]
    n = z.numel()
    colors = g.colors.expand(z.shape + (g.colors.shape[-1],))
    return Projected(
        means2d=mean2d.reshape(n, 2),
        conics=conic.reshape(n, 3),
        depths=z.reshape(n),
        opacities=op.reshape(n),
        colors=colors.reshape(n, -1),
        radii=radii.reshape(n, 2),
        visible=ok.reshape(n),
    )


def composite(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    depths: Tensor,
    listed: Tensor,
    pix: Tensor,
    T: Tensor,
    done: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Composite one depth-sorted chunk of K Gaussians over P pixels, for A groups at once.

    Inputs are [A, K, ...] Gaussians (``listed`` marks real entries), pixel centres [A, P, 2],
    the transmittance so far T [A, P] and the stopped mask ``done`` [A, P]. Returns the colour
    [A, P, C] and depth [A, P] contributions, the new T, the new ``done`` and each Gaussian's
    compositing weight at each pixel [A, P, K].
    """
    d = means2d[:, None, :, :] - pix[:, :, None, :]  # [A, P, K, 2]
    dx, dy = d[..., 0], d[..., 1]
    con = conics[:, None]
    q = 0.5 * (con[..., 0] * dx * dx + con[..., 2] * dy * dy) + con[..., 1] * dx * dy
    alpha = torch.clamp(opacities[:, None, :] * torch.exp(-q), max=ALPHA_MAX)
    with torch.no_grad():
        keep = (alpha >= ALPHA_THRESHOLD) & (q >= 0) & listed[:, None, :] & ~done[..., None]
    alpha = alpha * keep
    # transmittance before each Gaussian, relative to T; it only decreases along the chunk, so
    # "T would drop to <= T_STOP" is already cumulative: the first such Gaussian and all after
    # it are excluded.
    before = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha], -1), -1)
    with torch.no_grad():
        stop = T[..., None] * before[..., 1:] <= T_STOP
        n_in = alpha.shape[-1] - stop.sum(-1, keepdim=True)  # Gaussians composited per pixel
    w = alpha * before[..., :-1] * ~stop * T[..., None]  # [A, P, K]
    rgb = torch.einsum("apk,akc->apc", w, colors)
    dep = torch.einsum("apk,ak->ap", w, depths)
    T_new = T * before.gather(-1, n_in).squeeze(-1)
    return rgb, dep, T_new, done | stop[..., -1], w
