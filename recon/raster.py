"""Gaussian rasterization: gsplat's CUDA rasterizer on GPU, the lab's tile-based pure-torch one
on CPU. Both follow gsplat's math and conventions (3DGS, Kerbl et al. 2023):

1. project: world -> camera (OpenCV w2c), EWA covariance with the clamped perspective Jacobian,
   a 0.3 px low-pass added to the 2D covariance, an opacity-aware 3.33-sigma bounding box,
   near/far culling;
2. bin: every visible Gaussian is listed in the tiles its box touches, sorted front to back;
3. composite: per pixel, alpha = min(0.999, o * exp(-q)), skipped below 1/255, front-to-back
   with transmittance T; a pixel stops before the Gaussian that would bring T to <= 1e-4.

Steps 1 and 3 are recon/splat.py. The CPU path composites tiles in depth chunks and drops
pixels and tiles whose transmittance has saturated, so cost follows what is visible rather than
what is listed. It is differentiable through autograd (the sort, the bins and the stop decisions
are not, as in gsplat).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.cameras import check_cameras
from recon.gaussians import Gaussians
from recon.splat import Projected, composite, project


@dataclass
class _Grid:
    """I images cut into square tiles: ``tx`` across and ``ty`` down, ``tile`` pixels a side."""

    images: int
    tile: int
    tx: int
    ty: int

    @property
    def per_image(self) -> int:
        return self.tx * self.ty


@dataclass
class _Bins:
    """Visible Gaussians listed per tile, each tile's listings front to back."""

    ids: Tensor  # [L] flat Gaussian index per listing, grouped by tile
    starts: Tensor  # [I * tiles] first listing of each tile
    counts: Tensor  # [I * tiles] listings of each tile


@torch.no_grad()
def _bin(p: Projected, n_per_image: int, grid: _Grid, dt: torch.dtype) -> _Bins:
    """List every visible Gaussian in the tiles its box touches, sorted by (tile, depth)."""
    dev, tile, n_tiles = p.means2d.device, grid.tile, grid.per_image
    vis = p.visible.nonzero().squeeze(1)
    m2, rad = p.means2d[vis], p.radii[vis].to(dt)
    x0 = ((m2[:, 0] - rad[:, 0]) / tile).floor().clamp(0, grid.tx).long()
    x1 = ((m2[:, 0] + rad[:, 0]) / tile).ceil().clamp(0, grid.tx).long()
    y0 = ((m2[:, 1] - rad[:, 1]) / tile).floor().clamp(0, grid.ty).long()
    y1 = ((m2[:, 1] + rad[:, 1]) / tile).ceil().clamp(0, grid.ty).long()
    wdt = x1 - x0
    cnt = wdt * (y1 - y0)
    rep = torch.repeat_interleave(torch.arange(vis.numel(), device=dev), cnt)
    first = torch.cumsum(cnt, 0) - cnt
    k = torch.arange(rep.numel(), device=dev) - first[rep]
    tile_x = x0[rep] + k % wdt[rep]
    tile_y = y0[rep] + torch.div(k, wdt[rep], rounding_mode="floor")
    image = torch.div(vis[rep], n_per_image, rounding_mode="floor")
    key = image * n_tiles + tile_y * grid.tx + tile_x
    depth_rank = torch.empty_like(vis)
    depth_rank[torch.argsort(p.depths[vis])] = torch.arange(vis.numel(), device=dev)
    order = torch.argsort(key * vis.numel() + depth_rank[rep])
    counts = torch.bincount(key, minlength=grid.images * n_tiles)
    return _Bins(ids=vis[rep[order]], starts=torch.cumsum(counts, 0) - counts, counts=counts)


def _tile_pixels(tile: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(tile, device=device), torch.arange(tile, device=device), indexing="ij"
    )
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(dtype)  # [P, 2] offsets in a tile


def _pixel_centres(
    grid: _Grid, width: int, height: int, dt: torch.dtype, dev: torch.device
) -> tuple[Tensor, Tensor]:
    """Pixel centres of every tile [I * tiles, P, 2] and which of them lie outside the image."""
    offs = _tile_pixels(grid.tile, dt, dev)
    local = torch.arange(grid.images * grid.per_image, device=dev) % grid.per_image
    origin = torch.stack(
        [
            (local % grid.tx) * grid.tile,
            torch.div(local, grid.tx, rounding_mode="floor") * grid.tile,
        ],
        -1,
    )
    pix_all = origin[:, None, :].to(dt) + offs[None] + 0.5
    return pix_all, (pix_all[..., 0] > width) | (pix_all[..., 1] > height)


