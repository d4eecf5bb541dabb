"""The lab's one training loop (teacher, reconstructor, encoder and every method use it).

accelerate provides devices, mixed precision, gradient accumulation and multi-GPU (the same
command runs under ``accelerate launch``). The loop adds EMA weights, atomic checkpoints every
N steps and at the end, exact resume after a kill (model, optimizer, scheduler, EMA, step, RNG
and any extra state the task registers), a progress bar, and per-term CSV (and TensorBoard)
logs. Each step draws its randomness from a generator seeded by (seed, step), so a resumed run
repeats exactly what an uninterrupted one would have done. It never knows what it trains: a
step function returns the loss terms. It owns device placement (see ``training.processes``)
and gives the model back on the device it came from.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm import tqdm

from training.checkpoints import Checkpoints, LossLog, trainable_state
from training.config import TrainConfig
from training.draws import Draws, step_generator
from training.ema import EMA
from training.schedule import Schedule

StepFn = Callable[[nn.Module, int, Draws], dict[str, Tensor]]


def _trackers() -> list[str]:
    """TensorBoard when it is installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return []
    return ["tensorboard"]


class _Run:
    """What one call of :func:`train` holds: the prepared model and optimizer, the schedule,
    the EMA and the state that must survive a resume."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, model: nn.Module, extra_state: dict):
        self.cfg, self.run_dir, self.log_with = cfg, run_dir, _trackers()
        self.acc = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with=self.log_with or None,
            project_dir=str(run_dir),
        )
        set_seed(cfg.seed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.home = self.params[0].device  # where the model is given back
        opt = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas)
        )
        self.schedule = Schedule(cfg.warmup, cfg.steps, cfg.schedule)
        # the schedule counts optimizer updates: not accelerate's scheduler wrapper, which
        # steps it once per process per update
        self.sched = self.schedule.scheduler(opt)
        self.model, self.opt = self.acc.prepare(model, opt)
        self.raw = self.acc.unwrap_model(self.model)
        self.ema = EMA(self.raw, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
        self.extra = extra_state
        self.ckpts = Checkpoints(run_dir, cfg.keep_ckpts)
        self.log = LossLog(run_dir, main=self.acc.is_main_process)

    def resume(self) -> int:
        """Restore the latest checkpoint, if any; the step to continue from."""
        last = self.ckpts.latest()
        if last is None:
            return 0
        self.raw.load_state_dict(load_file(last / "model.safetensors"), strict=False)
        state = torch.load(last / "state.pt", weights_only=False)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.ema is not None:
            shadow = load_file(last / "ema.safetensors")
            self.ema.load_state_dict({"updates": state["ema_updates"], "shadow": shadow})
        for name, obj in self.extra.items():
            obj.load_state_dict(state["extra"][name])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.schedule.origin = state.get("lr_origin", 0)
        print(f"resuming {self.run_dir} from step {state['step']} ({last.name})", flush=True)
        self.log.resume(state["step"])  # drop rows a killed run logged after its checkpoint
        return state["step"]

    def save(self, step: int) -> None:
        """Checkpoint after update ``step`` (the main process writes)."""
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return
        tensors = {"model.safetensors": trainable_state(self.raw)}
        if self.ema is not None:
            tensors["ema.safetensors"] = self.ema.shadow
        state = {
            "step": step,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "lr_origin": self.schedule.origin,
            "extra": {k: v.state_dict() for k, v in self.extra.items()},
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        self.ckpts.save(step, tensors, state)

    def update(self, step: int, step_fn: StepFn) -> dict[str, float]:
        """One optimizer update of ``cfg.grad_accum`` micro-steps; the mean loss terms."""
        cfg, acc = self.cfg, self.acc
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            index = step * cfg.grad_accum + micro
            gen = step_generator(cfg.seed, index, acc.device)
            draws = Draws(gen, cfg.batch_size, acc.process_index, acc.num_processes)
            with acc.accumulate(self.model), acc.device:
                with acc.autocast():
                    terms = step_fn(self.model, index, draws)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {step}: {terms}")
                acc.backward(loss)
                if acc.sync_gradients and cfg.grad_clip > 0:
                    acc.clip_grad_norm_(self.params, cfg.grad_clip)
                self.opt.step()
                if acc.sync_gradients and not self.opt.step_was_skipped:
                    self.sched.step()
                self.opt.zero_grad(set_to_none=True)
            if acc.num_processes > 1:  # the logged loss is the global batch's
                terms["loss"] = acc.reduce(terms["loss"].detach(), "mean")
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        return sums

    def write_log(self, done: int, sums: dict[str, float], elapsed: float) -> None:
        """The loss log's row for update ``done`` (and TensorBoard's)."""
        lr = self.sched.get_last_lr()[0]
        row = {"step": done, "lr": lr, "elapsed_s": round(elapsed, 3), **sums}
        self.log.write(row)
        if self.log_with and self.acc.is_main_process:
            self.acc.log({k: v for k, v in row.items() if k != "step"}, step=done)


def train(
    run_dir: str | Path,
    cfg: TrainConfig,
    model: nn.Module,
    step_fn: StepFn,
    extra_state: dict | None = None,
    desc: str = "train",
    on_step: Callable[[int, nn.Module], bool | None] | None = None,
) -> tuple[nn.Module, EMA | None, dict]:
    """Optimise ``model``'s trainable parameters with ``step_fn`` for ``cfg.steps`` updates.

    ``step_fn(model, micro_step, draws)`` returns named loss terms including ``loss`` (what is
    optimised); ``model`` is what accelerate prepared (a DistributedDataParallel wrapper when
    several processes train: call it for the forward pass whose loss is optimised, and use
    ``training.processes.unwrap`` for attributes and other calls); ``draws`` (a
    :class:`Draws`) makes the step's randomness, this process's rows of the global batch of
    ``cfg.batch_size`` rows per process. ``extra_state`` maps names to objects with
    ``state_dict`` / ``load_state_dict`` that must survive a resume (e.g. a method's target
    network). ``on_step(step, model)`` runs after each update (e.g. a method's round switch);
    when it returns True the optimizer state is dropped and the learning-rate schedule (warm-up
    included) starts again from the next update. Returns the trained model, its EMA and a
    summary.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = _Run(run_dir, cfg, model, extra_state or {})
    acc = run.acc
    start = run.resume()
    if acc.is_main_process and run.log_with:
        acc.init_trackers("logs")
    t_start = time.perf_counter()
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc=desc,
        disable=not acc.is_main_process,
        dynamic_ncols=True,
    )
    run.model.train()
    sums: dict[str, float] = {}
    for step in range(start, cfg.steps):
        sums = run.update(step, step_fn)
        if run.ema is not None:
            run.ema.update(run.raw)
        with acc.device:
            if on_step is not None and on_step(step + 1, run.raw):
                run.schedule.restart(run.opt, run.sched)
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}", lr=f"{run.sched.get_last_lr()[0]:.1e}")
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            run.write_log(done, sums, time.perf_counter() - t_start)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            run.save(done)
    bar.close()
    run.log.close()
    if run.log_with:
        acc.end_training()
    summary = {
        "steps": cfg.steps,
        "resumed_from": start,
        "final": sums,
        "seconds_this_run": round(time.perf_counter() - t_start, 1),
        "device": str(acc.device),
        "processes": acc.num_processes,
    }
    if acc.is_main_process:
        (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return run.raw.to(run.home), run.ema, summary
