"""The learning-rate schedule: linear warm-up, then constant or cosine; restartable."""

from __future__ import annotations

import math

import torch


class Schedule:
    """The learning-rate factor at an optimizer update, counted from the last restart
    (``origin``: a method's round switch starts warm-up again)."""

    KINDS = ("constant", "cosine")

    def __init__(self, warmup: int, steps: int, kind: str = "constant"):
        if kind not in self.KINDS:
            raise ValueError(f"train.schedule must be constant or cosine, got {kind!r}")
        self.warmup, self.steps, self.kind = warmup, steps, kind
        self.origin = 0  # optimizer update of the last restart

    def factor(self, step: int) -> float:
        """The factor of the peak learning rate at update ``step``."""
        step -= self.origin
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "cosine":
            p = (step - self.warmup) / max(1, self.steps - self.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
        return 1.0

    def scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """torch's scheduler stepping this schedule once per optimizer update."""
        # a plain function, so torch's state_dict stores no copy of this object
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.factor(step))

    def restart(self, opt: torch.optim.Optimizer, sched) -> None:
        """A fresh optimizer state and schedule (warm-up included) from the next update on."""
        inner = getattr(opt, "optimizer", opt)  # accelerate wraps the optimizer
        inner.state.clear()
        self.origin = sched.last_epoch
        for group, base in zip(inner.param_groups, sched.base_lrs):
            group["lr"] = base * self.factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in inner.param_groups]
