"""The optimisation and bookkeeping settings every training command shares."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping shared by every training command."""

    steps: int = 1000  # optimizer updates
    batch_size: int = 16  # per device, per micro-step
    grad_accum: int = 1  # micro-steps per update
    lr: float = 3e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0
    betas: list[float] = None  # AdamW betas; None = (0.9, 0.999)
    warmup: int = 100  # linear warm-up steps
    schedule: str = "constant"  # constant | cosine (after warm-up)
    grad_clip: float = 1.0  # max grad norm; 0 disables
    ema_decay: float = 0.999  # EMA of the weights; 0 disables
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) early on
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)
    ckpt_every: int = 500  # checkpoint period in steps (and always at the end)
    keep_ckpts: int = 2  # checkpoints kept on disk
    log_every: int = 10  # CSV/TensorBoard period in steps
    seed: int = 0  # seeds every step's generator
    threads: int = 0  # torch CPU threads; 0 = torch default

    def __post_init__(self):
        if self.betas is None:
            self.betas = [0.9, 0.999]
