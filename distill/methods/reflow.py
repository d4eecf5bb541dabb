"""reflow: rectified flow on teacher couplings (Liu et al. 2022), optionally followed by the
one-step distillation stage.

1. Couplings: for coupling i, the condition of train object (i mod count), noise from the seed
   (seed + i), and the teacher's ODE sample from that noise at ``coupling_steps`` Euler steps;
   cached as safetensors shards under the run folder (an interrupted run keeps finished shards).
2. Reflow: the student learns the straight path between each noise and its sample:
   x_t = (1 - t) x1 + t eps, target velocity eps - x1 (the student runs on the linear path).
3. Distillation (the last ``distill_steps`` updates): t = 1 only, i.e. eps -> x1 in one step.
   A distilled student is trained for one step only and advertises only that; without the
   distillation stage it serves ``steps``.
The couplings are part of the method's cost: they run in ``prepare``, inside the measured time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.methods.base import Method, Needs, Targets, row_times
from distill.methods.couplings import make_couplings
from samplers.paths import get_path


@dataclass
class ReflowConfig:
    couplings: int = 1024  # (noise, teacher sample) pairs
    coupling_steps: int = 32  # teacher Euler steps per sample
    coupling_batch: int = 64  # pairs per shard
    seed: int = 1234  # coupling i uses noise seed (seed + i)
    t_sampling: str = "uniform"  # uniform | logit_normal
    distill_steps: int = 0  # final updates of one-step distillation (t = 1 only)
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # without distillation


class Reflow(Method):
    name = "reflow"
    sampler = "euler"
    Config = ReflowConfig
    needs = Needs(path="linear", prediction="velocity")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.pairs = None
        self.step = 0

    def prepare(self, student) -> None:
        c = self.cfg
        self.pairs = make_couplings(
            self.ctx.teacher,
            self.ctx.data,
            Path(self.ctx.run_dir) / "couplings",
            count=c.couplings,
            steps=c.coupling_steps,
            batch=c.coupling_batch,
            seed=c.seed,
            guidance=self.ctx.teacher_guidance,
            objects=self.ctx.objects(),
        )

    def targets(self, student, gen) -> Targets:
        c, d = self.cfg, self.draws(gen)
        i = d.randint(0, c.couplings)
        x1, eps = self.pairs["x1"][i], self.pairs["eps"][i]
        cond = self.ctx.data.batch(self.pairs["index"][i])["cond"]
        distilling = self.step >= self.ctx.total_steps - c.distill_steps
        t = torch.ones(len(i)) if distilling else row_times(d, c.t_sampling)
        lin = get_path("linear")
        b = (-1, 1, 1, 1, 1)
        x_t = lin.alpha(t).reshape(b) * x1 + lin.sigma(t).reshape(b) * eps
        return Targets(x_t=x_t, t=t, cond=cond, target=eps - x1)

    def on_step(self, step: int, student) -> bool:
        self.step = step
        return False

    def steps(self) -> list[int]:
        return [1] if self.cfg.distill_steps > 0 else list(self.cfg.steps)

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.step = sd["step"]
