"""The lab's default world: procedural objects made of 3D Gaussians, seen by a fixed camera rig.

An object is 2-4 primitives (ellipsoids, boxes, tori, lumpy blobs) covered by flat surface
Gaussians, with baked Lambert shading. Each primitive has a *front* colour scheme on the
half-space facing the condition camera and an independently drawn *back* scheme on the other
half, so what the condition view cannot show is genuinely uncertain.

World version 1 draws every primitive's back scheme freely (any hue, plain or striped). Version 2
draws one *back class* per object from a known discrete distribution (``BACK_COLOURS`` x
``BACK_PATTERNS``, independent of everything the condition shows) and paints it on the back of
every primitive; the class is recorded per object, so the distribution of the unseen sides a
generator invents can be read back and compared with the truth exactly (eval/unseen.py).
Geometry and front schemes of a seed are the same in both versions.

Everything is a deterministic function of an integer seed; splits use disjoint seed ranges.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from recon.cameras import intrinsics, orbit_viewmat
from recon.gaussians import Gaussians
from recon.raster import rasterize

WORLD_VERSIONS = (
    1,
    2,
)  # generator versions this code makes; a new one when a seed's output changes
# version 2's back classes: colour (RGB in [0, 1]) and pattern, drawn independently
BACK_COLOURS = {"red": (0.86, 0.17, 0.15), "green": (0.18, 0.72, 0.22), "blue": (0.17, 0.3, 0.9)}
BACK_COLOUR_PROBS = (0.5, 0.3, 0.2)
BACK_PATTERNS = ("plain", "striped")
BACK_PATTERN_PROBS = (0.6, 0.4)
BACK_STRIPE = (0.1, 0.1, 0.1)  # colour of the stripes on a striped back
BACK_STRIPE_FREQ = 1.6
SPLIT_OFFSETS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
SPLIT_SIZE = 10_000_000  # seeds per split; ranges are disjoint
PRIMITIVES = ("ellipsoid", "box", "torus", "blob")
LIGHT = (0.35, 0.45, 0.82)  # baked light direction (normalised at use)


@dataclass
class WorldConfig:
    """The procedural world and its camera rig."""

    version: int = 2  # generator version (1: free back schemes; 2: discrete back classes)
    image_size: int = 32  # square render size in pixels (64/128/256 on a GPU)
    gaussians: int = 512  # Gaussians per object
    min_primitives: int = 2  # primitives per object, inclusive range
    max_primitives: int = 4
    object_radius: float = 0.6  # objects are scaled to fit this radius around the origin
    stripe_prob: float = 0.5  # chance that a side of a primitive is striped
    fov_deg: float = 40.0  # horizontal field of view of every camera
    distance: float = 2.2  # camera distance from the origin
    cond_azimuth: float = 0.0  # the condition view
    cond_elevation: float = 5.0
    target_azimuths: list[float] = field(default_factory=lambda: [0.0, 90.0, 180.0, 270.0])
    target_elevation: float = 20.0  # the V target views (Instant3D's 2x2 layout)
    # one elevation per target view instead (Zero123++'s 3x2 layout alternates 20 / -10); empty
    # = every view at target_elevation
    target_elevations: list[float] = field(default_factory=list)
    heldout_azimuths: list[float] = field(
        default_factory=lambda: [30.0, 75.0, 120.0, 165.0, 210.0, 255.0, 300.0, 345.0]
    )
    heldout_elevations: list[float] = field(
        default_factory=lambda: [-5.0, 40.0, -5.0, 40.0, -5.0, 40.0, -5.0, 40.0]
    )


def world_id(cfg: WorldConfig) -> str:
    """Short hash of the generator version and config: shards from another world differ."""
    d = asdict(cfg)
    if not d["target_elevations"]:  # added later: worlds without it keep their ids
        del d["target_elevations"]
    blob = json.dumps(d, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def target_views(cfg: WorldConfig) -> list[tuple[float, float]]:
    """(azimuth, elevation) of each target view, in order."""
    els = cfg.target_elevations or [cfg.target_elevation] * len(cfg.target_azimuths)
    if len(els) != len(cfg.target_azimuths):
        raise ValueError(
            f"world.target_elevations has {len(els)} entries for "
            f"{len(cfg.target_azimuths)} target_azimuths"
        )
    return list(zip(cfg.target_azimuths, els))


def world_config(d: dict) -> WorldConfig:
    """The world a model or a dataset was made with, from its recorded settings; records made
    before worlds had a version are version 1."""
    cfg = WorldConfig(**{"version": 1, **d})
    if cfg.version not in WORLD_VERSIONS:
        raise ValueError(
            f"world version {cfg.version} unknown to this code (knows {WORLD_VERSIONS}); "
            "update the lab or remake the data/model"
        )
    return cfg


def recorded_world(info: dict | None) -> WorldConfig | None:
    """The world a model was trained on, from its saved record (``info["train_config"]
    ["world"]``: teacher.json, student.json, recon.json), or None without one."""
    rec = (info or {}).get("train_config", {}).get("world")
    return world_config(rec) if rec is not None else None


def model_world(info: dict, image_size: int) -> WorldConfig:
    """The world a model was trained on (``recorded_world``); a model without a record gets the
    default world at its image size."""
    return recorded_world(info) or WorldConfig(image_size=image_size)


def back_classes() -> list[tuple[str, str]]:
    """Version 2's back classes in index order: (colour, pattern)."""
    return [(c, p) for c in BACK_COLOURS for p in BACK_PATTERNS]


