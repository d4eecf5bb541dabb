"""The world's object generator: 2-4 primitives (ellipsoids, boxes, tori, lumpy blobs) covered by
flat surface Gaussians, with baked Lambert shading and a front and a back colour scheme per
primitive (see scenes/world.py for what each world version draws on the back).

Everything is a deterministic function of an integer seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.cameras import intrinsics, orbit_viewmat
from recon.gaussians import Gaussians
from recon.raster import gaussian_weights
from scenes.world import (
    BACK_COLOURS,
    BACK_STRIPE,
    BACK_STRIPE_FREQ,
    WORLD_VERSIONS,
    WorldConfig,
    back_class_probs,
    back_classes,
)

PRIMITIVES = ("ellipsoid", "box", "torus", "blob")
LIGHT = (0.35, 0.45, 0.82)  # baked light direction (normalised at use)

# ---------------------------------------------------------------------------------------------
# Primitives: each returns surface points [n, 3], unit normals [n, 3] and a pattern coordinate [n]
# in its own frame, scaled by half-extents ``ax`` [3].


def _unit(gen: torch.Generator, n: int) -> Tensor:
    u = torch.randn(n, 3, generator=gen)
    return u / u.norm(dim=1, keepdim=True)


def _ellipsoid(gen, n, ax):
    u = _unit(gen, n)
    p = u * ax
    nrm = u / ax
    return p, nrm / nrm.norm(dim=1, keepdim=True), u[:, 2]


def _box(gen, n, ax):
    areas = torch.stack([ax[1] * ax[2], ax[0] * ax[2], ax[0] * ax[1]]).repeat(2)
    face = torch.multinomial(areas, n, replacement=True, generator=gen)
    uv = torch.rand(n, 3, generator=gen) * 2 - 1
    axis = face % 3
    sign = torch.where(face < 3, 1.0, -1.0)
    uv[torch.arange(n), axis] = sign
    nrm = torch.zeros(n, 3)
    nrm[torch.arange(n), axis] = sign
    return uv * ax, nrm, 0.5 * uv.sum(1)


def _torus(gen, n, ax):
    th = torch.rand(n, generator=gen) * 2 * math.pi
    ph = torch.rand(n, generator=gen) * 2 * math.pi
    big, small = 0.7, 0.3  # radii relative to the half-extents
    ring = big + small * torch.cos(ph)
    p = torch.stack([ring * torch.cos(th), ring * torch.sin(th), small * torch.sin(ph)], 1)
    nrm = torch.stack(
        [torch.cos(ph) * torch.cos(th), torch.cos(ph) * torch.sin(th), torch.sin(ph)], 1
    )
    nrm = nrm / ax
    return p * ax, nrm / nrm.norm(dim=1, keepdim=True), th / math.pi - 1


def _blob(gen, n, ax):
    u = _unit(gen, n)
    lobes = _unit(gen, 4)
    amp = torch.rand(4, generator=gen) * 0.45 + 0.15
    r = 1 + (amp * torch.clamp(u @ lobes.T, min=0) ** 3).sum(1)
    p = u * r[:, None] * ax
    return p, u, u[:, 0]


_MAKERS = {"ellipsoid": _ellipsoid, "box": _box, "torus": _torus, "blob": _blob}


def _area(kind: str, ax: Tensor) -> float:
    a, b, c = ax.tolist()
    if kind == "box":
        return 8 * (a * b + b * c + a * c)
    if kind == "torus":
        return 4 * math.pi**2 * 0.7 * 0.3 * (a + b) / 2 * (a + b + c) / 3
    p = 1.6
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def _hsv(gen: torch.Generator) -> Tensor:
    h = torch.rand(1, generator=gen).item()
    s = 0.45 + 0.5 * torch.rand(1, generator=gen).item()
    v = 0.55 + 0.4 * torch.rand(1, generator=gen).item()
    k = torch.tensor([5.0, 3.0, 1.0])
    kk = (k + h * 6) % 6
    return v - v * s * torch.clamp(torch.minimum(kk, 4 - kk), 0, 1)


def _scheme(gen: torch.Generator, stripe_prob: float) -> tuple[Tensor, Tensor, float, float]:
    """A side's colour scheme: base colour, stripe colour, stripe frequency (0 = plain), phase."""
    base, second = _hsv(gen), _hsv(gen)
    striped = torch.rand(1, generator=gen).item() < stripe_prob
    freq = 1.5 + 2.5 * torch.rand(1, generator=gen).item() if striped else 0.0
    phase = 2 * math.pi * torch.rand(1, generator=gen).item()
    return base, second, freq, phase


def _paint(coord: Tensor, scheme) -> Tensor:
    base, second, freq, phase = scheme
    if freq == 0.0:
        return base.expand(coord.shape[0], 3)
    on = (torch.sin(2 * math.pi * freq * coord + phase) > 0).float()[:, None]
    return on * base + (1 - on) * second


