"""Cameras in gsplat's convention: world-to-camera 4x4 (OpenCV axes: x right, y down, z forward)
and pinhole K. World up is +z. Other conventions are converted here, at load time."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# OpenGL/Blender camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward).
GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def orbit_position(azimuth_deg: float, elevation_deg: float, distance: float) -> Tensor:
    """Camera centre on a sphere around the origin (azimuth from +x toward +y, z up)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return torch.tensor(
        [
            distance * math.cos(el) * math.cos(az),
            distance * math.cos(el) * math.sin(az),
            distance * math.sin(el),
        ]
    )


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """World-to-camera 4x4 of a camera at ``eye`` looking at ``target`` (OpenCV axes)."""
    target = torch.zeros(3, dtype=eye.dtype) if target is None else target
    up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype) if up is None else up
    forward = target - eye
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, up)
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=eye.dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return torch.linalg.inv(c2w)


def orbit_viewmat(azimuth_deg: float, elevation_deg: float, distance: float) -> Tensor:
    """World-to-camera matrix of an orbit camera looking at the origin."""
    return look_at(orbit_position(azimuth_deg, elevation_deg, distance))


def intrinsics(width: int, height: int, fov_deg: float) -> Tensor:
    """Pinhole K with a horizontal field of view ``fov_deg`` and the principal point centred."""
    f = 0.5 * width / math.tan(0.5 * math.radians(fov_deg))
    return torch.tensor([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]])


def opengl_c2w_to_viewmat(c2w_gl: Tensor) -> Tensor:
    """Blender/OpenGL camera-to-world -> OpenCV world-to-camera."""
    return torch.linalg.inv(c2w_gl @ GL_TO_CV.to(c2w_gl))


def viewmat_to_opengl_c2w(viewmat: Tensor) -> Tensor:
    """OpenCV world-to-camera -> Blender/OpenGL camera-to-world (as transforms.json stores it)."""
    return torch.linalg.inv(viewmat) @ GL_TO_CV.to(viewmat)


def check_cameras(viewmats: Tensor, Ks: Tensor, n: int | None = None) -> None:
    """Raise a clear error when camera tensors have the wrong shape or disagree in count."""
    if viewmats.ndim < 3 or tuple(viewmats.shape[-2:]) != (4, 4):
        raise ValueError(f"viewmats must be [..., C, 4, 4], got {tuple(viewmats.shape)}")
    if Ks.ndim < 3 or tuple(Ks.shape[-2:]) != (3, 3):
        raise ValueError(f"Ks must be [..., C, 3, 3], got {tuple(Ks.shape)}")
    if viewmats.shape[:-2] != Ks.shape[:-2]:
        raise ValueError(
            f"viewmats {tuple(viewmats.shape)} and Ks {tuple(Ks.shape)} disagree on the cameras"
        )
    if n is not None and viewmats.shape[-3] != n:
        raise ValueError(f"expected {n} cameras, got {viewmats.shape[-3]}")


def camera_rays(
    viewmats: Tensor, Ks: Tensor, width: int, height: int, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """Per-pixel ray origins and directions in world space, [..., H, W, 3] each. Directions are
    unit vectors, or with ``normalize=False`` scaled to camera depth 1 (o + z * d has depth z)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=viewmats.dtype, device=viewmats.device) + 0.5,
        torch.arange(width, dtype=viewmats.dtype, device=viewmats.device) + 0.5,
        indexing="ij",
    )
    fx, fy = Ks[..., 0, 0, None, None], Ks[..., 1, 1, None, None]
    cx, cy = Ks[..., 0, 2, None, None], Ks[..., 1, 2, None, None]
    d_cam = torch.stack([(xs - cx) / fx, (ys - cy) / fy, torch.ones_like(xs - cx)], dim=-1)
    c2w = torch.linalg.inv(viewmats)
    rot = c2w[..., :3, :3]
    d_world = torch.einsum("...ij,...hwj->...hwi", rot, d_cam)
    if normalize:
        d_world = d_world / d_world.norm(dim=-1, keepdim=True)
    origin = c2w[..., None, None, :3, 3].expand_as(d_world)
    return origin, d_world


def pluecker(viewmats: Tensor, Ks: Tensor, width: int, height: int) -> Tensor:
    """Pluecker ray embedding (o x d, d) per pixel, channels first: [..., 6, H, W]."""
    o, d = camera_rays(viewmats, Ks, width, height)
    emb = torch.cat([torch.linalg.cross(o, d, dim=-1), d], dim=-1)
    return emb.movedim(-1, -3)
