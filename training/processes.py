"""The training processes (accelerate's state) and device placement, decided in one place.

Device placement has one owner: :func:`train_device` decides (accelerate's choice), the loop
moves the model there and runs each step with that device as torch's default, so every tensor a
step draws or builds is made where the model is. Commands move their frozen networks and
constant tensors with ``train_device()`` before training.
"""

from __future__ import annotations

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from torch import Tensor, nn


def _state() -> PartialState:
    """accelerate's process state (shared with the loop's Accelerator), CPU when asked."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def main_first():
    """Context in which the main process runs first (making data or couplings, writing the
    run's config) and the other processes after it, finding its files; one process alone runs
    straight through."""
    return _state().main_process_first()


def is_main() -> bool:
    """Whether this process writes the run's outputs (the only one, or rank 0 of several)."""
    return _state().is_main_process


def across_processes(x: Tensor) -> Tensor:
    """``x`` summed over the training processes, outside autograd (``x`` itself, detached, for
    one process): a batch-wide normaliser, e.g. the count in a masked mean, so N processes
    compute the loss one process would on their rows together."""
    state = _state()
    x = x.detach().clone()
    if state.num_processes > 1:
        torch.distributed.all_reduce(x)
    return x


def process_count() -> int:
    """How many processes train together."""
    return _state().num_processes


def process_sum(x: int) -> int:
    """``x`` summed over the training processes (``x`` itself when one process trains); every
    process must call it at the same point."""
    return int(across_processes(torch.tensor([x], dtype=torch.int64, device=_state().device)))


def average_gradients(params) -> None:
    """Average the gradients of ``params`` over the training processes (a network that a method
    optimises itself, beside the loop's model, e.g. DMD2's fake score); no-op for one process."""
    state = _state()
    if state.num_processes == 1:
        return
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= state.num_processes


def train_device() -> torch.device:
    """The device this process trains on, decided in one place: accelerate's choice (the
    process's GPU under ``accelerate launch``, else CUDA when present, else the CPU; ``--cpu``
    or ACCELERATE_USE_CPU=1 forces the CPU). The loop's Accelerator shares this state."""
    return _state().device


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)
