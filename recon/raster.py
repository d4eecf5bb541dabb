"""Gaussian rasterization: gsplat's CUDA rasterizer on GPU, the lab's tile-based pure-torch one
on CPU. Both follow gsplat's math and conventions (3DGS, Kerbl et al. 2023):

1. project: world -> camera (OpenCV w2c), EWA covariance with the clamped perspective Jacobian,
   a 0.3 px low-pass added to the 2D covariance, an opacity-aware 3.33-sigma bounding box,
   near/far culling;
2. bin: every visible Gaussian is listed in the tiles its box touches, sorted front to back;
3. composite: per pixel, alpha = min(0.999, o * exp(-q)), skipped below 1/255, front-to-back
   with transmittance T; a pixel stops before the Gaussian that would bring T to <= 1e-4.

The CPU path composites tiles in depth chunks and drops pixels and tiles whose transmittance
has saturated, so cost follows what is visible rather than what is listed. It is
differentiable through autograd (the sort, the bins and the stop decisions are not, as in
gsplat).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.cameras import check_cameras
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Composite one depth-sorted chunk of K Gaussians over P pixels, for A groups at once.

    Inputs are [A, K, ...] Gaussians (``listed`` marks real entries), pixel centres [A, P, 2],
    the transmittance so far T [A, P] and the stopped mask ``done`` [A, P]. Returns the colour
    [A, P, C] and depth [A, P] contributions, the new T and the new ``done``.
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
    return rgb, dep, T_new, done | stop[..., -1]


def _tile_pixels(tile: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(tile, device=device), torch.arange(tile, device=device), indexing="ij"
    )
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(dtype)  # [P, 2] offsets in a tile


def rasterize_cpu(
    g: Gaussians,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    tile: int = 4,
    chunk: int = 16,
    max_chunk: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Tile-based pure-torch rasterizer over I images: g [I, N], viewmats [I, 4, 4].

    Returns rgb [I, H, W, C], alpha [I, H, W, 1], expected depth [I, H, W, 1]. Tiles are
    composited in depth chunks that start at ``chunk`` Gaussians and double up to ``max_chunk``.
    """
    I = viewmats.shape[0]
    dev, dt = g.means.device, g.means.dtype
    p = project(g, viewmats, Ks, width, height, near, far, eps2d)
    tx_n, ty_n = math.ceil(width / tile), math.ceil(height / tile)
    n_tiles = tx_n * ty_n
    C = p.colors.shape[-1]
    P = tile * tile

    # 1. bin: list every visible Gaussian in the tiles its box touches, sorted by (tile, depth)
    with torch.no_grad():
        vis = p.visible.nonzero().squeeze(1)
        m2, rad = p.means2d[vis], p.radii[vis].to(dt)
        x0 = ((m2[:, 0] - rad[:, 0]) / tile).floor().clamp(0, tx_n).long()
        x1 = ((m2[:, 0] + rad[:, 0]) / tile).ceil().clamp(0, tx_n).long()
        y0 = ((m2[:, 1] - rad[:, 1]) / tile).floor().clamp(0, ty_n).long()
        y1 = ((m2[:, 1] + rad[:, 1]) / tile).ceil().clamp(0, ty_n).long()
        wdt = x1 - x0
        cnt = wdt * (y1 - y0)
        rep = torch.repeat_interleave(torch.arange(vis.numel(), device=dev), cnt)
        first = torch.cumsum(cnt, 0) - cnt
        k = torch.arange(rep.numel(), device=dev) - first[rep]
        tile_x = x0[rep] + k % wdt[rep]
        tile_y = y0[rep] + torch.div(k, wdt[rep], rounding_mode="floor")
        image = torch.div(vis[rep], g.means.shape[-2], rounding_mode="floor")
        key = image * n_tiles + tile_y * tx_n + tile_x
        depth_rank = torch.empty_like(vis)
        depth_rank[torch.argsort(p.depths[vis])] = torch.arange(vis.numel(), device=dev)
        order = torch.argsort(key * vis.numel() + depth_rank[rep])
        listed_ids = vis[rep[order]]  # flat Gaussian index per listing, grouped by tile
        counts = torch.bincount(key, minlength=I * n_tiles)
        starts = torch.cumsum(counts, 0) - counts

    # 2. composite the tiles that list anything, chunk by chunk, front to back
    offs = _tile_pixels(tile, dt, dev)
    all_tiles = torch.arange(I * n_tiles, device=dev)
    local = all_tiles % n_tiles
    origin = torch.stack(
        [(local % tx_n) * tile, torch.div(local, tx_n, rounding_mode="floor") * tile], -1
    )
    pix_all = origin[:, None, :].to(dt) + offs[None] + 0.5  # [I*n_tiles, P, 2] pixel centres
    outside = (pix_all[..., 0] > width) | (pix_all[..., 1] > height)

    act = (counts > 0).nonzero().squeeze(1)
    T = torch.ones(act.numel(), P, dtype=dt, device=dev)
    done = outside[act].clone()
    rgb = torch.zeros(act.numel(), P, C, dtype=dt, device=dev)
    dep = torch.zeros(act.numel(), P, dtype=dt, device=dev)
    fin_ids, fin_T, fin_rgb, fin_dep = [], [], [], []
    pos, size = 0, chunk
    while act.numel() > 0:
        idx = starts[act, None] + pos + torch.arange(size, device=dev)  # [A, K]
        listed = idx < (starts[act] + counts[act])[:, None]
        gid = listed_ids[idx.clamp(max=max(listed_ids.numel() - 1, 0))]
        d_rgb, d_dep, T, done = composite(
            p.means2d[gid],
            p.conics[gid],
            p.opacities[gid],
            p.colors[gid],
            p.depths[gid],
            listed,
            pix_all[act],
            T,
            done,
        )
        rgb, dep = rgb + d_rgb, dep + d_dep
        pos += size
        size = min(2 * size, max_chunk)
        finished = done.all(1) | (counts[act] <= pos)
        if finished.any():
            fin_ids.append(act[finished])
            fin_T.append(T[finished])
            fin_rgb.append(rgb[finished])
            fin_dep.append(dep[finished])
            keep = ~finished
            act, T, done, rgb, dep = act[keep], T[keep], done[keep], rgb[keep], dep[keep]

    # 3. assemble images: tiles that listed nothing are background
    full_T = torch.ones(I * n_tiles, P, dtype=dt, device=dev)
    full_rgb = torch.zeros(I * n_tiles, P, C, dtype=dt, device=dev)
    full_dep = torch.zeros(I * n_tiles, P, dtype=dt, device=dev)
    if fin_ids:
        ids = torch.cat(fin_ids)
        full_T = full_T.index_copy(0, ids, torch.cat(fin_T))
        full_rgb = full_rgb.index_copy(0, ids, torch.cat(fin_rgb))
        full_dep = full_dep.index_copy(0, ids, torch.cat(fin_dep))

    def untile(x: Tensor) -> Tensor:
        x = x.reshape(I, ty_n, tx_n, tile, tile, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(I, ty_n * tile, tx_n * tile, -1)[:, :height, :width]

    return _finish(untile(full_rgb), untile(1.0 - full_T), untile(full_dep), background)


def _finish(
    rgb: Tensor, alpha: Tensor, dep: Tensor, background: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Add the background behind the remaining transmittance; expected depth = D / alpha."""
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background.reshape(-1, 1, 1, rgb.shape[-1]).to(rgb)
    depth = dep / alpha.clamp_min(1e-10)
    return rgb, alpha, depth


def rasterize_dense(
    g: Gaussians,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference for one camera: every pixel against every Gaussian, sorted by depth.

    g [N], viewmat [4, 4], K [3, 3]; returns rgb [H, W, C], alpha [H, W, 1], depth [H, W, 1].
    """
    dev, dt = g.means.device, g.means.dtype
    p = project(g.map(lambda t: t[None]), viewmat[None], K[None], width, height, near, far, eps2d)
    order = torch.argsort(p.depths.detach())
    order = order[p.visible[order]]
    ys, xs = torch.meshgrid(
        torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij"
    )
    pix = torch.stack([xs, ys], -1).reshape(1, -1, 2).to(dt) + 0.5
    hw = height * width
    rgb, dep, T, _ = composite(
        p.means2d[order][None],
        p.conics[order][None],
        p.opacities[order][None],
        p.colors[order][None],
        p.depths[order][None],
        torch.ones(1, order.numel(), dtype=torch.bool, device=dev),
        pix,
        torch.ones(1, hw, dtype=dt, device=dev),
        torch.zeros(1, hw, dtype=torch.bool, device=dev),
    )
    c = rgb.shape[-1]
    out = _finish(
        rgb.reshape(1, height, width, c),
        (1.0 - T).reshape(1, height, width, 1),
        dep.reshape(1, height, width, 1),
        background,
    )
    return tuple(o[0] for o in out)


def rasterize(
    g: Gaussians,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    tile: int = 4,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render Gaussians [..., N] into cameras [..., C, 4, 4] / [..., C, 3, 3].

    Returns rgb [..., C, H, W, 3], alpha [..., C, H, W, 1] and expected depth [..., C, H, W, 1].
    ``background`` is [3] or [..., C, 3]. CUDA tensors go through gsplat, CPU ones (and CUDA
    ones where gsplat's extension cannot load: see :func:`gsplat_status`) through the lab's
    tile rasterizer; both follow the same conventions.
    """
    check_cameras(viewmats, Ks)
    batch = g.means.shape[:-2]
    if viewmats.shape[:-3] != batch:
        raise ValueError(
            f"cameras have batch dims {tuple(viewmats.shape[:-3])} but Gaussians have "
            f"{tuple(batch)}; viewmats must be [..., C, 4, 4] with the Gaussians' batch dims"
        )
    C = viewmats.shape[-3]
    if background is not None:
        background = torch.as_tensor(background, dtype=g.means.dtype, device=g.means.device)
        background = background.expand(batch + (C, g.colors.shape[-1]))
    if g.means.is_cuda and gsplat_status()[0]:
        return _rasterize_gsplat(g, viewmats, Ks, width, height, background, near, far, eps2d)
    flat = g.map(
        lambda t: (
            t.unsqueeze(len(batch))
            .expand(batch + (C,) + t.shape[len(batch) :])
            .reshape((-1,) + t.shape[len(batch) :])
        )
    )
    bg = None if background is None else background.reshape(-1, background.shape[-1])
    rgb, alpha, depth = rasterize_cpu(
        flat,
        viewmats.reshape(-1, 4, 4),
        Ks.reshape(-1, 3, 3),
        width,
        height,
        bg,
        near,
        far,
        eps2d,
        tile,
    )
    shape = batch + (C, height, width)
    return rgb.reshape(shape + (-1,)), alpha.reshape(shape + (1,)), depth.reshape(shape + (1,))


_GSPLAT: tuple[bool, str] | None = None


def gsplat_status() -> tuple[bool, str]:
    """Whether gsplat's CUDA rasterizer can run in this process (its compiled extension loads,
    or builds on first use), and why not. Checked once; when it cannot, a warning says so and
    CUDA tensors go through the lab's tile rasterizer, which runs on any device."""
    global _GSPLAT
    if _GSPLAT is None:
        try:
            from gsplat.cuda._backend import _C

            _GSPLAT = (_C is not None, "" if _C is not None else "no CUDA toolkit to build it")
        except Exception as e:  # noqa: BLE001  (a failed build raises anything)
            _GSPLAT = (False, f"{type(e).__name__}: {str(e)[:300]}")
        if not _GSPLAT[0]:
            warnings.warn(
                f"gsplat's CUDA rasterizer is unavailable ({_GSPLAT[1]}); CUDA tensors use the "
                "lab's tile rasterizer",
                stacklevel=2,
            )
    return _GSPLAT


def _rasterize_gsplat(g, viewmats, Ks, width, height, background, near, far, eps2d):
    from gsplat import rasterization

    colors, alphas, _ = rasterization(
        g.means,
        g.quats,
        g.scales,
        g.opacities,
        g.colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        packed=False,
        backgrounds=None,
        render_mode="RGB+ED",
    )
    rgb, depth = colors[..., :-1], colors[..., -1:]
    if background is not None:
        rgb = rgb + (1.0 - alphas) * background[..., None, None, :]
    return rgb, alphas, depth