def back_class_probs() -> Tensor:
    """The true probability of each back class (same order as ``back_classes``)."""
    pc = torch.tensor(BACK_COLOUR_PROBS, dtype=torch.float64)
    pp = torch.tensor(BACK_PATTERN_PROBS, dtype=torch.float64)
    return (pc[:, None] * pp[None, :]).flatten()


def split_seed(split: str, index: int) -> int:
    """The world seed of object ``index`` in ``split``."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLIT_OFFSETS)}")
    if not 0 <= index < SPLIT_SIZE:
        raise ValueError(f"object index {index} outside 0..{SPLIT_SIZE - 1}")
    return SPLIT_OFFSETS[split] + index


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
    """The Gaussians [N, ...] of the world object with this seed; with ``back`` (version 2),
    the same object painted with that back class instead of its own."""
    return _generate(seed, cfg, back)[0]


N_ATTRIBUTES = 11


def object_attributes(seed: int, cfg: WorldConfig) -> Tensor:
    """What the generator chose for this object, [11]: primitives of each kind (4), striped
    sides (1), front and back base colours of the largest primitive (3 + 3). Labels for the
    lab's feature encoder."""
    return _generate(seed, cfg)[1]


_BACK_STREAM = 2**40  # offset of the seed stream that draws version 2's back classes


def _back_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) + _BACK_STREAM)


def back_class(seed: int, cfg: WorldConfig) -> int:
    """Index into ``back_classes()`` of this object's back (version 2), -1 in version 1."""
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


def _generate(seed: int, cfg: WorldConfig, back: int | None = None) -> tuple[Gaussians, Tensor]:
    if cfg.version not in WORLD_VERSIONS:
        raise ValueError(f"world version {cfg.version} unknown (known: {WORLD_VERSIONS})")
    if back is not None and cfg.version < 2:
        raise ValueError("only world version 2 has back classes to choose")
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
    pts, nrms, cols, tang = [], [], [], []
    d_cond = torch.tensor(
        [math.cos(math.radians(cfg.cond_azimuth)), math.sin(math.radians(cfg.cond_azimuth)), 0.0]
    )
    sides = []
    for kind, ax, n in zip(kinds, axes, counts.tolist()):
        p, nrm, coord = _MAKERS[kind](gen, n, ax)
        rot = _random_rotation(gen)
        offset = (torch.rand(3, generator=gen) * 2 - 1) * 0.28
        pts.append(p @ rot.T + offset)
        nrms.append(nrm @ rot.T)
        sides.append((_scheme(gen, cfg.stripe_prob), _scheme(gen, cfg.stripe_prob), coord))
        tang.append(torch.full((n,), 1.0 * math.sqrt(_area(kind, ax) / max(n, 1))))
    if cfg.version >= 2:  # same draws as version 1 above; only the backs are replaced
        backs = _back_schemes(seed, cfg, len(sides), back)
        sides = [(f, b2, c) for (f, _, c), b2 in zip(sides, backs)]
    means = torch.cat(pts)
    centre = 0.5 * (means.max(0).values + means.min(0).values)
    scale = cfg.object_radius / (means - centre).norm(dim=1).max()
    means = (means - centre) * scale
    # front scheme on the half-space facing the condition camera, back scheme elsewhere
    start = 0
    light = torch.tensor(LIGHT) / torch.tensor(LIGHT).norm()
    normals = torch.cat(nrms)
    for (front, back, coord), n in zip(sides, counts.tolist()):
        sl = slice(start, start + n)
        w = torch.sigmoid((means[sl] @ d_cond) / 0.03)[:, None]
        c = w * _paint(coord, front) + (1 - w) * _paint(coord, back)
        shade = 0.55 + 0.45 * torch.clamp(normals[sl] @ light, min=0)
        cols.append(c * shade[:, None])
        start += n
    t = torch.cat(tang) * scale
    scales = torch.stack([t, t, 0.3 * t], 1)
    opac = 0.88 + 0.1 * torch.rand(cfg.gaussians, generator=gen)
    g = Gaussians(
        means=means,
        quats=_quat_z_to(normals),
        scales=scales,
        opacities=opac,
        colors=torch.cat(cols).clamp(0, 1),
    )
    big = int(torch.argmax(areas))
    attrs = torch.tensor(
        [float(sum(kd == p for kd in kinds)) for p in PRIMITIVES]
        + [float(sum((f[2] > 0) + (b[2] > 0) for f, b, _ in sides))]
        + sides[big][0][0].tolist()
        + sides[big][1][0].tolist()
    )
    return g, attrs


