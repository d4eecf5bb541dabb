"""finetune: continue the teacher's own objective for the same budget (the control)."""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.methods.base import Method, Targets, diffusion_targets


@dataclass
class FinetuneConfig:
    t_sampling: str = "logit_normal"  # uniform | logit_normal, as the teacher was trained
    cond_dropout: float = 0.1  # null-condition rate (keeps CFG working)
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 50])  # sampled at any


class Finetune(Method):
    name = "finetune"
    sampler = "euler"
    Config = FinetuneConfig

    def targets(self, student, gen) -> Targets:
        d, x0, cond = self.rows(gen)
        return diffusion_targets(
            x0,
            cond,
            self.ctx.path,
            self.ctx.prediction,
            d,
            self.cfg.t_sampling,
            self.cfg.cond_dropout,
        )
