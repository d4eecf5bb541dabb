"""reflow: rectified flow on teacher couplings (Liu et al. 2022), optionally followed by the
one-step distillation stage.

1. Couplings: for coupling i, the condition of a train object drawn across all ``train_count``
   objects (successive random permutations, distill/methods/couplings.py), noise from the seed
   (seed + i), and the teacher's ODE sample from that noise at ``coupling_steps`` Euler steps;
   cached as safetensors shards under the run folder (an interrupted run keeps finished shards;
   the shard names carry the seed, object count and data digest, so another setting remakes
   them).
2. Reflow: the student learns the straight path between each noise and its sample:
   x_t = (1 - t) x1 + t eps, target velocity eps - x1 (the student runs on the linear path).
3. Distillation (the last ``distill_steps`` updates): t = 1 only, i.e. eps -> x1 in one step.
   A distilled student is trained for one step only and advertises only that; without the
   distillation stage it serves ``steps``.
   The finished student of a distilled run is the weight average of the distillation stage
   only: an EMA restarted at its first update (the run's ``ema_decay`` with warm-up), not the
   run's EMA, which at decay 0.99 kept ~8.5% of the pre-distillation (multi-step) weights in a
   student advertised as one-step.
The couplings are part of the method's cost: they run in ``prepare``, inside the measured time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.methods.base import Method, Needs, Targets, row_times
from distill.methods.couplings import make_couplings
from samplers.paths import get_path
from training.ema import EMA


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
    schedule_spans_run = True  # the distillation stage is the run's last updates
    sampler = "euler"
    Config = ReflowConfig
    needs = Needs(path="linear", prediction="velocity")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.pairs = None
        self.step = 0
        self.student = None  # set in prepare (the distillation stage's EMA averages it)
        self.stage_ema: EMA | None = None  # the distillation stage's own weight average

    def distilling_from(self) -> int:
        """Updates done when the distillation stage starts."""
        return self.ctx.total_steps - self.cfg.distill_steps

    def _new_stage_ema(self, student) -> EMA | None:
        if self.cfg.distill_steps <= 0 or not 0 < self.ctx.ema_decay < 1:
            return None
        return EMA(student, self.ctx.ema_decay, self.ctx.ema_warmup)

    def prepare(self, student) -> None:
        self.student = student
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
        distilling = self.step >= self.distilling_from()
        t = torch.ones(len(i)) if distilling else row_times(d, c.t_sampling)
        lin = get_path("linear")
        b = (-1, 1, 1, 1, 1)
        x_t = lin.alpha(t).reshape(b) * x1 + lin.sigma(t).reshape(b) * eps
        return Targets(x_t=x_t, t=t, cond=cond, target=eps - x1)

    def on_step(self, step: int, student) -> bool:
        self.step = step
        if self.cfg.distill_steps > 0 and step > self.distilling_from():  # a distilling update
            if self.stage_ema is None:  # its first: the average starts here
                self.stage_ema = self._new_stage_ema(student)
            if self.stage_ema is not None:
                self.stage_ema.update(student)
        return False

    def final_ema(self, ema):
        """A distilled run: the distillation stage's own average (the raw weights when the run
        keeps no EMA); otherwise the run's EMA."""
        if self.cfg.distill_steps > 0:
            return self.stage_ema if ema is not None else None
        return ema

    def steps(self) -> list[int]:
        return [1] if self.cfg.distill_steps > 0 else list(self.cfg.steps)

    def state_dict(self) -> dict:
        sd = {"step": self.step}
        if self.stage_ema is not None:
            sd["stage_ema"] = self.stage_ema.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.step = sd["step"]
        if "stage_ema" in sd:
            self.stage_ema = self._new_stage_ema(self.student)
            self.stage_ema.load_state_dict(sd["stage_ema"])