def render_views(g: Gaussians, viewmats: Tensor, K: Tensor, size: int) -> Tensor:
    """Render Gaussians [..., N] into cameras [..., C] on white: [..., C, 3, H, W] in [-1, 1]."""
    Ks = K.to(viewmats).expand(viewmats.shape[:-2] + (3, 3))
    rgb, _, _ = rasterize(g, viewmats, Ks, size, size, background=torch.ones(3))
    return (rgb.clamp(0, 1) * 2 - 1).movedim(-1, -3)


def make_samples(seeds: list[int], cfg: WorldConfig, rig: Rig | None = None) -> dict[str, Tensor]:
    """Objects for ``seeds`` with their renders: cond [B,3,H,W], targets [B,V,3,H,W],
    heldout [B,M,3,H,W] in [-1, 1], and the Gaussians stacked as [B, N, 14]."""
    rig = rig or make_rig(cfg)
    objs = [make_object(s, cfg) for s in seeds]
    g = Gaussians(**{k: torch.stack([o.as_dict()[k] for o in objs]) for k in objs[0].as_dict()})
    cams = torch.cat([rig.cond_viewmats, rig.target_viewmats, rig.heldout_viewmats])
    views = render_views(g, cams.expand(len(seeds), -1, -1, -1), rig.K, rig.size)
    v = rig.target_viewmats.shape[0]
    return {
        "cond": views[:, 0],
        "targets": views[:, 1 : 1 + v],
        "heldout": views[:, 1 + v :],
        "gaussians": pack_gaussians(g),
        "seeds": torch.tensor(seeds, dtype=torch.int64),
        "back_class": torch.tensor([back_class(s, cfg) for s in seeds], dtype=torch.int64),
    }


def pack_gaussians(g: Gaussians) -> Tensor:
    """[..., N, 14]: means 3, quats 4, scales 3, opacity 1, colour 3."""
    return torch.cat([g.means, g.quats, g.scales, g.opacities[..., None], g.colors], dim=-1)


def unpack_gaussians(x: Tensor) -> Gaussians:
    if x.shape[-1] != 14:
        raise ValueError(f"packed Gaussians must be [..., N, 14], got {tuple(x.shape)}")
    return Gaussians(
        means=x[..., 0:3],
        quats=x[..., 3:7],
        scales=x[..., 7:10],
        opacities=x[..., 10],
        colors=x[..., 11:14],
    )


def model_cameras(model) -> list[tuple[float, float]] | None:
    """(azimuth, elevation) of each view a teacher or student makes: a diffusers teacher's
    multiview.json, else the target rig of the world the (lab) teacher was trained on; None when
    neither is recorded. A student answers for its teacher."""
    for m in (model, getattr(getattr(model, "student", None), "net", None)):
        if m is None:
            continue
        if getattr(m, "views", None):
            return [tuple(v) for v in m.views]
        world = recorded_world(getattr(m, "meta", None))
        if world is not None:
            return target_views(world)
    return None


def _named_recon_views(model) -> list[int] | None:
    """The view indices a diffusers teacher's multiview.json names for the reconstructor
    (``recon_views``), for the teacher or a student's teacher; None when it names none."""
    for m in (model, getattr(getattr(model, "student", None), "net", None)):
        mv = (getattr(m, "meta", None) or {}).get("multiview") if m is not None else None
        if mv and "recon_views" in mv:
            return [int(i) for i in mv["recon_views"]]
    return None


def check_views_fit(model, world: WorldConfig, name: str = "the model") -> list[int] | None:
    """Which of a model's views the reconstructor takes: None for all of them, in order (the
    model makes exactly the reconstructor's target rig, with the same cameras where it records
    them), else the indices of the rig's cameras among the model's: those its multiview.json
    names as ``recon_views``, or found by camera when the model makes more views than the rig
    (a 3x2 grid that holds the four rig views, say). Otherwise a ValueError names both rigs."""
    want = target_views(world)
    have = model_cameras(model)
    have = None if have is None else [tuple(map(float, v)) for v in have]
    n = model.info.views
    named = _named_recon_views(model)
    if named is not None:
        if len(named) != len(want) or not all(0 <= i < n for i in named):
            raise ValueError(
                f"{name}: multiview.json recon_views {named} must name {len(want)} of its {n} "
                "views (indices from 0), one per reconstructor view"
            )
        if have is None or [have[i] for i in named] == want:
            return named
    elif n == len(want) and (have is None or have == want):
        return None
    elif have is not None and all(w in have for w in want):
        return [have.index(w) for w in want]

    def cams(vs):
        return ", ".join(f"({a:g}, {e:g})" for a, e in vs)

    seen = f" at (azimuth, elevation) {cams(have)}" if have else ""
    raise ValueError(
        f"{name} makes {n} views{seen}, but the reconstructor takes {len(want)} views at "
        f"{cams(want)}: train a reconstructor on the teacher's rig or use a teacher whose views "
        "match"
    )
