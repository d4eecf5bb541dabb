"""A turntable of one Gaussian set: frames from cameras circling the object, drawn by the lab's
rasterizer (recon/raster.py through scenes/rig.render_views: gsplat on CUDA, the tile
rasterizer on CPU), on the orbit of the reconstructor's world (its distance and field of view).
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass

import torch

from recon.cameras import intrinsics, orbit_viewmat
from recon.gaussians import Gaussians, ply_decode
from scenes.model_views import recon_world
from scenes.rig import render_views
from serve.pipeline import encode_png

FRAMES_MAX = 72  # frames per turntable
SIZE_MIN, SIZE_MAX = 16, 512  # frame size in pixels
SIZE_DEFAULT_MIN = 64  # the default frame size: twice the rig's, at least this
ELEVATION_MAX = 89.0  # degrees above or below the equator


@dataclass(frozen=True)
class Orbit:
    """The turntable's cameras: ``frames`` azimuths evenly spaced from 0, at one elevation."""

    frames: int
    elevation: float
    size: int
    distance: float
    fov_deg: float

    @property
    def azimuths(self) -> list[float]:
        return [360.0 * k / self.frames for k in range(self.frames)]


def orbit_for(recon, frames: int, elevation: float | None, size: int | None) -> Orbit:
    """The orbit of a reconstructor's world; defaults: its target elevation, twice its image
    size (at least ``SIZE_DEFAULT_MIN``, at most ``SIZE_MAX``: the CPU rasterizer's time grows
    with the pixels). Raises ValueError naming a parameter out of range."""
    world = recon_world(recon)
    elevation = world.target_elevation if elevation is None else float(elevation)
    default = min(max(2 * world.image_size, SIZE_DEFAULT_MIN), SIZE_MAX)
    size = default if size is None else int(size)
    if not 1 <= frames <= FRAMES_MAX:
        raise ValueError(f"frames must be 1..{FRAMES_MAX}, got {frames}")
    if not (math.isfinite(elevation) and abs(elevation) <= ELEVATION_MAX):
        raise ValueError(f"elevation must be within +-{ELEVATION_MAX:g} degrees, got {elevation}")
    if not SIZE_MIN <= size <= SIZE_MAX:
        raise ValueError(f"size must be {SIZE_MIN}..{SIZE_MAX} pixels, got {size}")
    return Orbit(frames, elevation, size, world.distance, world.fov_deg)


def decode_gaussians(data: bytes) -> Gaussians:
    """One Gaussian set from 3DGS PLY bytes; ValueError naming what is wrong with them."""
    g = ply_decode(data, "PLY")
    if g.count == 0:
        raise ValueError("PLY: no Gaussians in it")
    for name, t in g.as_dict().items():
        if not torch.isfinite(t).all():
            raise ValueError(f"PLY: non-finite values in {name}")
    return g


@torch.inference_mode()
def render_turntable(g: Gaussians, orbit: Orbit, device: torch.device) -> dict:
    """Frames (PNG, base64) of ``g`` seen from every azimuth of ``orbit``, on white."""
    t0 = time.perf_counter()
    vms = torch.stack([orbit_viewmat(a, orbit.elevation, orbit.distance) for a in orbit.azimuths])
    K = intrinsics(orbit.size, orbit.size, orbit.fov_deg)
    frames = render_views(g.to(device), vms.to(device), K.to(device), orbit.size).cpu()
    t1 = time.perf_counter()
    pngs = [base64.b64encode(encode_png(f)).decode() for f in frames]
    return {
        "frames_png": pngs,
        "azimuths": orbit.azimuths,
        "elevation": orbit.elevation,
        "size": orbit.size,
        "gaussians": g.count,
        "timings_ms": {
            "render": (t1 - t0) * 1000,
            "encode": (time.perf_counter() - t1) * 1000,
        },
    }
