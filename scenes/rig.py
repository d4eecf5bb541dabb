"""The world's camera rig (condition, target and held-out cameras) and rendering into it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recon.cameras import intrinsics, orbit_viewmat
from recon.gaussians import Gaussians
from recon.raster import rasterize
from scenes.world import WorldConfig, target_views


@dataclass
class Rig:
    """Cameras of the rig: condition [1], targets [V], held-out [M] (w2c 4x4 and K 3x3)."""

    cond_viewmats: Tensor
    target_viewmats: Tensor
    heldout_viewmats: Tensor
    K: Tensor  # shared pinhole intrinsics
    size: int

    def Ks(self, n: int) -> Tensor:
        return self.K.expand(n, 3, 3)


def make_rig(cfg: WorldConfig) -> Rig:
    if len(cfg.heldout_azimuths) != len(cfg.heldout_elevations):
        raise ValueError("world.heldout_azimuths and world.heldout_elevations differ in length")
    d = cfg.distance
    return Rig(
        cond_viewmats=orbit_viewmat(cfg.cond_azimuth, cfg.cond_elevation, d)[None],
        target_viewmats=torch.stack([orbit_viewmat(a, e, d) for a, e in target_views(cfg)]),
        heldout_viewmats=torch.stack(
            [orbit_viewmat(a, e, d) for a, e in zip(cfg.heldout_azimuths, cfg.heldout_elevations)]
        ),
        K=intrinsics(cfg.image_size, cfg.image_size, cfg.fov_deg),
        size=cfg.image_size,
    )


def render_views(g: Gaussians, viewmats: Tensor, K: Tensor, size: int) -> Tensor:
    """Render Gaussians [..., N] into cameras [..., C] on white: [..., C, 3, H, W] in [-1, 1]."""
    Ks = K.to(viewmats).expand(viewmats.shape[:-2] + (3, 3))
    rgb, _, _ = rasterize(g, viewmats, Ks, size, size, background=torch.ones(3))
    return (rgb.clamp(0, 1) * 2 - 1).movedim(-1, -3)
