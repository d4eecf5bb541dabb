"""One interface for every Gaussian reconstructor: it declares the rig it takes and maps views
[B, V, 3, H, W] in [-1, 1] with their cameras (the lab's: OpenCV world-to-camera 4x4 and pinhole
K) to the lab's ``Gaussians`` in the lab's world.

Implementations: the lab's own (recon/model.py, ``recon.json``) and the LGM-compatible one
(recon/lgm.py, ``model_fp16.safetensors``); ``recon.io.load_reconstructor`` picks by folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from recon.gaussians import Gaussians


@dataclass(frozen=True)
class ReconRig:
    """The cameras and inputs a reconstructor was trained for."""

    azimuths: tuple[float, ...]  # per view, degrees, the lab's convention (from +x toward +y)
    elevations: tuple[float, ...]  # per view, degrees above the equator (lab convention)
    fov_deg: float  # field of view of every view (square images: horizontal = vertical)
    distance: float | None  # camera distance in the lab world; None: any (rescaled inside)
    image_size: int  # per-view pixels
    convention: str  # the cameras the network itself takes, e.g. "opencv-w2c", "opengl-c2w"
    normalisation: str  # what the network's RGB input is, e.g. "[-1,1]", "imagenet"

    @property
    def views(self) -> list[tuple[float, float]]:
        """(azimuth, elevation) of each view, in order."""
        return list(zip(self.azimuths, self.elevations))

    def describe(self) -> str:
        cams = ", ".join(f"({a:g}, {e:g})" for a, e in self.views)
        dist = "any distance" if self.distance is None else f"distance {self.distance:g}"
        return (
            f"{len(self.azimuths)} views at (azimuth, elevation) {cams}, fov {self.fov_deg:g}, "
            f"{dist}, {self.image_size}px"
        )


class GaussianReconstructor(nn.Module):
    """Base of every reconstructor: ``rig``, ``record`` (its saved record), ``weights_key()``,
    ``forward(views, viewmats, Ks) -> Gaussians``, ``save_pretrained`` / ``from_pretrained``."""

    kind: str = "?"  # a short name for reports ("lab", "lgm")
    record: dict  # the saved record (recon.json, lgm.json) once saved or loaded
    weights_path: Path | None = None  # the weights file it was loaded from

    @property
    def rig(self) -> ReconRig:
        raise NotImplementedError

    def forward(self, views: Tensor, viewmats: Tensor, Ks: Tensor) -> Gaussians:
        raise NotImplementedError

    def weights_key(self) -> str:
        """The weights file's hash when loaded from a folder (cached), else the parameters'."""
        if self.weights_path is not None:
            if "_weights_key" not in self.__dict__:
                self.__dict__["_weights_key"] = weights_file_key(self.weights_path)
            return self.__dict__["_weights_key"]
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode() + t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def weights_file_key(path: str | Path) -> str:
    """SHA-256 (first 16 hex) of a weights file's bytes: the same figure as
    samplers.protocol.file_key (recon imports nothing of ours, so it is written here too)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def check_inputs(
    views: Tensor, viewmats: Tensor, Ks: Tensor, n_views: int, size: int
) -> tuple[Tensor, Tensor]:
    """Cameras broadcast to [B, V, 4, 4] and [B, V, 3, 3]; a clear error for views that are not
    [B, n_views, 3, size, size] or cameras that are not rigid world-to-camera + pinhole K."""
    if views.ndim != 5 or views.shape[1:] != (n_views, 3, size, size):
        raise ValueError(
            f"views must be [B, {n_views}, 3, {size}, {size}] in [-1, 1], got {tuple(views.shape)}"
        )
    b = views.shape[0]
    if viewmats.ndim == 3:
        viewmats = viewmats.expand(b, -1, -1, -1)
    if Ks.ndim == 3:
        Ks = Ks.expand(b, -1, -1, -1)
    for name, t, tail in (("viewmats", viewmats, (4, 4)), ("Ks", Ks, (3, 3))):
        if t.shape != (b, n_views, *tail):
            raise ValueError(
                f"cameras do not match the views: {name} must be [{n_views}, {tail[0]}, "
                f"{tail[1]}] or [B={b}, {n_views}, {tail[0]}, {tail[1]}], got {tuple(t.shape)}"
            )
    R = viewmats[..., :3, :3]
    eye = torch.eye(3, device=R.device, dtype=R.dtype)
    bottom = torch.tensor([0.0, 0, 0, 1], device=R.device, dtype=R.dtype)
    if (
        not torch.isfinite(viewmats).all()
        or (R @ R.transpose(-1, -2) - eye).abs().max() > 1e-3
        or (viewmats[..., 3, :] - bottom).abs().max() > 1e-6
    ):
        raise ValueError(
            "cameras do not match the views: viewmats must be finite world-to-camera rigid "
            "transforms (orthonormal rotation, last row 0 0 0 1)"
        )
    if not torch.isfinite(Ks).all() or (Ks[..., 0, 0] <= 0).any() or (Ks[..., 1, 1] <= 0).any():
        raise ValueError(
            "cameras do not match the views: Ks must be finite intrinsics with positive focals"
        )
    return viewmats, Ks
