"""The sampleable protocol that teachers and loaded students fill, and the one weights key.

Samplers, the sweep and serving call any model through these members and never ask which kind
of model it is. ``weights_key()`` is the one identity of a model's weights (caches, serving,
student cards): a 16-hex SHA-256, of the weights files when the model was loaded from a folder
(:func:`file_key`), else of its tensors (:func:`tensors_key`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Sampleable(Protocol):
    """What every sampled model presents: a teacher, or a student loaded from its folder."""

    path_name: str  # the lab path its output lives on (linear, cosine)
    prediction: str  # its output's parametrization (velocity, eps, x0, v)
    method: str  # "teacher" or the distillation method
    supported_steps: list[int] | None  # step counts it may be sampled with; None = any
    own_sampler: str | None  # the sampler it must use; None = the caller's choice
    start_time: float  # the lab time sampling starts from (1 = pure noise)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor, s: Tensor | None = None) -> Tensor:
        """The raw prediction at (x_t, t) given the condition (and a second time ``s``)."""
        ...

    def sample(
        self,
        cond: Tensor,
        steps: int,
        seeds: list[int],
        sampler: str = "euler",
        guidance: float = 1.0,
        decode: bool = True,
    ) -> tuple[Tensor, int]:
        """Views [B, V, 3, H, W] for ``cond`` from per-object seeds, and the NFE per sample."""
        ...

    def weights_key(self) -> str:
        """The one hash that identifies these weights."""
        ...

    def noise_shape(self) -> tuple[int, ...]:
        """The shape of one sample in model space [V, C, h, w]."""
        ...

    def decode(self, x: Tensor) -> Tensor:
        """Samples in model space -> images [B, V, 3, H, W] in [-1, 1]."""
        ...


def tensors_key(tensors: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> str:
    """SHA-256 (first 16 hex) of named tensors, by sorted name, their values cast to ``dtype``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to(dtype).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_key(path: str | Path) -> str:
    """SHA-256 (first 16 hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def folder_key(folder: str | Path) -> str:
    """SHA-256 (first 16 hex) of every safetensors file under ``folder``, by relative path."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        h.update(f"{f.relative_to(folder)}:{file_key(f)}".encode())
    return h.hexdigest()[:16]
