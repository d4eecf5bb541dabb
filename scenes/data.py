"""Dataset shards of the world (safetensors + manifest.json) and the Dataset that reads them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from scenes.rig import Rig, make_rig
from scenes.samples import make_samples
from scenes.world import WORLD_VERSIONS, WorldConfig, split_seed, world_config, world_id

# every command's default data root. It stands for "each world's own folder under DATA_HOME"
# (world_root): the default world of version 2 in data/world2, of version 1 (the first teacher's,
# the reconstructor's and the feature encoder's) in data/world, any other world in
# data/world<version>-<world id>, so two worlds never share a folder. A root given explicitly is
# used as given (and data of another world found there is refused).
DATA_ROOT = "data/world2"
DATA_HOME = "data"
SHARD_SIZE = 250  # objects per shard
IMAGE_KEYS = ("cond", "targets", "heldout")


def world_root(world: WorldConfig) -> str:
    """The folder of ``world``'s data under DATA_HOME: ``world`` (version 1) or ``world<v>``
    for a version's default config, ``world<v>-<world id>`` for any other config."""
    v = world.version
    if world_id(world) == world_id(WorldConfig(version=v)):
        return f"{DATA_HOME}/world" + ("" if v == 1 else str(v))
    return f"{DATA_HOME}/world{v}-{world_id(world)}"


def resolve_root(root: str | Path, world: WorldConfig | None) -> str | Path:
    """``root``, except the default root (DATA_ROOT), which means ``world``'s own folder
    (world_root) when the world is known."""
    if world is not None and Path(root) == Path(DATA_ROOT):
        return world_root(world)
    return root


def _to_u8(x: Tensor) -> Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _from_u8(x: Tensor) -> Tensor:
    return x.float() / 127.5 - 1.0


def atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def make_split(
    root: str | Path,
    split: str,
    count: int,
    cfg: WorldConfig,
    batch: int = 8,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write ``count`` objects of ``split`` as shards under ``root/split``; returns the manifest.

    Existing shards of the same world are kept, so an interrupted run resumes. The default
    root means the world's own folder (resolve_root).
    """
    out = Path(resolve_root(root, cfg)) / split
    out.mkdir(parents=True, exist_ok=True)
    wid = world_id(cfg)
    rig = make_rig(cfg)
    shards = []
    for first in range(0, count, SHARD_SIZE):
        n = min(SHARD_SIZE, count - first)
        name = f"{split}-{first:07d}-{n:04d}.safetensors"
        path = out / name
        if not (path.exists() and _shard_meta(path).get("world_id") == wid):
            parts = []
            for b in range(first, first + n, batch):
                seeds = [split_seed(split, i) for i in range(b, min(b + batch, first + n))]
                with torch.inference_mode():
                    parts.append(make_samples(seeds, cfg, rig))
                if progress:
                    progress(len(seeds))
            tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            for k in IMAGE_KEYS:
                tensors[k] = _to_u8(tensors[k])
            meta = {"world_id": wid, "world_version": str(cfg.version), "split": split}
            tmp = path.with_name(path.name + ".tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        elif progress:
            progress(n)
        shards.append({"file": name, "count": n, "first": first})
    manifest = {
        "world_id": wid,
        "world_version": cfg.version,
        "split": split,
        "count": count,
        "shards": shards,
        "world": asdict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _shard_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path}: unreadable shard ({e})") from e


class WorldDataset(Dataset):
    """Objects of one split: each item has cond [3,H,W], targets [V,3,H,W], heldout [M,3,H,W]
    (float in [-1, 1]), gaussians [N, 14] and its seed. Cameras are the rig's (``self.rig``)."""

    def __init__(self, root: str | Path, split: str = "train", world: WorldConfig | None = None):
        root = resolve_root(root, world)  # the default root: the asked world's own folder
        folder = Path(root) / split
        mpath = folder / "manifest.json"
        if not mpath.exists():
            raise FileNotFoundError(
                f"{mpath} not found: make the split first with "
                f"`distill data make --split {split} --count N --root {root}`"
            )
        man = json.loads(mpath.read_text())
        if man.get("world_version") not in WORLD_VERSIONS:
            raise ValueError(
                f"{mpath}: made by world version {man.get('world_version')}, this code makes "
                f"versions {WORLD_VERSIONS}; remake the data with `distill data make`"
            )
        self.world = world_config(man["world"])
        if world is not None and world_id(world) != man["world_id"]:
            raise ValueError(
                f"{mpath}: data made with a different world config (id {man['world_id']}) than "
                f"the one asked for (id {world_id(world)}); remake it or match the world settings"
            )
        self.rig: Rig = make_rig(self.world)
        parts: dict[str, list[Tensor]] = {}
        for sh in man["shards"]:
            path = folder / sh["file"]
            meta = _shard_meta(path)
            if meta.get("world_id") != man["world_id"]:
                raise ValueError(
                    f"{path}: shard from another world (world_id {meta.get('world_id')}, "
                    f"version {meta.get('world_version')}) than its manifest "
                    f"(world_id {man['world_id']}, version {man['world_version']})"
                )
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    parts.setdefault(k, []).append(f.get_tensor(k))
        self.data = {k: torch.cat(v) for k, v in parts.items()}
        if len(self.data["seeds"]) != man["count"]:
            raise ValueError(
                f"{mpath}: manifest lists {man['count']} objects, shards hold "
                f"{len(self.data['seeds'])}"
            )

    def __len__(self) -> int:
        return len(self.data["seeds"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {k: self.data[k][i] for k in self.data}
        for k in IMAGE_KEYS:
            item[k] = _from_u8(item[k])
        return item

    def batch(self, idx: Tensor | list[int]) -> dict[str, Tensor]:
        """A batch by index without a DataLoader (the data is in memory, on the CPU). The rows
        come back on the index's device: a training step's draws, made on the training device,
        bring their data there (a list index gives CPU rows)."""
        dev = idx.device if isinstance(idx, Tensor) else torch.device("cpu")
        idx = torch.as_tensor(idx, dtype=torch.long, device="cpu")
        out = {k: v[idx].to(dev) for k, v in self.data.items()}
        for k in IMAGE_KEYS:
            out[k] = _from_u8(out[k])
        return out


def open_split(
    root: str | Path, split: str, count: int, world: WorldConfig, batch: int = 8
) -> WorldDataset:
    """The split with at least ``count`` objects of this world, made first if missing (the
    default root means the world's own folder)."""
    root = resolve_root(root, world)
    try:
        ds = WorldDataset(root, split, world)
        if len(ds) >= count:
            return ds
    except FileNotFoundError:
        pass
    from tqdm import tqdm

    with tqdm(total=count, desc=f"making {split} data in {root}", unit="obj") as bar:
        make_split(root, split, count, world, batch=batch, progress=bar.update)
    return WorldDataset(root, split, world)


def open_eval_split(
    root: str | Path,
    split: str,
    count: int,
    image_size: int,
    default_world: WorldConfig | None = None,
    batch: int = 8,
) -> WorldDataset:
    """The split for evaluating a model of ``image_size`` pixels: whatever world the data was
    made with (its rig is the one its views were rendered with), as long as the image size
    matches; made with ``default_world`` (or the default world at that size) if missing, and
    extended with its own world if it holds fewer than ``count`` objects. The default root means
    that world's own folder."""
    root = resolve_root(root, default_world or WorldConfig(image_size=image_size))
    try:
        ds = WorldDataset(root, split, None)
    except FileNotFoundError:
        ds = None
    if ds is not None and ds.world.image_size != image_size:
        raise ValueError(
            f"{Path(root) / split}: data is {ds.world.image_size}x{ds.world.image_size} pixels, "
            f"the model works at {image_size}x{image_size}; point --data-root at data of that "
            f"size or make it with `distill data make --split {split} "
            f"world.image_size={image_size}`"
        )
    if ds is not None and len(ds) >= count:
        return ds
    world = ds.world if ds is not None else (default_world or WorldConfig(image_size=image_size))
    if world.image_size != image_size:
        raise ValueError(f"world image size {world.image_size} != model image size {image_size}")
    return open_split(root, split, count, world, batch=batch)


def open_world_split(
    root: str | Path, split: str, count: int, world: WorldConfig, owner: str, batch: int = 8
) -> WorldDataset:
    """The split of exactly ``world``, the world the models under evaluation were trained on
    (``owner``: where it comes from, the model that records it): made in that world if missing,
    extended if short. A folder holding another world's data is refused, naming both worlds,
    rather than evaluated on. The default root means the world's own folder."""
    root = resolve_root(root, world)
    mpath = Path(root) / split / "manifest.json"
    if mpath.exists():
        man = json.loads(mpath.read_text())
        have, want = man.get("world_id"), world_id(world)
        if have != want:
            raise ValueError(
                f"{Path(root) / split}: data of world {have} (version {man.get('world_version')}),"
                f" but the models were trained on world {want} (version {world.version}, from"
                f" {owner}); evaluate on their world: point data_root at an empty folder (the"
                " data is made there) or at data made with that world"
            )
    return open_split(root, split, count, world, batch=batch)
