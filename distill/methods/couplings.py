"""Teacher couplings: (noise, teacher sample) pairs made once per run and cached in shards
(reflow trains on them; DMD2's regression term regresses them).

Coupling i draws noise seed (seed + i) and object ``coupling_objects(...)[i]``: successive
random permutations of all ``objects`` train objects (a generator seeded with ``seed``), so the
couplings spread over every object the run may draw from, each object used at most
ceil(count / objects) times, and coupling i is the same whatever ``count`` or the shard size.
A shard's file name carries everything that changes its content (its range, teacher steps,
guidance, seed, object count and a digest of the world and the objects' seeds), so a reused run
folder never reuses another setting's shards; the teacher's weights are the run folder's own
guard (distill/train_cmd.py refuses a run folder of other teacher weights)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from samplers.sampling import generate, generators_for, per_sample_noise


def coupling_objects(count: int, objects: int, seed: int) -> torch.Tensor:
    """The object index of each of ``count`` couplings: successive random permutations of
    range(objects) from a generator seeded with ``seed``."""
    if objects < 1:
        raise ValueError(f"couplings need at least one train object, got {objects}")
    g = torch.Generator().manual_seed(seed)
    reps = -(-count // objects)
    return torch.cat([torch.randperm(objects, generator=g) for _ in range(reps)])[:count]


def data_digest(data, objects: int) -> str:
    """A short digest of the world and the first ``objects`` objects (their seeds)."""
    h = hashlib.sha1()
    world = getattr(data, "world", None)
    h.update(repr(world).encode())
    table = getattr(data, "data", None)
    seeds = table.get("seeds") if isinstance(table, dict) else None
    if seeds is not None:
        h.update(seeds[:objects].cpu().numpy().tobytes())
    return h.hexdigest()[:10]


def make_couplings(
    teacher,
    data,
    folder: Path,
    *,
    count: int,
    steps: int,
    batch: int,
    seed: int,
    guidance: float,
    objects: int | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Create (or finish) ``count`` couplings of ``steps`` teacher Euler steps, ``batch`` per
    shard, coupling i from noise seed ``seed + i`` and object ``coupling_objects(...)[i]`` of
    the first ``objects`` (all by default); return them all, in order, on the teacher's device."""
    folder.mkdir(parents=True, exist_ok=True)
    n_obj = len(data) if objects is None else objects
    which = coupling_objects(count, n_obj, seed)
    setting = f"s{steps}-w{guidance:g}-seed{seed}-n{n_obj}-{data_digest(data, n_obj)}"
    parts = []
    bar = tqdm(total=count, desc="reflow couplings", unit="pair", disable=not progress)
    for first in range(0, count, batch):
        n = min(batch, count - first)
        path = folder / f"couplings-{first:06d}-{n:04d}-{setting}.safetensors"
        if not path.exists():
            idx = which[first : first + n].tolist()
            seeds = [seed + first + i for i in range(n)]
            cond = data.batch(idx)["cond"]
            x1, _ = generate(teacher, cond, steps, seeds, "euler", guidance, decode=False)
            eps = per_sample_noise(teacher.noise_shape(), generators_for(seeds))
            tmp = path.with_name(path.name + ".tmp")
            save_file(
                {
                    "x1": x1.float().cpu().contiguous(),
                    "eps": eps.contiguous(),
                    "index": torch.tensor(idx, device="cpu"),
                    "seed": torch.tensor(seeds, device="cpu"),
                },
                str(tmp),
            )
            os.replace(tmp, path)
        parts.append(load_file(str(path)))
        bar.update(n)
    bar.close()
    device = next(iter(teacher.parameters())).device
    return {k: torch.cat([p[k] for p in parts]).to(device) for k in parts[0]}
