"""`distill data make|show`: dataset shards of the procedural world and a preview sheet."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from distill.config import load_config
from scenes.data import DATA_ROOT, make_split, resolve_root
from scenes.preview import contact_sheet
from scenes.rig import make_rig
from scenes.samples import make_samples
from scenes.world import WorldConfig, target_views


@dataclass
class DataConfig:
    root: str = DATA_ROOT  # where splits are written (root/<split>/; the default: the world's own)
    world: WorldConfig = field(default_factory=WorldConfig)


def make(split: str, count: int, args: list[str]) -> dict:
    cfg = load_config(DataConfig, args)
    t0 = time.perf_counter()
    with tqdm(total=count, desc=f"data {split}", unit="obj") as bar:
        man = make_split(cfg.root, split, count, cfg.world, progress=bar.update)
    dt = time.perf_counter() - t0
    where = Path(resolve_root(cfg.root, cfg.world)) / split
    print(
        f"wrote {count} {split} objects ({len(man['shards'])} shards, world {man['world_id']}) "
        f"to {where} in {dt:.1f} s ({1000 * dt / max(count, 1):.1f} ms/object)"
    )
    return man


def show(seed: int, out: str, args: list[str]) -> Path:
    cfg = load_config(DataConfig, args)
    w = cfg.world
    with torch.inference_mode():
        s = make_samples([seed], w, make_rig(w))
    rows = [
        ("condition", s["cond"], [f"az {w.cond_azimuth:g} el {w.cond_elevation:g}"]),
        (
            "targets",
            s["targets"][0],
            [f"az {a:g} el {e:g}" for a, e in target_views(w)],
        ),
        (
            "held-out",
            s["heldout"][0],
            [f"az {a:g} el {e:g}" for a, e in zip(w.heldout_azimuths, w.heldout_elevations)],
        ),
    ]
    path = contact_sheet(rows, out, title=f"world object seed {seed} ({w.image_size}px)")
    print(f"wrote {path}")
    return path