def _composite_tiles(
    p: Projected,
    bins: _Bins,
    pix_all: Tensor,
    outside: Tensor,
    chunk: int,
    max_chunk: int,
    wmax: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite the tiles that list anything, chunk by chunk, front to back; a tile leaves
    when its pixels have all stopped or its list is spent. Returns T [I * tiles, P], colour
    [I * tiles, P, C] and depth [I * tiles, P]; tiles that listed nothing stay background.
    ``wmax`` [I * N], when given, receives each Gaussian's largest weight at any pixel."""
    dev, dt, P, C = pix_all.device, pix_all.dtype, pix_all.shape[1], p.colors.shape[-1]
    starts, counts, listed_ids = bins.starts, bins.counts, bins.ids
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
        d_rgb, d_dep, T, done, w = composite(
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
        if wmax is not None:  # unlisted entries have weight 0
            wmax.scatter_reduce_(0, gid.flatten(), w.amax(1).flatten(), "amax")
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
    n = counts.numel()
    full_T = torch.ones(n, P, dtype=dt, device=dev)
    full_rgb = torch.zeros(n, P, C, dtype=dt, device=dev)
    full_dep = torch.zeros(n, P, dtype=dt, device=dev)
    if fin_ids:
        ids = torch.cat(fin_ids)
        full_T = full_T.index_copy(0, ids, torch.cat(fin_T))
        full_rgb = full_rgb.index_copy(0, ids, torch.cat(fin_rgb))
        full_dep = full_dep.index_copy(0, ids, torch.cat(fin_dep))
    return full_T, full_rgb, full_dep


def _untile(x: Tensor, grid: _Grid, width: int, height: int) -> Tensor:
    """[I * tiles, P, ...] tile-major -> [I, H, W, ...] images."""
    I, ty, tx, tile = grid.images, grid.ty, grid.tx, grid.tile
    x = x.reshape(I, ty, tx, tile, tile, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(I, ty * tile, tx * tile, -1)[:, :height, :width]


def _prepare(
    g: Gaussians,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    tile: int,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> tuple[_Grid, Projected, _Bins, Tensor, Tensor]:
    """Steps 1-3 of the tile rasterizer: project, bin into tiles, pixel centres."""
    dev, dt = g.means.device, g.means.dtype
    grid = _Grid(viewmats.shape[0], tile, math.ceil(width / tile), math.ceil(height / tile))
    p = project(g, viewmats, Ks, width, height, near, far, eps2d)
    bins = _bin(p, g.means.shape[-2], grid, dt)
    pix_all, outside = _pixel_centres(grid, width, height, dt, dev)
    return grid, p, bins, pix_all, outside


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
    grid, p, bins, pix_all, outside = _prepare(
        g, viewmats, Ks, width, height, tile, near, far, eps2d
    )
    T, rgb, dep = _composite_tiles(p, bins, pix_all, outside, chunk, max_chunk)
    return _finish(
        _untile(rgb, grid, width, height),
        _untile(1.0 - T, grid, width, height),
        _untile(dep, grid, width, height),
        background,
    )


@torch.no_grad()
def gaussian_weights(
    g: Gaussians, viewmats: Tensor, Ks: Tensor, width: int, height: int, tile: int = 4
) -> Tensor:
    """[I, N]: each Gaussian's largest compositing weight over the pixels of each of I renders
    (g [I, N], viewmats [I, 4, 4]; the CPU tile rasterizer's compositing): how much it can
    change a pixel of that render."""
    _, p, bins, pix_all, outside = _prepare(g, viewmats, Ks, width, height, tile)
    wmax = torch.zeros(p.means2d.shape[0], dtype=g.means.dtype, device=g.means.device)
    _composite_tiles(p, bins, pix_all, outside, 16, 64, wmax)
    return wmax.reshape(viewmats.shape[0], -1)


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
    rgb, dep, T, _, _ = composite(
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
