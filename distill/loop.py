"""The lab's one training loop (teacher, reconstructor, encoder and every method use it).

accelerate provides devices, mixed precision, gradient accumulation and multi-GPU (the same
command runs under ``accelerate launch``). The loop adds EMA weights, atomic checkpoints every
N steps and at the end, exact resume after a kill (model, optimizer, scheduler, EMA, step, RNG
and any extra state the task registers), a progress bar, and per-term CSV (and TensorBoard)
logs. Each step draws its randomness from a generator seeded by (seed, step), so a resumed run
repeats exactly what an uninterrupted one would have done.

Device placement has one owner, this loop: :func:`train_device` decides (accelerate's choice),
the loop moves the model there, and each step runs with that device as torch's default device
and a step generator on it, so every tensor a step draws or builds (noise, times, masks, the
data rows it indexes: see ``scenes.data.WorldDataset.batch``) is made where the model is.
Commands move their frozen networks and constant tensors with ``train_device()`` before
training; the loop gives the model back on the device it came from.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import parse_flag_from_env, set_seed
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm


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


class EMA:
    """Exponential moving average of a module's trainable parameters: the loop's EMA weights
    and every method's target network (``module=True`` keeps the average in a frozen copy of
    the model that can be called)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True, module: bool = False):
        if not 0 < decay < 1:
            raise ValueError(f"an EMA decay must lie in (0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        self.module = copy.deepcopy(model).eval().requires_grad_(False) if module else None
        if self.module is not None:  # the copy's own parameters are the average
            params = dict(self.module.named_parameters())
            self.shadow = {k: params[k].data for k in names}
        else:
            params = dict(model.named_parameters())
            self.shadow = {k: params[k].detach().clone().float() for k in names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay
        if self.warmup:
            d = min(d, (1 + self.updates) / (10 + self.updates))
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach().to(self.shadow[k].dtype), 1 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        for k, p in model.named_parameters():
            if k in self.shadow:
                p.copy_(self.shadow[k].to(p.dtype))
        return model

    def model_copy(self, model: nn.Module) -> nn.Module:
        return self.copy_to(copy.deepcopy(model))

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        self.updates = sd["updates"]
        for k, v in sd["shadow"].items():  # in place: a module's copy stays the average
            self.shadow[k].copy_(v)


class Draws:
    """A step's random draws, for this process's rows of the global batch.

    Every per-row draw is made for the whole global batch (``batch`` rows per process, all
    processes together) from a generator that every process seeds alike, and this process keeps
    its own rows: N processes with ``batch`` rows each see exactly the rows one process with
    N * ``batch`` rows sees, and their generators stay in step. With one process a draw is the
    plain ``torch.rand((batch, ...), generator=gen)``. Draws that are not per row (a step count
    shared by the batch) use ``gen`` itself, the same on every process."""

    def __init__(self, gen: torch.Generator, batch: int, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"process {rank} of {world}")
        self.gen, self.batch, self.rank, self.world = gen, batch, rank, world
        self.total = batch * world  # rows of the global batch

    def local(self, x: Tensor, first: int = 0) -> Tensor:
        """The rows of ``x`` that are this process's, where ``x`` holds the global rows
        ``first, first + 1, ...`` (a part of the batch drawn on its own, e.g. its first 25%)."""
        lo, hi = self.rank * self.batch - first, (self.rank + 1) * self.batch - first
        lo, hi = min(max(lo, 0), len(x)), min(max(hi, 0), len(x))
        return x[lo:hi]

    def rand(self, *shape: int) -> Tensor:
        """Uniform [0, 1) values [batch, *shape]."""
        return self.local(
            torch.rand((self.total, *shape), generator=self.gen, device=self.gen.device)
        )

    def randn(self, *shape: int) -> Tensor:
        """Standard normal values [batch, *shape]."""
        return self.local(
            torch.randn((self.total, *shape), generator=self.gen, device=self.gen.device)
        )

    def randint(self, low: int, high: int, *shape: int) -> Tensor:
        """Integers in [low, high) [batch, *shape]."""
        return self.local(
            torch.randint(
                low, high, (self.total, *shape), generator=self.gen, device=self.gen.device
            )
        )


def as_draws(gen: torch.Generator | Draws, rows: int) -> Draws:
    """``gen`` as the draws of one process with ``rows`` rows (a Draws is returned as is)."""
    return gen if isinstance(gen, Draws) else Draws(gen, rows)


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for one (micro-)step: a pure function of (seed, step) on ``device``."""
    g = torch.Generator(device=device)
    return g.manual_seed((seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1))


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


def _lr_lambda(cfg: TrainConfig, origin: list[int]) -> Callable[[int], float]:
    """The learning-rate factor at a scheduler step; ``origin[0]`` is where it last restarted."""

    def f(step: int) -> float:
        step -= origin[0]
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "cosine":
            p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
        return 1.0

    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"train.schedule must be constant or cosine, got {cfg.schedule!r}")
    return f


class Checkpoints:
    """Atomic checkpoint folders ``run/checkpoints/step_XXXXXXX`` plus a ``latest`` pointer."""

    def __init__(self, run_dir: Path, keep: int):
        self.dir = run_dir / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        ptr = self.dir / "latest"
        if not ptr.exists():
            return None
        path = self.dir / ptr.read_text().strip()
        return path if (path / "state.pt").exists() else None

    def save(self, step: int, tensors: dict[str, dict[str, Tensor]], state: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:07d}"
        final = self.dir / name
        tmp = self.dir / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for fname, sd in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, tmp / fname)
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        ptr_tmp = self.dir / "latest.tmp"
        ptr_tmp.write_text(name)
        os.replace(ptr_tmp, self.dir / "latest")
        old = sorted(p for p in self.dir.glob("step_*") if not p.name.endswith(".tmp"))
        for p in old[: max(0, len(old) - self.keep)]:
            shutil.rmtree(p, ignore_errors=True)
        return final


StepFn = Callable[[nn.Module, int, Draws], dict[str, Tensor]]


def train(
    run_dir: str | Path,
    cfg: TrainConfig,
    model: nn.Module,
    step_fn: StepFn,
    extra_state: dict | None = None,
    desc: str = "train",
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> tuple[nn.Module, EMA | None, dict]:
    """Optimise ``model``'s trainable parameters with ``step_fn`` for ``cfg.steps`` updates.

    ``step_fn(model, micro_step, draws)`` returns named loss terms including ``loss``
    (what is optimised); ``model`` is what accelerate prepared (a DistributedDataParallel
    wrapper when several processes train: call it for the forward pass whose loss is
    optimised, and use :func:`unwrap` for attributes and other calls); ``draws`` (a
    :class:`Draws`) makes the step's randomness, this process's rows of the global batch of
    ``cfg.batch_size`` rows per process. ``extra_state`` maps names to objects with
    ``state_dict`` / ``load_state_dict`` that must survive a resume (e.g. a method's target
    network).
    ``on_step(step, model)`` runs after each update (e.g. a method's round switch); when it
    returns True the optimizer state is dropped and the learning-rate schedule (warm-up
    included) starts again from the next update.
    Returns the trained model, its EMA and a summary.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    log_with = []
    try:
        import tensorboard  # noqa: F401

        log_with = ["tensorboard"]
    except ImportError:
        pass
    acc = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=log_with or None,
        project_dir=str(run_dir),
    )
    set_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    home = params[0].device  # where the model is given back
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas)
    )
    origin = [0]  # scheduler step of the last restart
    lr_factor = _lr_lambda(cfg, origin)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    # the schedule counts optimizer updates: not accelerate's scheduler wrapper, which steps it
    # once per process per update
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    ema = EMA(raw, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    extra_state = extra_state or {}
    ckpts = Checkpoints(run_dir, cfg.keep_ckpts)
    start = 0
    last = ckpts.latest()
    if last is not None:
        raw.load_state_dict(load_file(last / "model.safetensors"), strict=False)
        state = torch.load(last / "state.pt", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(
                {"updates": state["ema_updates"], "shadow": load_file(last / "ema.safetensors")}
            )
        for name, obj in extra_state.items():
            obj.load_state_dict(state["extra"][name])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        start = state["step"]
        origin[0] = state.get("lr_origin", 0)
        print(f"resuming {run_dir} from step {start} ({last.name})", flush=True)
    if acc.is_main_process and log_with:
        acc.init_trackers("logs")

    def save(step: int) -> None:
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        tensors = {"model.safetensors": trainable_state(raw)}
        if ema is not None:
            tensors["ema.safetensors"] = ema.shadow
        state = {
            "step": step,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "ema_updates": ema.updates if ema is not None else 0,
            "lr_origin": origin[0],
            "extra": {k: v.state_dict() for k, v in extra_state.items()},
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        ckpts.save(step, tensors, state)

    log_path = run_dir / "losses.csv"
    if start > 0 and log_path.exists() and acc.is_main_process:  # its one writer
        _truncate_log(log_path, start)  # drop rows a killed run logged after its checkpoint
    writer, log_file, fields = None, None, None
    t_start = time.perf_counter()
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc=desc,
        disable=not acc.is_main_process,
        dynamic_ncols=True,
    )
    model.train()
    last_terms: dict[str, float] = {}
    for step in range(start, cfg.steps):
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            gen = step_generator(cfg.seed, step * cfg.grad_accum + micro, acc.device)
            draws = Draws(gen, cfg.batch_size, acc.process_index, acc.num_processes)
            with acc.accumulate(model), acc.device:
                with acc.autocast():
                    terms = step_fn(model, step * cfg.grad_accum + micro, draws)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {step}: {terms}")
                acc.backward(loss)
                if acc.sync_gradients and cfg.grad_clip > 0:
                    acc.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                if acc.sync_gradients and not opt.step_was_skipped:
                    sched.step()
                opt.zero_grad(set_to_none=True)
            if acc.num_processes > 1:  # the logged loss is the global batch's
                terms["loss"] = acc.reduce(terms["loss"].detach(), "mean")
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        if ema is not None:
            ema.update(raw)
        with acc.device:
            if on_step is not None and on_step(step + 1, raw):
                _restart(opt, sched, origin, lr_factor)
        last_terms = sums
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        done = step + 1
        if acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.steps):
            row = {
                "step": done,
                "lr": sched.get_last_lr()[0],
                "elapsed_s": round(time.perf_counter() - t_start, 3),
                **sums,
            }
            if writer is None:
                exists = log_path.exists()
                fields = list(row)
                log_file = open(log_path, "a", newline="")
                writer = csv.DictWriter(log_file, fieldnames=fields, extrasaction="ignore")
                if not exists:
                    writer.writeheader()
            writer.writerow(row)
            log_file.flush()
            if log_with:
                acc.log({k: v for k, v in row.items() if k != "step"}, step=done)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save(done)
    bar.close()
    if log_file:
        log_file.close()
    if log_with:
        acc.end_training()
    summary = {
        "steps": cfg.steps,
        "resumed_from": start,
        "final": last_terms,
        "seconds_this_run": round(time.perf_counter() - t_start, 1),
        "device": str(acc.device),
        "processes": acc.num_processes,
    }
    if acc.is_main_process:
        (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return raw.to(home), ema, summary


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)


def _restart(opt, sched, origin: list[int], lr_factor) -> None:
    """A fresh optimizer state and learning-rate schedule from the next update on."""
    inner = getattr(opt, "optimizer", opt)  # accelerate wraps the optimizer
    inner.state.clear()
    origin[0] = sched.last_epoch
    for group, base in zip(inner.param_groups, sched.base_lrs):
        group["lr"] = base * lr_factor(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in inner.param_groups]


def start_from(model: nn.Module, start: nn.Module, name: str, key: str) -> None:
    """A refinement stage: copy ``start``'s weights (a previous stage, called ``name`` in
    errors) into ``model``; both must have been built from the same ``key``.* config."""
    if start.cfg != model.cfg:
        raise ValueError(
            f"{name} has another architecture than {key}.* ({start.cfg} vs {model.cfg})"
        )
    model.load_state_dict(start.state_dict())


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """State of the parameters that train (all buffers too), by name."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    sd = model.state_dict()
    return {k: v for k, v in sd.items() if k in names or k not in dict(model.named_parameters())}


def _truncate_log(path: Path, step: int) -> None:
    rows = path.read_text().splitlines()
    keep = rows[:1] + [r for r in rows[1:] if r and int(r.split(",")[0]) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(keep) + "\n")
    os.replace(tmp, path)
