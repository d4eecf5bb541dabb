"""The sweep on several processes (``accelerate launch ... -m distill.cli sweep``): each process
generates and measures its share of the evaluation objects (whole generation batches, in order,
with the same per-object noise as one process), the main process gathers their per-object
figures, computes every interval, verdict and report, times the cells alone and writes. One
process alone computes every object and gathers nothing.

eval/ may not import training/ (tests/test_layers.py), so this reads accelerate's process state
itself, as training/processes.py does."""

from __future__ import annotations

from datetime import timedelta

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

# how long a process waits at a collective: the other processes wait at a barrier while the main
# process times every cell alone, which can take long in a large sweep (torch's default: 30 min)
WAIT = timedelta(hours=6)


def _state() -> PartialState:
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=WAIT)


def process_share(objects: int, batch: int, rank: int, count: int) -> tuple[int, int]:
    """Objects ``lo..hi-1`` of process ``rank`` of ``count``: whole batches of ``batch`` objects
    in order, so every generation batch is the one a single process would run."""
    batches = -(-objects // batch)
    per = -(-batches // count)
    return min(objects, rank * per * batch), min(objects, (rank + 1) * per * batch)


class Shards:
    """This process's place among the sweep's processes and its share of ``objects``."""

    def __init__(self) -> None:
        st = _state()
        self.rank, self.count, self.is_main = st.process_index, st.num_processes, st.is_main_process
        self.device = st.device  # the process's own device under a launch
        self.lo = self.hi = 0

    def split(self, objects: int, batch: int) -> None:
        self.lo, self.hi = process_share(objects, batch, self.rank, self.count)

    def main_first(self):
        """Context in which the main process runs first (making the evaluation data)."""
        return _state().main_process_first()

    def mine(self, x):
        """This process's rows of a tensor or list over every object."""
        return x[self.lo : self.hi]

    def gather(self, obj) -> list | None:
        """Every process's ``obj`` in rank order on the main process (None on the others)."""
        if self.count == 1:
            return [obj]
        out = [None] * self.count if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def wait(self) -> None:
        """Every process waits here until all have arrived (no-op for one process)."""
        if self.count > 1:
            torch.distributed.barrier()


def merge_figures(parts: list[dict]) -> dict:
    """Per-object figures of every share, concatenated over objects in order (empty shares
    skipped)."""
    parts = [p for p in parts if p]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
