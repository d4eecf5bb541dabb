"""What every multi-view teacher presents to samplers, students and methods.

A teacher is an ``nn.Module`` called as ``teacher(x_t, t, cond, emb=None)``:
  - x_t  [B, V, C, h, w]: the V views in the teacher's space (pixels, or latents for a VAE model);
  - t    [B]: the lab's time in [0, 1] (adapters map it to their own timesteps);
  - cond [B, 3, H, W]: the condition image in [-1, 1]; zeros is the null condition (for CFG);
  - emb  [B, D] or None: an extra embedding added to the time embedding, D = ``time_embed_dim``
    (students feed their second time input through it; None leaves the teacher unchanged);
and returns its raw prediction in ``prediction`` parametrization on ``path``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from recon.tiling import tile_views, untile_views  # noqa: F401  (re-exported)
from samplers.protocol import tensors_key


@dataclass
class TeacherInfo:
    kind: str  # "lab" or "diffusers"
    path: str  # the lab path name (linear / cosine)
    prediction: str  # velocity / eps / x0 / v
    views: int
    grid: tuple[int, int]  # rows, cols of the tiled views
    channels: int  # channels per view in model space
    size: int  # view size in model space
    image_size: int  # view size in pixels after decode


def read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def weights_file(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(
        f"{folder}: no safetensors weights (diffusion_pytorch_model.safetensors)"
    )


def load_component(cls, folder: Path):
    """from_pretrained with local files only and errors that name the file."""
    weights = weights_file(folder)
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            list(f.keys())
    except Exception as e:
        raise ValueError(f"{weights}: corrupt or unreadable weights file ({e})") from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
    except Exception as e:
        raise ValueError(f"{weights}: weights do not match {folder / 'config.json'} ({e})") from e


class MultiViewTeacher(nn.Module):
    """Base class: holds ``info`` and the decode step (identity in pixel space)."""

    info: TeacherInfo

    @property
    def path_name(self) -> str:
        return self.info.path

    @property
    def prediction(self) -> str:
        return self.info.prediction

    # --- the sampleable interface (shared with loaded students) -------------------------------
    method = "teacher"
    supported_steps: list[int] | None = None  # any step count
    own_sampler: str | None = None  # callers choose the sampler
    _weights_key: str = ""  # file key of the weights, set when loaded from a folder
    record: dict | None = None  # the folder's saved record (teacher.json, multiview.json)
    views: list[tuple[float, float]] | None = None  # (azimuth, elevation) per view, if known

    def weights_key(self) -> str:
        """The one hash that identifies these weights (caches, serving, cards)."""
        return self._weights_key or tensors_key(self.state_dict())

    def sample(
        self,
        cond: Tensor,
        steps: int,
        seeds: list[int],
        sampler: str = "euler",
        guidance: float = 1.0,
        decode: bool = True,
    ) -> tuple[Tensor, int]:
        """Views [B, V, 3, H, W] (model space with ``decode=False``) and the NFE per sample."""
        from samplers.sampling import generate

        return generate(self, cond, steps, seeds, sampler, guidance, decode=decode)

    @property
    def start_time(self) -> float:
        """The lab time sampling starts from: 1 (pure noise) unless the model was trained only
        below it (a DDPM teacher's last trained timestep)."""
        return 1.0

    def sampling_times(self, steps: int, shift: float = 1.0) -> Tensor:
        """The time grid of ``steps`` steps this teacher samples on, from ``start_time`` to 0
        (a diffusers teacher uses its own scheduler's timesteps)."""
        from samplers.sampling import time_grid

        return time_grid(steps, shift, self.start_time)

    @property
    def time_embed_dim(self) -> int:
        raise NotImplementedError

    def check_inputs(self, x_t: Tensor, t: Tensor, cond: Tensor) -> None:
        i = self.info
        want = (i.views, i.channels, i.size, i.size)
        if x_t.ndim != 5 or tuple(x_t.shape[1:]) != want:
            raise ValueError(
                f"x_t must be [B, {', '.join(map(str, want))}], got {tuple(x_t.shape)}"
            )
        if cond.ndim != 4 or cond.shape[0] != x_t.shape[0] or cond.shape[1] != 3:
            raise ValueError(f"cond must be [B={x_t.shape[0]}, 3, H, W], got {tuple(cond.shape)}")
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be [B={x_t.shape[0]}], got {tuple(t.shape)}")

    def decode(self, x: Tensor) -> Tensor:
        """Views in model space -> images [B, V, 3, H, W] in [-1, 1]."""
        return x.clamp(-1, 1)

    def encode(self, images: Tensor) -> Tensor:
        """Images [B, V, 3, H, W] in [-1, 1] -> model space (identity in pixel space)."""
        return images

    def noise_shape(self) -> tuple[int, ...]:
        i = self.info
        return (i.views, i.channels, i.size, i.size)
