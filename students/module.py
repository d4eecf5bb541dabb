"""The student module: a teacher's network (a full copy, or frozen with a peft LoRA adapter)
plus what a method needs.

- A second time input ``s`` (shortcut step size, consistency target time, MeanFlow's r) and a
  guidance-scale input ``w`` (LCM) enter through small embeddings added to the network's time
  embedding; their last layer starts at zero, so an untrained student equals its teacher.
- The consistency boundary condition is a wrapper (Song et al. 2023; LCM's constants):
  f(x, t) = c_skip(t) x + c_out(t) x0_net(x, t), c_skip(0) = 1, c_out(0) = 0.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from samplers.paths import check_prediction, convert, get_path, to_x0_eps
from students import keys
from students.lora import adapter_state, add_lora, load_adapter_state
from teachers.base import MultiViewTeacher

if TYPE_CHECKING:
    from students.card import StudentCard

# Below this time a network output is converted to another parametrization as if at NET_T_MIN:
# an x0 network's velocity is (x_t - x0) / t on the linear path, unbounded as t -> 0.
NET_T_MIN = 0.05


@dataclass
class StudentConfig:
    """How a student is built from its teacher."""

    lora_rank: int = 0  # 0 = full copy of the teacher; N = frozen teacher + LoRA of rank N
    lora_alpha: float = 0.0  # LoRA scale numerator; 0 = the rank (scale 1)
    second_time: bool = False  # add the zero-initialised second time input s
    guidance_input: bool = False  # add the zero-initialised guidance-scale input w
    boundary: bool = False  # consistency preconditioning (the student predicts x0)
    sigma_data: float = 0.5  # consistency c_skip/c_out constant (LCM)
    timestep_scaling: float = 10.0  # consistency: t is scaled by 1000 * this inside c_skip/c_out


def sinusoidal(x: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal features [B, dim] of a scalar per sample."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
    ang = (x.float() * scale)[:, None] * freqs[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)


class ZeroEmbed(nn.Module):
    """Scalar -> embedding MLP whose output layer starts at zero (no effect until trained)."""

    def __init__(self, dim: int, feat: int = 64, scale: float = 1000.0):
        super().__init__()
        self.feat, self.scale = feat, scale
        self.net = nn.Sequential(nn.Linear(feat, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(sinusoidal(x, self.feat, self.scale).to(self.net[0].weight.dtype))


class Student(nn.Module):
    """``student(x_t, t, cond, s=None, w=None)`` -> prediction in ``self.prediction``."""

    def __init__(
        self,
        teacher: MultiViewTeacher,
        cfg: StudentConfig,
        path: str | None = None,
        prediction: str | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.net = copy.deepcopy(teacher).requires_grad_(True)
        self.teacher_info = teacher.info
        self.teacher_weights = teacher.weights_key()
        self.net_prediction = teacher.prediction  # what the network itself outputs
        self._path = path or teacher.path_name
        self._prediction = check_prediction(prediction or teacher.prediction)
        if cfg.boundary:
            self._prediction = "x0"
        dim = teacher.time_embed_dim
        self.s_embed = ZeroEmbed(dim) if cfg.second_time else None
        self.w_embed = ZeroEmbed(dim, scale=100.0) if cfg.guidance_input else None
        if cfg.lora_rank > 0:
            self.net.requires_grad_(False)
            self.lora_config = add_lora(self.net.unet, cfg.lora_rank, cfg.lora_alpha)

    # --- what samplers need -----------------------------------------------------------------
    @property
    def path_name(self) -> str:
        return self._path

    @property
    def prediction(self) -> str:
        return self._prediction

    @property
    def info(self):
        return self.teacher_info

    @property
    def start_time(self) -> float:
        """The teacher's start time on the teacher's own path; 1 on any other path."""
        return float(self.net.start_time) if self._path == self.net.path_name else 1.0

    def noise_shape(self) -> tuple[int, ...]:
        return self.net.noise_shape()

    def decode(self, x: Tensor) -> Tensor:
        return self.net.decode(x)

    # --- the call -----------------------------------------------------------------------------
    def c_skip_out(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Consistency boundary coefficients; c_skip(0) = 1 and c_out(0) = 0 exactly."""
        sd = self.cfg.sigma_data
        ts = t * 1000.0 * self.cfg.timestep_scaling
        return sd**2 / (ts**2 + sd**2), ts / torch.sqrt(ts**2 + sd**2)

    def forward(
        self, x_t: Tensor, t: Tensor, cond: Tensor, s: Tensor | None = None, w: Tensor | None = None
    ) -> Tensor:
        emb = None
        if self.s_embed is not None:
            if s is None:
                raise ValueError("this student takes a second time input s (e.g. a step size)")
            emb = self.s_embed(s)
        if self.w_embed is not None:
            if w is None:
                raise ValueError("this student takes a guidance-scale input w")
            e = self.w_embed(w)
            emb = e if emb is None else emb + e
        out = self.net(x_t, t, cond, emb=emb)
        path = get_path(self.net.path_name)
        if not self.cfg.boundary:
            if self._prediction == self.net_prediction or self._path != self.net.path_name:
                return out  # (on another path the network learns the new output from scratch)
            tc = t.clamp(min=NET_T_MIN)  # e.g. a velocity student of an x0 teacher
            return convert(path, out, x_t, tc, self.net_prediction, self._prediction)
        x0, _ = to_x0_eps(path, out, x_t, t, self.net_prediction)
        c_skip, c_out = self.c_skip_out(t.reshape(-1, *([1] * (x_t.ndim - 1))))
        return c_skip * x_t + c_out * x0

    # --- weights --------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, Tensor]:
        """The weights that make this student: the adapter (LoRA) or the whole network."""
        if self.cfg.lora_rank > 0:
            sd = keys.join("lora", adapter_state(self.net.unet))
        else:
            sd = keys.join("net", self.net.state_dict())
        for name in keys.EMBEDS:
            mod = getattr(self, name)
            if mod is not None:
                sd.update(keys.join(name, mod.state_dict()))
        return sd

    def load_trainable_state(self, sd: dict[str, Tensor]) -> None:
        """Set the weights ``trainable_state`` gives (full copies and embeddings in float32)."""
        if self.cfg.lora_rank > 0:
            load_adapter_state(self.net.unet, keys.split("lora", sd))
        else:
            # a full student's folder holds its UNet only: a teacher's frozen parts (VAE, image
            # encoders) come from the teacher folder, so only UNet keys may be missing
            net_sd = {k: v.float() for k, v in keys.split("net", sd).items()}
            res = self.net.load_state_dict(net_sd, strict=False)
            lost = [k for k in res.missing_keys if k.startswith("unet.")] + res.unexpected_keys
            if lost:
                raise ValueError(f"student weights do not fit the teacher's network: {lost[:5]}")
        for name in keys.EMBEDS:
            mod = getattr(self, name)
            if mod is not None:
                mod.load_state_dict({k: v.float() for k, v in keys.split(name, sd).items()})

    def save_pretrained(
        self,
        folder: str | Path,
        card: StudentCard,
        stages: dict[int, dict[str, Tensor]] | None = None,
        dtype: torch.dtype = torch.float16,
    ) -> Path:
        """Write the student folder (``card`` filled in); ``stages`` maps extra step counts to
        their own weights."""
        from students.folder import save_folder

        return save_folder(self, folder, card, stages, dtype)
