"""dmd2: distribution matching distillation (Yin et al. 2024, "Improved Distribution Matching
Distillation for Fast Image Synthesis").

The student is a generator x_hat = G(x_t, t) (its x0 estimate). A fake-score network, started
from the teacher (full copy or LoRA), tracks the distribution of the generator's outputs with
the teacher's own denoising objective and is updated ``fake_updates`` times per generator update
(the two time-scale rule). The generator follows the difference of the two scores:
1. Fake-score updates: generator samples (no gradient), noised at t ~ U[t_min, t_max], regress
   the teacher's parametrization of (sample, noise).
2. The generator's sample: one step from pure noise, or (``generator_steps`` > 1, backward
   simulation) the generator's own k-step chain from noise to t_k, k drawn per batch, and its
   x0 estimate there.
3. Distribution matching: noise x_hat to x_t, take the guided teacher's x0 estimate (real) and
   the fake network's (fake); grad = (fake - real) / mean|x_hat - real| per sample.
4. Target x_hat - grad / 2 (a constant): under the loop's mean squared error its gradient at
   x_hat is grad / N, that of DMD2's distribution-matching loss 0.5 ||x_hat - sg(x_hat -
   grad)||^2 averaged over the N elements (tianweiy/DMD2, main/sd_guidance.py,
   compute_distribution_matching_loss: ``0.5 * F.mse_loss(x, (x - grad).detach())``); the GAN
   term's weight below is relative to that loss, as in the paper. A ``regression_fraction`` of
   the batch instead regresses the teacher's ODE sample from the same noise (DMD's regression
   loss, plain L2 on cached couplings; DMD2 itself drops it).
5. Optional GAN head (``gan_weight`` > 0; off by default, as on CPU): a linear classifier on the
   fake-score network's pooled mid-block features tells noised data from noised generator
   samples; it trains with the fake network (``disc_weight``), and the generator's
   non-saturating loss enters the target as the equivalent shift of step 4.
The generator is trained on its k-step chain only (``generator_steps``: the states after 0..k-1
of its own steps), so the student advertises k steps only; every network pass (generator
chains, the fake score's forward and backward, the head) is counted in the cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods.base import Method, Targets, output_as
from distill.methods.couplings import make_couplings
from samplers.paths import from_x0_eps, get_path, interpolate
from samplers.sampling import time_grid
from training.draws import Draws, as_draws
from training.processes import average_gradients

COUPLING_BATCH = 64  # regression pairs per cache shard


@dataclass
class DMD2Config:
    generator_steps: int = 1  # 1, or the backward-simulation chain length (e.g. 4)
    fake_updates: int = 5  # fake-score updates per generator update
    fake_lr: float = 3e-4  # AdamW for the fake-score network
    fake_lora_rank: int = 32  # 0: a full copy of the teacher
    t_min: float = 0.02  # noise levels of the score comparison and the fake-score objective
    t_max: float = 0.98
    regression_fraction: float = 0.0  # share of the batch regressing teacher ODE pairs
    couplings: int = 64  # teacher (noise, sample) pairs for the regression part
    coupling_steps: int = 32  # teacher Euler steps per pair
    seed: int = 4321  # pair i uses noise seed (seed + i)
    gan_weight: float = 0.0  # generator GAN loss weight relative to the DM regression; 0: no head
    disc_weight: float = 1.0  # the classifier's loss weight in the fake network's update


def middle_block(unet: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """The UNet's middle block (diffusers' ``mid_block``, the LDM layout's ``middle_block``)
    and the width of its output (its last convolution's channels)."""
    for name in ("mid_block", "middle_block"):
        block = getattr(unet, name, None)
        if block is not None:
            convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
            return block, convs[-1].out_channels
    raise ValueError(
        f"method.gan_weight > 0 needs a teacher UNet with a middle block; "
        f"{type(unet).__name__} has neither mid_block nor middle_block"
    )


def dm_gradient(x_hat: Tensor, real_x0: Tensor, fake_x0: Tensor) -> Tensor:
    """DMD's normalised score difference: (fake - real) / mean |x_hat - real| per sample."""
    dims = tuple(range(1, x_hat.ndim))
    weight = 1.0 / (x_hat - real_x0).abs().mean(dim=dims, keepdim=True).clamp(min=1e-6)
    return (fake_x0 - real_x0) * weight


class DMD2(Method):
    name = "dmd2"
    sampler = "consistency"  # jump to x0, re-noise: the multi-step generator's chain
    Config = DMD2Config

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if cfg.generator_steps < 1 or cfg.fake_updates < 1:
            raise ValueError("method.generator_steps and method.fake_updates must be >= 1")
        if not 0 <= cfg.t_min < cfg.t_max <= 1:
            raise ValueError(f"need 0 <= method.t_min < method.t_max <= 1, got {cfg}")
        self.fake = None  # made in prepare: the fake-score network and its optimizer
        self.fake_opt = None
        self.head = None  # the GAN classifier, when gan_weight > 0
        self._features: list[Tensor] = []  # the fake network's last mid-block output
        self.pairs = None  # teacher ODE pairs, when the regression part is on

    def prepare(self, student) -> None:
        from students.module import Student, StudentConfig

        torch.manual_seed(self.cfg.seed)
        self.fake = Student(
            self.ctx.network, StudentConfig(lora_rank=self.cfg.fake_lora_rank)
        ).eval()
        params = [p for p in self.fake.parameters() if p.requires_grad]
        if self.cfg.gan_weight > 0:
            block, width = middle_block(self.fake.net.unet)
            block.register_forward_hook(lambda m, i, out: self._features.append(out))
            self.head = torch.nn.Linear(width, 1)
            params += list(self.head.parameters())
        self.fake_opt = torch.optim.AdamW(params, lr=self.cfg.fake_lr)
        self._fake_params = params
        if self.cfg.regression_fraction > 0:
            self.pairs = make_couplings(
                self.ctx.teacher,
                self.ctx.data,
                Path(self.ctx.run_dir) / "couplings",
                count=self.cfg.couplings,
                steps=self.cfg.coupling_steps,
                batch=COUPLING_BATCH,
                seed=self.cfg.seed,
                guidance=self.ctx.teacher_guidance,
                objects=self.ctx.objects(),
            )

    @torch.no_grad()
    def generate_inputs(self, student, cond: Tensor, gen: torch.Generator | Draws):
        """(x_t, t) where the generator is trained: noise at t = 1, or after k of its own steps
        (k shared by the batch)."""
        b, d = cond.shape[0], as_draws(gen, cond.shape[0])
        x = d.randn(*student.noise_shape())
        grid = time_grid(self.cfg.generator_steps, 1.0, self.top_time())
        k = int(torch.randint(self.cfg.generator_steps, (1,), generator=d.gen, device=d.gen.device))
        path = get_path(student.path_name)
        for i in range(k):  # backward simulation: the generator's own chain
            x0 = output_as(student, x, grid[i].expand(b), cond, "x0")
            self.count("student_forward", b)
            x = interpolate(path, x0, d.randn(*x.shape[1:]), grid[i + 1])
        return x, grid[k].expand(b).clone()

    def logits(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The GAN classifier's logit per sample (real > 0) on the fake network's features."""
        self._features.clear()
        self.fake(x_t, t, cond)
        self.count("fake_forward", x_t.shape[0])
        return self._classify(x_t.shape[0])

    def _classify(self, b: int) -> Tensor:
        """The classifier on the fake network's last (pooled) mid-block output; a UNet that
        runs the views as a batch (MVDream's) gives one feature map per view: their mean logit."""
        logit = self.head(self._features[-1].mean(dim=(2, 3)))[:, 0]
        return logit.reshape(b, -1).mean(dim=1) if logit.shape[0] != b else logit

    def _noised(self, x0: Tensor, gen: torch.Generator | Draws) -> tuple[Tensor, Tensor, Tensor]:
        """x0 noised at t ~ U[t_min, t_max]: (x_t, t, eps)."""
        d = as_draws(gen, x0.shape[0])
        t = self.cfg.t_min + (self.cfg.t_max - self.cfg.t_min) * d.rand()
        eps = d.randn(*x0.shape[1:])
        return interpolate(self.ctx.path, x0, eps, t), t, eps

    def _fake_update(self, student, gen: torch.Generator) -> float:
        """One step of the teacher's denoising objective on the generator's samples."""
        cond = self.batch(gen)["cond"]
        x_t, t = self.generate_inputs(student, cond, gen)
        with torch.no_grad():
            x_hat = output_as(student, x_t, t, cond, "x0")
        self.count("student_forward", len(x_hat))
        noisy, tau, eps = self._noised(x_hat, gen)
        target = from_x0_eps(self.ctx.path, x_hat, eps, tau, self.fake.prediction)
        self.fake.train()
        loss = ((self.fake(noisy, tau, cond) - target) ** 2).mean()
        backward_rows = len(noisy)
        self.count("fake_forward", len(noisy))
        if self.head is not None:  # the classifier: noised data (real) vs noised samples
            fake_logit = self._classify(len(noisy))  # features of the denoising pass just run
            data = self.batch(gen)
            real_noisy, real_tau, _ = self._noised(data["targets"], gen)
            real_logit = self.logits(real_noisy, real_tau, data["cond"])
            disc = F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()
            loss = loss + self.cfg.disc_weight * disc
            backward_rows += len(real_noisy)
        self.fake_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.count("fake_backward", backward_rows)
        average_gradients(self._fake_params)  # every process steps the same fake network
        self.fake_opt.step()
        self.fake.eval()
        return float(loss.detach())

    def targets(self, student, gen) -> Targets:
        gen = self.draws(gen)
        # 1. the fake score catches up with the generator
        for _ in range(self.cfg.fake_updates):
            self._fake_update(student, gen)
        # 2. the generator's samples
        b = self.batch(gen)
        cond = b["cond"]
        x_t, t = self.generate_inputs(student, cond, gen)
        with torch.no_grad():
            x_hat = output_as(student, x_t, t, cond, "x0")
            # 3. real and fake x0 estimates of the noised samples
            n = x_hat.shape[0]
            noisy, tau, _ = self._noised(x_hat, gen)
            real, _ = self.teacher_x0_eps(noisy, tau, cond)
            fake = output_as(self.fake, noisy, tau, cond, "x0")
            self.count("student_forward", n)
            self.count("fake_forward", n)
            # 4. the target whose regression gradient is DMD2's 0.5 ||x - sg(x - grad)||^2's
            target = x_hat - 0.5 * dm_gradient(x_hat, real, fake)
        if self.head is not None:  # 5. the GAN term, as a shift of the same target
            target = target - self.cfg.gan_weight * self.gan_shift(x_hat, cond, gen)
        groups = None
        frac = self.cfg.regression_fraction if self.pairs is not None else 0
        nr_all = int(round(gen.total * frac))  # the global batch's first rows regress pairs
        if nr_all:
            pairs = len(self.pairs["x1"])
            i = gen.local(torch.randint(pairs, (nr_all,), generator=gen.gen, device=x_t.device))
        nr = len(i) if nr_all else 0  # this process's regression rows
        if nr:
            x_t, t, target = x_t.clone(), t.clone(), target.clone()
            x_t[:nr], t[:nr], target[:nr] = (
                self.pairs["eps"][i],
                self.top_time(),
                self.pairs["x1"][i],
            )
            cond = cond.clone()
            cond[:nr] = self.ctx.data.batch(self.pairs["index"][i])["cond"]
            groups = {"regression": torch.arange(n) < nr, "dm": torch.arange(n) >= nr}
        return Targets(x_t=x_t, t=t, cond=cond, target=target, groups=groups, space="x0")

    def gan_shift(self, x_hat: Tensor, cond: Tensor, gen: torch.Generator | Draws) -> Tensor:
        """The target shift whose regression gradient (mean squared error over the batch and
        elements) equals the gradient of the non-saturating loss mean softplus(-logit)."""
        x = x_hat.detach().requires_grad_(True)
        noisy, tau, _ = self._noised(x, gen)
        loss = F.softplus(-self.logits(noisy, tau, cond)).mean()
        (grad,) = torch.autograd.grad(loss, x)
        self.count("fake_backward", len(x))
        return grad * x[0].numel() * x.shape[0] / 2  # d(mean (x - target)^2)/dx = 2 (x - t) / N

    def steps(self) -> list[int]:
        """The trained chain only: k steps (fewer steps would start steps from states the
        generator never saw: its input at a shared time comes from another chain)."""
        return [self.cfg.generator_steps]

    def state_dict(self) -> dict:
        sd = {"fake": self.fake.trainable_state(), "fake_opt": self.fake_opt.state_dict()}
        if self.head is not None:
            sd["head"] = self.head.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.fake.load_trainable_state(sd["fake"])
        self.fake_opt.load_state_dict(sd["fake_opt"])
        if self.head is not None:
            self.head.load_state_dict(sd["head"])

    def card(self) -> dict:
        return {"fake_score": asdict(self.fake.cfg)}