def _random_rotation(gen: torch.Generator) -> Tensor:
    q = torch.randn(4, generator=gen)
    q = q / q.norm()
    w, x, y, z = q.tolist()
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _quat_z_to(n: Tensor) -> Tensor:
    """Quaternions (wxyz) rotating +z onto unit normals n [k, 3]."""
    q = torch.stack([1 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros_like(n[:, 0])], 1)
    flip = q[:, 0] < 1e-6
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    return q / q.norm(dim=1, keepdim=True)


def make_object(seed: int, cfg: WorldConfig, back: int | None = None) -> Gaussians:
    """The Gaussians [N, ...] of the world object with this seed; with ``back`` (version >= 2),
    the same object painted with that back class instead of its own."""
    return _generate(seed, cfg, back)[0]


def object_and_condition(
    seed: int, cfg: WorldConfig, back: int | None = None
) -> tuple[Gaussians, Tensor]:
    """``make_object``'s Gaussians and the colours [N, 3] the condition camera is rendered with:
    the object's own colours up to version 2; from version 3 the front painted on every Gaussian
    (on the ones it sees, that is their colour; the others' weights in the condition render
    are below one 8-bit level each), so no condition pixel depends on the back class."""
    g, _, cond_colors = _generate(seed, cfg, back)
    return g, cond_colors


N_ATTRIBUTES = 11


def object_attributes(seed: int, cfg: WorldConfig) -> Tensor:
    """What the generator chose for this object, [11]: primitives of each kind (4), striped
    sides (1), front and back base colours of the largest primitive (3 + 3). Labels for the
    lab's feature encoder."""
    return _generate(seed, cfg)[1]


@torch.no_grad()
def seen_by_condition(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, cfg: WorldConfig
) -> Tensor:
    """[N] bool: the Gaussians the condition camera sees: those whose compositing weight
    reaches one 8-bit level (``SEEN_WEIGHT``) at some pixel of the condition render (camera and
    size of ``cfg``), by the CPU rasterizer's compositing. The splat surfaces let the camera see
    through gaps, so "seen" is a threshold on how much, not exactly zero."""
    g = Gaussians(means, quats, scales, opacities, colors=torch.zeros_like(means))
    vm = orbit_viewmat(cfg.cond_azimuth, cfg.cond_elevation, cfg.distance)[None]
    K = intrinsics(cfg.image_size, cfg.image_size, cfg.fov_deg)[None]
    g = g.map(lambda t: t[None])
    return gaussian_weights(g, vm, K, cfg.image_size, cfg.image_size)[0] >= SEEN_WEIGHT


SEEN_WEIGHT = 1.0 / 255.0  # version 3: a Gaussian is seen from this condition-render weight on
_BACK_STREAM = 2**40  # offset of the seed stream that draws version 2's back classes


def _back_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) + _BACK_STREAM)


def back_class(seed: int, cfg: WorldConfig) -> int:
    """Index into ``back_classes()`` of this object's back (version >= 2), -1 in version 1."""
    if cfg.version < 2:
        return -1
    return int(torch.multinomial(back_class_probs(), 1, generator=_back_generator(seed)))


def _back_schemes(seed: int, cfg: WorldConfig, count: int, back: int | None = None) -> list:
    """Version 2: the back scheme of each of ``count`` primitives, all of the object's class
    (or of class ``back``: the same object with another plausible back)."""
    colour, pattern = back_classes()[back_class(seed, cfg) if back is None else back]
    gen = _back_generator(seed)
    torch.rand(1, generator=gen)  # the draw back_class used
    base, stripe = torch.tensor(BACK_COLOURS[colour]), torch.tensor(BACK_STRIPE)
    freq = BACK_STRIPE_FREQ if pattern == "striped" else 0.0
    return [
        (base, stripe, freq, 2 * math.pi * torch.rand(1, generator=gen).item())
        for _ in range(count)
    ]


@dataclass
class _Shape:
    """An object before its backs are painted: every draw of its seed's main stream."""

    kinds: list[str]
    areas: Tensor  # [k] surface area per primitive
    counts: list[int]  # Gaussians per primitive
    sides: list  # per primitive: (front scheme, version 1's back scheme, pattern coordinate)
    means: Tensor
    normals: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    front_w: Tensor | None  # version 3: [N, 1] 1 where the condition camera sees the surface


