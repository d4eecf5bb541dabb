"""The lab's default world: procedural objects made of 3D Gaussians, seen by a fixed camera rig.

An object is 2-4 primitives (ellipsoids, boxes, tori, lumpy blobs) covered by flat surface
Gaussians, with baked Lambert shading. Each primitive has a *front* colour scheme and an
independently drawn *back* scheme.

World version 1 draws every primitive's back scheme freely (any hue, plain or striped) and paints
it on the half-space facing away from the condition camera. Version 2 draws one *back class* per
object from a known discrete distribution (``BACK_COLOURS`` x ``BACK_PATTERNS``) and paints it on
the same half-space of every primitive; the class is recorded per object, so the distribution of
the sides a generator invents can be read back and compared with the truth (eval/unseen.py). The
half-space is not what the condition camera sees: its soft edge and the back-facing surface it
sees let the back class change condition pixels (63 of 64 test objects), so version 2's back
leaks into the input. Version 3 paints the back wherever the condition camera does not see the
surface (every Gaussian that contributes nothing to the condition render, by the rasterizer that
renders it) and the front everywhere it does: no condition pixel depends on the back class.
Geometry, front schemes and back classes of a seed are the same in every version.

Everything is a deterministic function of an integer seed; splits use disjoint seed ranges.
This module holds the world's config, version, id and splits and reads the world a model
recorded; the generator is scenes/objects.py, the camera rig scenes/rig.py, dataset rows
scenes/samples.py, and a model's views against the rig scenes/model_views.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

# generator versions this code makes; a new one when a seed's output changes
WORLD_VERSIONS = (1, 2, 3)
# version 2's back classes: colour (RGB in [0, 1]) and pattern, drawn independently
BACK_COLOURS = {"red": (0.86, 0.17, 0.15), "green": (0.18, 0.72, 0.22), "blue": (0.17, 0.3, 0.9)}
BACK_COLOUR_PROBS = (0.5, 0.3, 0.2)
BACK_PATTERNS = ("plain", "striped")
BACK_PATTERN_PROBS = (0.6, 0.4)
BACK_STRIPE = (0.1, 0.1, 0.1)  # colour of the stripes on a striped back
BACK_STRIPE_FREQ = 1.6
SPLIT_OFFSETS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
SPLIT_SIZE = 10_000_000  # seeds per split; ranges are disjoint


@dataclass
class WorldConfig:
    """The procedural world and its camera rig."""

    version: int = 2  # generator version (1: free backs; 2: back classes; 3: backs unseen)
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


def world_name(cfg: WorldConfig) -> str:
    """A world as error messages name it: its id and version."""
    return f"world {world_id(cfg)} (version {cfg.version})"


def other_recorded_world(rec: dict | None, world: WorldConfig) -> WorldConfig | None:
    """The world a file records (``rec``: a world config as a dict) when it is not ``world``;
    None when it records none or the same one."""
    if rec is None:
        return None
    theirs = world_config(rec)
    return None if world_id(theirs) == world_id(world) else theirs


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
