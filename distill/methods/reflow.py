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

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from distill.methods.base import Method, Targets, row_times
from samplers.paths import get_path
from samplers.sampling import generate


@dataclass
class ReflowConfig:
    couplings: int = 1024  # (noise, teacher sample) pairs
    coupling_steps: int = 32  # teacher Euler steps per sample
    coupling_batch: int = 64  # pairs per shard
    seed: int = 1234  # coupling i uses noise seed (seed + i)
    t_sampling: str = "uniform"  # uniform | logit_normal
    distill_steps: int = 0  # final updates of one-step distillation (t = 1 only)
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # without distillation


def make_couplings(
    teacher,
    data,
    folder: Path,
    count: int,
    steps: int,
    batch: int,
    seed: int,
    guidance: float,
    progress: bool = True,
    objects: int | None = None,
) -> dict[str, torch.Tensor]:
    """Create (or finish) the coupling shards and return them all, in order, on the teacher's
    device."""
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
            from samplers.sampling import generators_for, per_sample_noise

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


class Reflow(Method):
    name = "reflow"
    sampler = "euler"
    Config = ReflowConfig

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.pairs = None
        self.step = 0

    def student_setup(self, student_cfg):
        return student_cfg, "linear", "velocity"

    def prepare(self, student) -> None:
        c = self.cfg
        self.pairs = make_couplings(
            self.ctx.teacher,
            self.ctx.data,
            Path(self.ctx.run_dir) / "couplings",
            c.couplings,
            c.coupling_steps,
            c.coupling_batch,
            c.seed,
            self.ctx.teacher_guidance,
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
