"""LGM's camera convention and the conversion from the lab's cameras.

LGM (3DTopia/LGM) works in an OpenGL world, y up, with OpenGL camera-to-world poses (camera x
right, y up, looking down -z). Read there:
- kiui.cam.orbit_camera (ashawkey/kiuikit kiui/cam.py): a camera at elevation e, azimuth a,
  radius r sits at (r cos e sin a, -r sin e, r cos e cos a), looking at the origin with up +y;
  azimuth 0 is +z, 90 is +x; a positive elevation is *below* the equator (the lab's is above).
- core/provider_objaverse.py: every training object's cameras are moved so that the first input
  view's pose is translate(0, 0, cam_radius) (identity rotation), the "normalized camera feats";
  so the Gaussians come out in the frame where view 0 sits at azimuth 0, elevation 0.
- core/models.py prepare_default_rays: inference feeds views at elevation 0, azimuths 0, 90, 180,
  270, radius ``cam_radius`` = 1.5 (core/options.py), fovy 49.1 degrees.
- core/utils.py get_rays: pixel centres ((x + 0.5 - W/2) / f, -(y + 0.5 - H/2) / f, -1) with
  f = H / (2 tan(fovy / 2)), rotated by the pose, unit length; the embedding is (o x d, d).

The lab's cameras (recon/cameras.py) are OpenCV world-to-camera in a z-up world. A similarity
A (scale s, rotation, translation) carries the lab world into LGM's: s = cam_radius / (depth of
the lab origin in view 0), and the rotation and translation put view 0 at LGM's canonical pose.
Images do not change under a similarity, so LGM sees what it would see at its own radius.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recon.cameras import GL_TO_CV


def orbit_c2w(elevation_deg: float, azimuth_deg: float, radius: float) -> Tensor:
    """LGM's (kiui's) orbit camera: OpenGL camera-to-world 4x4 looking at the origin, y up."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    eye = torch.tensor(
        [radius * math.cos(el) * math.sin(az), -radius * math.sin(el),
         radius * math.cos(el) * math.cos(az)], dtype=torch.float64,
    )  # fmt: skip
    back = eye / eye.norm()  # OpenGL camera z points from the target to the camera
    right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), back)
    right = right / right.norm()
    up = torch.linalg.cross(back, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
    return c2w.float()


def lab_to_lgm_frame(viewmats: Tensor, radius: float) -> Tensor:
    """The similarity A [..., 4, 4] (p_lgm = A p_lab) that puts view 0 of ``viewmats``
    [..., V, 4, 4] (OpenCV world-to-camera) at LGM's canonical pose translate(0, 0, radius)."""
    v0 = viewmats[..., 0, :, :]
    depth = v0[..., 2, 3]  # the lab origin's depth in view 0
    if (depth <= 0).any():
        raise ValueError("LGM cameras: the world origin must lie in front of the first view")
    s = radius / depth
    rot = GL_TO_CV[:3, :3].to(v0) @ v0[..., :3, :3]  # world -> OpenGL camera 0 axes
    a = torch.zeros(v0.shape, dtype=v0.dtype, device=v0.device)
    a[..., :3, :3] = s[..., None, None] * rot
    # the lab origin maps to the point ``radius`` in front of view 0, i.e. the LGM origin
    a[..., :3, 3] = s[..., None] * (GL_TO_CV[:3, :3].to(v0) @ v0[..., :3, 3:4])[..., 0]
    a[..., 2, 3] += radius
    a[..., 3, 3] = 1.0
    return a


def similarity_scale(a: Tensor) -> Tensor:
    """The scale s of a similarity [..., 4, 4]."""
    return torch.linalg.det(a[..., :3, :3]).abs() ** (1 / 3)


def to_lgm_c2w(viewmats: Tensor, a: Tensor) -> Tensor:
    """Lab OpenCV world-to-camera [..., V, 4, 4] -> LGM OpenGL camera-to-world in LGM's world."""
    c2w_gl = torch.linalg.inv(viewmats) @ GL_TO_CV.to(viewmats)
    out = a[..., None, :, :] @ c2w_gl
    out[..., :3, :3] = out[..., :3, :3] / similarity_scale(a)[..., None, None, None]
    return out


def from_lgm_c2w(c2w_gl: Tensor, a: Tensor) -> Tensor:
    """LGM OpenGL camera-to-world [..., V, 4, 4] -> lab OpenCV world-to-camera (inverse of
    :func:`to_lgm_c2w` for the same similarity)."""
    s = similarity_scale(a)[..., None, None, None]
    scaled = c2w_gl.clone()
    scaled[..., :3, :3] = scaled[..., :3, :3] * s
    c2w_lab = torch.linalg.inv(a)[..., None, :, :] @ scaled
    return torch.linalg.inv(c2w_lab @ GL_TO_CV.to(c2w_gl))


def fovy_deg(K: Tensor, height: int) -> Tensor:
    """Vertical field of view in degrees of pinhole K [..., 3, 3] at ``height`` pixels."""
    return torch.rad2deg(2 * torch.atan(0.5 * height / K[..., 1, 1]))


def lgm_rays(c2w_gl: Tensor, size: int, fovy: Tensor | float) -> Tensor:
    """LGM's Pluecker embedding (o x d, d) [..., 6, size, size] of OpenGL poses [..., 4, 4]."""
    fovy = torch.as_tensor(fovy, dtype=c2w_gl.dtype, device=c2w_gl.device)
    focal = (0.5 * size / torch.tan(0.5 * torch.deg2rad(fovy)))[..., None, None]
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=c2w_gl.dtype, device=c2w_gl.device) + 0.5 - 0.5 * size,
        torch.arange(size, dtype=c2w_gl.dtype, device=c2w_gl.device) + 0.5 - 0.5 * size,
        indexing="ij",
    )
    x, y = xs / focal, -ys / focal
    cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [..., H, W, 3]
    d = torch.einsum("...ij,...hwj->...hwi", c2w_gl[..., :3, :3], cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w_gl[..., None, None, :3, 3].expand_as(d)
    return torch.cat([torch.linalg.cross(o, d, dim=-1), d], dim=-1).movedim(-1, -3)


def points_to_lab(points: Tensor, a: Tensor) -> Tensor:
    """Points [B, N, 3] in LGM's world -> the lab world (p_lab = A^-1 p_lgm)."""
    inv = torch.linalg.inv(a)
    return points @ inv[..., :3, :3].transpose(-1, -2) + inv[..., None, :3, 3]
