"""A training step's randomness: a pure function of (seed, step), the same on every process."""

from __future__ import annotations

import torch
from torch import Tensor


class Draws:
    """A step's random draws, for this process's rows of the global batch.

    Every per-row draw is made for the whole global batch (``batch`` rows per process, all
    processes together) from a generator that every process seeds alike, and this process keeps
    its own rows: N processes with ``batch`` rows each see exactly the rows one process with
    N * ``batch`` rows sees, and their generators stay in step. With one process a draw is the
    plain ``torch.rand((batch, ...), generator=gen)``. Draws that are not per row (a step count
    shared by the batch) use ``gen`` itself, the same on every process."""

    def __init__(self, gen: torch.Generator, batch: int, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"process {rank} of {world}")
        self.gen, self.batch, self.rank, self.world = gen, batch, rank, world
        self.total = batch * world  # rows of the global batch

    def local(self, x: Tensor, first: int = 0) -> Tensor:
        """The rows of ``x`` that are this process's, where ``x`` holds the global rows
        ``first, first + 1, ...`` (a part of the batch drawn on its own, e.g. its first 25%)."""
        lo, hi = self.rank * self.batch - first, (self.rank + 1) * self.batch - first
        lo, hi = min(max(lo, 0), len(x)), min(max(hi, 0), len(x))
        return x[lo:hi]

    def rand(self, *shape: int) -> Tensor:
        """Uniform [0, 1) values [batch, *shape]."""
        return self.local(
            torch.rand((self.total, *shape), generator=self.gen, device=self.gen.device)
        )

    def randn(self, *shape: int) -> Tensor:
        """Standard normal values [batch, *shape]."""
        return self.local(
            torch.randn((self.total, *shape), generator=self.gen, device=self.gen.device)
        )

    def randint(self, low: int, high: int, *shape: int) -> Tensor:
        """Integers in [low, high) [batch, *shape]."""
        return self.local(
            torch.randint(
                low, high, (self.total, *shape), generator=self.gen, device=self.gen.device
            )
        )


def as_draws(gen: torch.Generator | Draws, rows: int) -> Draws:
    """``gen`` as the draws of one process with ``rows`` rows (a Draws is returned as is)."""
    return gen if isinstance(gen, Draws) else Draws(gen, rows)


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for one (micro-)step: a pure function of (seed, step) on ``device``."""
    g = torch.Generator(device=device)
    return g.manual_seed((seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1))
