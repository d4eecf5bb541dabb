"""Teacher couplings: (noise, teacher sample) pairs made once per run and cached in shards
(reflow trains on them; DMD2's regression term regresses them)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from samplers.sampling import generate, generators_for, per_sample_noise


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
    shard, coupling i from noise seed ``seed + i`` and object ``i mod objects``; return them
    all, in order, on the teacher's device."""
    folder.mkdir(parents=True, exist_ok=True)
    n_obj = len(data) if objects is None else objects
    parts = []
    bar = tqdm(total=count, desc="reflow couplings", unit="pair", disable=not progress)
    for first in range(0, count, batch):
        n = min(batch, count - first)
        path = folder / f"couplings-{first:06d}-{n:04d}-s{steps}-w{guidance:g}.safetensors"
        if not path.exists():
            idx = [(first + i) % n_obj for i in range(n)]
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
