"""What a run leaves on disk: atomic checkpoints, the per-term loss log, weight transfer."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn


class Checkpoints:
    """Atomic checkpoint folders ``run/checkpoints/step_XXXXXXX`` plus a ``latest`` pointer."""

    def __init__(self, run_dir: Path, keep: int):
        self.dir = run_dir / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, if any."""
        ptr = self.dir / "latest"
        if not ptr.exists():
            return None
        path = self.dir / ptr.read_text().strip()
        return path if (path / "state.pt").exists() else None

    def save(self, step: int, tensors: dict[str, dict[str, Tensor]], state: dict) -> Path:
        """Write ``tensors`` (file name -> state dict) and ``state`` as step ``step``'s folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:07d}"
        final = self.dir / name
        tmp = self.dir / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for fname, sd in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, tmp / fname)
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        ptr_tmp = self.dir / "latest.tmp"
        ptr_tmp.write_text(name)
        os.replace(ptr_tmp, self.dir / "latest")
        old = sorted(p for p in self.dir.glob("step_*") if not p.name.endswith(".tmp"))
        for p in old[: max(0, len(old) - self.keep)]:
            shutil.rmtree(p, ignore_errors=True)
        return final


class LossLog:
    """``run/losses.csv``: one row per logged update (step, lr, elapsed_s, each loss term),
    appended across resumed runs; written by the main process only."""

    def __init__(self, run_dir: Path, main: bool = True):
        self.path = run_dir / "losses.csv"
        self.main = main
        self._file, self._writer = None, None

    def resume(self, step: int) -> None:
        """Drop the rows a killed run logged after its last checkpoint (at ``step``)."""
        if not (self.main and self.path.exists()):
            return
        rows = self.path.read_text().splitlines()
        keep = rows[:1] + [r for r in rows[1:] if r and int(r.split(",")[0]) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("\n".join(keep) + "\n")
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        """Append one row (its keys fix the columns of a new log)."""
        if not self.main:
            return
        if self._writer is None:
            exists = self.path.exists()
            self._file = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=list(row), extrasaction="ignore")
            if not exists:
                self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file, self._writer = None, None

    def total_seconds(self) -> float | None:
        """Training wall time over all (resumed) runs: the last elapsed_s of each run, added."""
        if not self.path.exists():
            return None
        rows = self.path.read_text().strip().splitlines()[1:]
        total, prev = 0.0, 0.0
        for r in rows:
            e = float(r.split(",")[2])
            if e < prev:
                total += prev
            prev = e
        return total + prev


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """State of the parameters that train (all buffers too), by name."""
    params = dict(model.named_parameters())  # once: per key it made saving quadratic
    names = {n for n, p in params.items() if p.requires_grad}
    sd = model.state_dict()
    return {k: v for k, v in sd.items() if k in names or k not in params}


def start_from(model: nn.Module, start: nn.Module, name: str, key: str) -> None:
    """A refinement stage: copy ``start``'s weights (a previous stage, called ``name`` in
    errors) into ``model``; both must have been built from the same ``key``.* config."""
    if start.cfg != model.cfg:
        raise ValueError(
            f"{name} has another architecture than {key}.* ({start.cfg} vs {model.cfg})"
        )
    model.load_state_dict(start.state_dict())
