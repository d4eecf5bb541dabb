"""Quaternions as LGM's rasteriser reads them, and back to the lab's unit quaternions.

The 3DGS rasteriser (graphdeco-inria/diff-gaussian-rasterization and ashawkey's fork LGM trained
with, cuda_rasterizer/forward.cu computeCov3D) builds the rotation from the quaternion (w, x, y, z)
as given, without normalising it ("glm::vec4 q = rot;// / glm::length(rot);"), and the covariance
as (R S)(R S)^T. ``raw_rotmat`` is that formula; for a unit quaternion it is the rotation.
"""

from __future__ import annotations

import torch
from torch import Tensor


def raw_rotmat(q: Tensor) -> Tensor:
    """The 3DGS rasteriser's matrix [..., 3, 3] of quaternions [..., 4] (w x y z), unnormalised."""
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Unit quaternions [..., 4] (w x y z, w >= 0) of rotation matrices [..., 3, 3]: from the
    largest of the four candidate components (Shepperd's method), so no division by ~0."""
    m = R.double()
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cand = torch.stack(
        [1 + tr, 1 + 2 * m[..., 0, 0] - tr, 1 + 2 * m[..., 1, 1] - tr, 1 + 2 * m[..., 2, 2] - tr],
        dim=-1,
    )  # 4 w^2, 4 x^2, 4 y^2, 4 z^2
    best = cand.argmax(-1, keepdim=True)
    big = cand.clamp_min(1e-12).sqrt()  # 2 |component|
    d = {  # off-diagonal combinations: 4 w x, 4 w y, 4 w z, 4 x y, 4 x z, 4 y z
        "wx": m[..., 2, 1] - m[..., 1, 2], "wy": m[..., 0, 2] - m[..., 2, 0],
        "wz": m[..., 1, 0] - m[..., 0, 1], "xy": m[..., 0, 1] + m[..., 1, 0],
        "xz": m[..., 0, 2] + m[..., 2, 0], "yz": m[..., 1, 2] + m[..., 2, 1],
    }  # fmt: skip
    rows = []
    for i, pairs in enumerate(
        [(None, "wx", "wy", "wz"), ("wx", None, "xy", "xz"), ("wy", "xy", None, "yz"),
         ("wz", "xz", "yz", None)]
    ):  # fmt: skip
        b = big[..., i]
        rows.append(torch.stack([b / 2 if p is None else d[p] / (2 * b) for p in pairs], -1))
    q = torch.gather(torch.stack(rows, dim=-2), -2, best[..., None].expand(*best.shape[:-1], 1, 4))
    q = q[..., 0, :]
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0)
    return (q / q.norm(dim=-1, keepdim=True)).to(R.dtype)


def factor_to_quat_scale(M: Tensor) -> tuple[Tensor, Tensor]:
    """A unit quaternion and scales [..., 4], [..., 3] with the covariance M M^T of any 3x3
    factors M [..., 3, 3] (eigen-decomposition in float64)."""
    cov = M.double() @ M.double().transpose(-1, -2)
    lam, U = torch.linalg.eigh(cov)
    U = U * torch.where(torch.linalg.det(U) < 0, -1.0, 1.0)[..., None, None]  # a rotation
    scales = lam.clamp_min(0).sqrt()
    return rotmat_to_quat(U).to(M.dtype), scales.to(M.dtype)
