"""A set of 3D Gaussians (gsplat's parameters) and the standard 3DGS PLY layout."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # zeroth spherical-harmonic basis constant used by 3DGS viewers


@dataclass
class Gaussians:
    """Gaussians with optional leading batch dims: means [..., N, 3], quats [..., N, 4] (wxyz),
    scales [..., N, 3] (linear), opacities [..., N] in [0, 1], colors [..., N, 3] in [0, 1]
    (RGB; the rasterizers render any channel count C >= 1, e.g. one-hot per-Gaussian weights)."""

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[:-1]
        expect = {"means": 3, "quats": 4, "scales": 3}
        for name, last in expect.items():
            t = getattr(self, name)
            if t.shape[:-1] != n or t.shape[-1] != last:
                raise ValueError(
                    f"Gaussians.{name} must be [..., N, {last}] with [..., N] = {tuple(n)}, "
                    f"got {tuple(t.shape)}"
                )
        if self.colors.shape[:-1] != n or self.colors.shape[-1] < 1:
            raise ValueError(
                f"Gaussians.colors must be [..., N, C] with [..., N] = {tuple(n)}, got "
                f"{tuple(self.colors.shape)}"
            )
        if self.opacities.shape != n:
            raise ValueError(
                f"Gaussians.opacities must be [..., N] = {tuple(n)}, got "
                f"{tuple(self.opacities.shape)}"
            )

    @property
    def count(self) -> int:
        return self.means.shape[-2]

    def map(self, fn) -> Gaussians:
        """Apply ``fn`` to every tensor (e.g. ``lambda t: t.to(dev)`` or ``lambda t: t[0]``)."""
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args, **kwargs) -> Gaussians:
        return self.map(lambda t: t.to(*args, **kwargs))

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def cat(items: list[Gaussians], dim: int = -2) -> Gaussians:
        """Concatenate along the Gaussian axis (dim=-2 for vectors; opacities follow)."""
        out = {}
        for f in fields(Gaussians):
            d = dim + 1 if (f.name == "opacities" and dim < 0) else dim
            out[f.name] = torch.cat([getattr(g, f.name) for g in items], dim=d)
        return Gaussians(**out)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (wxyz, normalised here)."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def covariance(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariance R S S R^T, [..., 3, 3]."""
    rs = quat_to_rotmat(quats) * scales[..., None, :]
    return rs @ rs.transpose(-1, -2)


_PLY_FIELDS = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)


def ply_encode(gaussians: Gaussians) -> bytes:
    """One Gaussian set (no batch dims) as a binary 3DGS PLY (SH degree 0)."""
    g = gaussians.map(lambda t: t.detach().float().cpu())
    if g.means.ndim != 2:
        raise ValueError(f"a PLY holds one Gaussian set [N, 3], got means {tuple(g.means.shape)}")
    eps = 1e-6
    op = g.opacities.clamp(eps, 1 - eps)
    cols = [
        g.means,
        torch.zeros_like(g.means),
        (g.colors - 0.5) / SH_C0,
        torch.log(op / (1 - op))[:, None],
        torch.log(g.scales.clamp_min(1e-12)),
        g.quats / g.quats.norm(dim=-1, keepdim=True),
    ]
    data = torch.cat(cols, dim=1).numpy().astype("<f4")
    header = "ply\nformat binary_little_endian 1.0\n"
    header += f"element vertex {data.shape[0]}\n"
    header += "".join(f"property float {name}\n" for name in _PLY_FIELDS)
    header += "end_header\n"
    return header.encode("ascii") + data.tobytes()


def save_ply(gaussians: Gaussians, path: str | Path) -> None:
    """Write one Gaussian set as a binary 3DGS PLY file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ply_encode(gaussians))


def load_ply(path: str | Path) -> Gaussians:
    """Read a binary 3DGS PLY (only its DC colour; higher SH bands are ignored)."""
    return ply_decode(Path(path).read_bytes(), str(path))


def ply_decode(raw: bytes, path: str = "PLY") -> Gaussians:
    """The Gaussians of binary 3DGS PLY bytes (``path`` names them in errors)."""
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    lines = [ln.split() for ln in raw[:end].decode("ascii", "replace").splitlines()]
    if ["format", "binary_little_endian", "1.0"] not in lines:
        raise ValueError(f"{path}: only binary little-endian PLY is supported")
    counts = [w[2] for w in lines if w[:2] == ["element", "vertex"] and len(w) == 3]
    if len(counts) != 1 or not counts[0].isdigit():
        raise ValueError(f"{path}: the header needs one 'element vertex <count>' line")
    n = int(counts[0])
    props = [w[-1] for w in lines if w[:1] == ["property"]]
    if any(len(w) != 3 or w[1] != "float" for w in lines if w[:1] == ["property"]):
        raise ValueError(f"{path}: only float properties are supported")
    missing = [p for p in _PLY_FIELDS if p not in props and not p.startswith("n")]
    if missing:
        raise ValueError(f"{path}: missing 3DGS properties {missing}")
    body = raw[end + len(b"end_header\n") :]
    if len(body) < n * len(props) * 4:
        raise ValueError(f"{path}: {n} vertices declared, data for {len(body) // 4 // len(props)}")
    arr = np.frombuffer(body, dtype="<f4", count=n * len(props)).reshape(n, len(props))
    col = {p: torch.from_numpy(arr[:, i].copy()) for i, p in enumerate(props)}

    def stack(names: list[str]) -> Tensor:
        return torch.stack([col[k] for k in names], dim=1)

    return Gaussians(
        means=stack(["x", "y", "z"]),
        quats=stack([f"rot_{i}" for i in range(4)]),
        scales=torch.exp(stack([f"scale_{i}" for i in range(3)])),
        opacities=torch.sigmoid(col["opacity"]),
        colors=stack([f"f_dc_{i}" for i in range(3)]) * SH_C0 + 0.5,
    )
