"""The sweep's grid of cells (model x sampler x step count), each cell's key, and their on-disk
cache under ``<out>/cells``, keyed by every weight hash and the sampling configuration so that an
interrupted sweep resumes and a stale cell is never reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from samplers.protocol import file_key

# bump when a metric's definition changes: cached cells become stale (3: set statistics'
# intervals by m-out-of-n subsampling; 4: the unseen side reads every view that shows the back)
AXIS_VERSION = 4

Cell = tuple[str, object, str, int]  # (name, model, sampler, steps)


def folder_hash(folder: str | Path, name: str) -> str:
    """The hash of ``folder/name``, or "missing"."""
    p = Path(folder) / name
    return file_key(p) if p.exists() else "missing"


def seeds_hash(seeds: list[int]) -> str:
    """A short hash of the evaluation set's per-object noise seeds."""
    return hashlib.sha256(json.dumps(seeds).encode()).hexdigest()[:16]


def grid(
    models: dict, samplers: list[str], steps: list[int], skip_unsupported: bool
) -> tuple[list[Cell], list[dict]]:
    """Every (name, model, sampler, steps) cell, and the skipped ones with the reason; a step
    count a model does not support raises unless ``skip_unsupported``."""
    out, skipped = [], []
    for name, model in models.items():
        for sampler in [model.own_sampler] if model.own_sampler else samplers:
            for n in steps:
                supported = model.supported_steps
                if supported is not None and n not in supported:
                    reason = (
                        f"{name} ({model.method}) does not support {n} steps;"
                        f" supported: {supported}"
                    )
                    if not skip_unsupported:
                        raise ValueError(reason + " (set skip_unsupported=true to skip)")
                    skipped.append({"model": name, "steps": n, "reason": reason})
                    continue
                out.append((name, model, sampler, n))
    return out, skipped


def cell_key(hashes: dict, model, sampler: str, steps: int, guidance: float, batch: int) -> str:
    """Hash of everything a cell's figures depend on."""
    key = {
        **hashes,
        "model": model.weights_key(),
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
        "batch": batch,
        "merged": bool(getattr(model, "merge", False)),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def write_atomic(path: Path, write) -> None:
    """``write(tmp)`` and then the temporary file renamed over ``path``: a run killed while
    writing never leaves half a file where a reader would take it for finished."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


class CellCache:
    """Finished cells as ``<name>__<sampler>__<steps>__<key>`` .json (row) and .pt (per-object
    figures and views), each written atomically."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _files(self, name: str, sampler: str, steps: int, key: str) -> tuple[Path, Path]:
        """The cell's .json and .pt (suffixes appended: a model name may hold a dot, e.g. a
        budget's student ``finetune_x0.5``, which ``with_suffix`` would cut off)."""
        base = f"{name}__{sampler}__{steps}__{key}"
        return self.folder / f"{base}.json", self.folder / f"{base}.pt"

    def load(self, name: str, sampler: str, steps: int, key: str):
        """(row, per-object figures, views) of a cached cell, or None."""
        js, pt = self._files(name, sampler, steps, key)
        if js.exists() and pt.exists():
            data = torch.load(pt)
            return json.loads(js.read_text()), data["per"], data["views"]
        return None

    def save(
        self, name: str, sampler: str, steps: int, key: str, row: dict, per: dict, views: Tensor
    ) -> None:
        js, pt = self._files(name, sampler, steps, key)
        for path, write in (
            (pt, lambda p: torch.save({"per": per, "views": views.half()}, p)),
            (js, lambda p: p.write_text(json.dumps(row, indent=2))),
        ):
            write_atomic(path, write)


def train_seconds(model) -> float:
    """A student's whole measured training cost (preparation included: ``train_cost.wall_s``);
    cards made before it was recorded give their loop time only."""
    card = getattr(model, "card", None)
    if card is not None:
        cost = card.train_cost or {}
        if "wall_s" in cost:
            return float(cost["wall_s"])
        return float(card.train_config.get("train_seconds", 0.0))
    return 0.0