def _shape(seed: int, cfg: WorldConfig) -> _Shape:
    """Primitives, geometry, front schemes and opacities of the object with this seed."""
    gen = torch.Generator().manual_seed(int(seed))
    k = int(torch.randint(cfg.min_primitives, cfg.max_primitives + 1, (1,), generator=gen))
    kinds = [PRIMITIVES[int(i)] for i in torch.randint(len(PRIMITIVES), (k,), generator=gen)]
    axes = [
        0.18 + 0.2 * torch.rand(1, generator=gen) * (0.55 + 0.75 * torch.rand(3, generator=gen))
        for _ in kinds
    ]
    areas = torch.tensor([_area(kd, ax) for kd, ax in zip(kinds, axes)])
    counts = torch.floor(areas / areas.sum() * cfg.gaussians).long()
    counts[torch.argmax(areas)] += cfg.gaussians - int(counts.sum())
    pts, nrms, tang, sides = [], [], [], []
    for kind, ax, n in zip(kinds, axes, counts.tolist()):
        p, nrm, coord = _MAKERS[kind](gen, n, ax)
        rot = _random_rotation(gen)
        offset = (torch.rand(3, generator=gen) * 2 - 1) * 0.28
        pts.append(p @ rot.T + offset)
        nrms.append(nrm @ rot.T)
        sides.append((_scheme(gen, cfg.stripe_prob), _scheme(gen, cfg.stripe_prob), coord))
        tang.append(torch.full((n,), 1.0 * math.sqrt(_area(kind, ax) / max(n, 1))))
    means = torch.cat(pts)
    centre = 0.5 * (means.max(0).values + means.min(0).values)
    scale = cfg.object_radius / (means - centre).norm(dim=1).max()
    means = (means - centre) * scale
    t = torch.cat(tang) * scale
    scales = torch.stack([t, t, 0.3 * t], 1)
    normals = torch.cat(nrms)
    quats = _quat_z_to(normals)
    opac = 0.88 + 0.1 * torch.rand(cfg.gaussians, generator=gen)
    front_w = None
    if cfg.version >= 3:
        front_w = seen_by_condition(means, quats, scales, opac, cfg).to(means.dtype)[:, None]
    return _Shape(
        kinds, areas, counts.tolist(), sides, means, normals, quats, scales, opac, front_w
    )


def _painted(
    shape: _Shape, seed: int, cfg: WorldConfig, back: int | None
) -> tuple[Gaussians, Tensor, Tensor]:
    """The object's Gaussians with its backs painted (its own class, or ``back``), its
    attributes and the colours the condition camera is rendered with."""
    sides = shape.sides
    if cfg.version >= 2:  # same draws as version 1; only the backs are replaced
        backs = _back_schemes(seed, cfg, len(sides), back)
        sides = [(f, b2, c) for (f, _, c), b2 in zip(sides, backs)]
    d_cond = torch.tensor(
        [math.cos(math.radians(cfg.cond_azimuth)), math.sin(math.radians(cfg.cond_azimuth)), 0.0]
    )
    light = torch.tensor(LIGHT) / torch.tensor(LIGHT).norm()
    cols, fronts, start = [], [], 0
    for (front, back_scheme, coord), n in zip(sides, shape.counts):
        sl = slice(start, start + n)
        if shape.front_w is None:  # the front on the half-space facing the condition camera
            w = torch.sigmoid((shape.means[sl] @ d_cond) / 0.03)[:, None]
        else:  # version 3: the front where the condition camera sees the surface
            w = shape.front_w[sl]
        front_paint = _paint(coord, front)
        c = w * front_paint + (1 - w) * _paint(coord, back_scheme)
        shade = 0.55 + 0.45 * torch.clamp(shape.normals[sl] @ light, min=0)
        cols.append(c * shade[:, None])
        if cfg.version >= 3:  # the condition's painting (up to version 2 it is the object's own)
            fronts.append(front_paint * shade[:, None])
        start += n
    g = Gaussians(
        means=shape.means,
        quats=shape.quats,
        scales=shape.scales,
        opacities=shape.opacities,
        colors=torch.cat(cols).clamp(0, 1),
    )
    big = int(torch.argmax(shape.areas))
    attrs = torch.tensor(
        [float(sum(kd == p for kd in shape.kinds)) for p in PRIMITIVES]
        + [float(sum((f[2] > 0) + (b[2] > 0) for f, b, _ in sides))]
        + sides[big][0][0].tolist()
        + sides[big][1][0].tolist()
    )
    cond_colors = torch.cat(fronts).clamp(0, 1) if cfg.version >= 3 else g.colors
    return g, attrs, cond_colors


def _check(cfg: WorldConfig, backs) -> None:
    if cfg.version not in WORLD_VERSIONS:
        raise ValueError(f"world version {cfg.version} unknown (known: {WORLD_VERSIONS})")
    if any(b is not None for b in backs) and cfg.version < 2:
        raise ValueError("only world versions 2 and 3 have back classes to choose")


def _generate(
    seed: int, cfg: WorldConfig, back: int | None = None
) -> tuple[Gaussians, Tensor, Tensor]:
    _check(cfg, [back])
    return _painted(_shape(seed, cfg), seed, cfg, back)


def object_variants(
    seed: int, cfg: WorldConfig, backs: list[int | None]
) -> list[tuple[Gaussians, Tensor]]:
    """``object_and_condition`` for each back class in ``backs`` (None: the object's own), from
    one draw of the geometry."""
    _check(cfg, backs)
    shape = _shape(seed, cfg)
    return [_painted(shape, seed, cfg, b)[::2] for b in backs]
