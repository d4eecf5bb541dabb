import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_util import ROOT

from teachers.io import load_teacher
from training.checkpoints import start_from

TINY = str(ROOT / "configs" / "teacher" / "tiny.yaml")


def _cmd(tmp: Path, run: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "distill.cli",
        "teacher",
        "train",
        TINY,
        f"run_dir={tmp / run}",
        f"data.root={tmp / 'data'}",
        *extra,
    ]


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_teacher_train_kill_and_resume_is_exact(tmp_path):
    # data first, so that both runs start from the same files
    _run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "data",
            "make",
            "--split",
            "train",
            "--count",
            "24",
            "--root",
            str(tmp_path / "data"),
            "world.image_size=16",
            "world.gaussians=64",
        ]
    )
    # the uninterrupted reference
    _run(_cmd(tmp_path, "ref"))
    # a run killed (SIGKILL) once its first checkpoint exists, then rerun with the same command
    proc = subprocess.Popen(
        _cmd(tmp_path, "killed"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(latest.read_text().split("_")[1])
    assert killed_at < 40, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "teacher").exists()
    r = _run(_cmd(tmp_path, "killed"))
    assert "resuming" in r.stdout
    ref, res = (
        load_teacher(tmp_path / "ref" / "teacher"),
        load_teacher(tmp_path / "killed" / "teacher"),
    )
    for (k, a), (_, b) in zip(ref.state_dict().items(), res.state_dict().items()):
        assert torch.equal(a, b), k
    # the resumed run's log continues where the killed one stopped, one row per logged step
    lines = (tmp_path / "killed" / "losses.csv").read_text().strip().splitlines()
    steps = [int(ln.split(",")[0]) for ln in lines[1:]]
    assert (
        steps == sorted(set(steps))
        and steps[-1] == 40
        and lines[0].startswith("step,lr,elapsed_s,loss")
    )
    assert (tmp_path / "killed" / "config.yaml").exists()


class _Net(torch.nn.Linear):
    def __init__(self, width: int):
        super().__init__(width, width)
        self.cfg = {"width": width}


def test_start_from_copies_weights_and_rejects_another_architecture():
    start, model = _Net(3), _Net(3)
    start_from(model, start, "init net x", "net")
    for (k, a), b in zip(start.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match=r"init net x has another architecture than net\.\*"):
        start_from(_Net(4), start, "init net x", "net")


def _lin_step(model, step, draws):
    x = torch.randn(8, 3, generator=draws.gen)
    return {"loss": ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()}


def test_on_step_true_restarts_optimizer_and_warmup(tmp_path):
    """A method's round switch (on_step -> True) starts the lr schedule again, warm-up
    included, and drops the optimizer's moments."""
    import csv

    from training.config import TrainConfig
    from training.loop import train

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig(steps=6, warmup=3, lr=0.1, log_every=1, ckpt_every=100, ema_decay=0.0)
    train(tmp_path, cfg, model, _lin_step, on_step=lambda step, m: step == 3)
    with open(tmp_path / "losses.csv") as f:
        lr = [float(r["lr"]) for r in csv.DictReader(f)]
    # the column is the lr of the next update: warm-up 1/3, 2/3, 1 of 0.1, then again after
    # the restart at update 3
    assert lr == pytest.approx([0.1 * k / 3 for k in (2, 3, 1, 2, 3, 3)])


def test_restart_clears_optimizer_state():
    from training.schedule import Schedule

    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([p], lr=1.0)
    schedule = Schedule(warmup=4, steps=1000)
    sched = schedule.scheduler(opt)
    for _ in range(5):
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert opt.state[p] and opt.param_groups[0]["lr"] == 1.0
    schedule.restart(opt, sched)
    assert not opt.state and schedule.origin == 5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)


def test_schedule_refuses_an_unknown_kind():
    from training.schedule import Schedule

    with pytest.raises(ValueError, match="train.schedule must be constant or cosine"):
        Schedule(warmup=1, steps=10, kind="linear")


def test_ema_module_copy_tracks_and_restores_in_place():
    from training.ema import EMA

    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.5, warmup=False, module=True)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, w0 + 1.0)  # halfway: decay 0.5
    sd = {k: v.clone() for k, v in ema.state_dict()["shadow"].items()}
    ema.update(model)
    ema.load_state_dict({"updates": 1, "shadow": sd})  # the callable copy follows
    assert torch.allclose(ema.module.weight, w0 + 1.0) and ema.updates == 1
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="EMA decay"):
        EMA(model, 1.0)
