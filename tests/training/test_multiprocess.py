"""`accelerate launch --cpu --num_processes 2` runs of the training commands (gloo backend):
one process writes the outputs, a stopped run resumes from its checkpoint, the cost counts
every process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_util import ROOT, smoke_train_args


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str]) -> subprocess.CompletedProcess:
    """``args`` (a ``python -m distill.cli ...`` command) under accelerate with 2 CPU processes.
    accelerate 1.x starts one process for ``--cpu --num_processes 2`` (several CPU processes
    need mpirun there); its torchrun launcher (``--multi_gpu``) with ACCELERATE_USE_CPU=1 starts
    two, joined by gloo."""
    assert args[:2] == [sys.executable, "-m"]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_port()), "-m", *args[2:],
    ]  # fmt: skip
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


def test_two_process_shortcut_writes_once_and_resumes(tiny_teacher_dir, tiny_data_root, tmp_path):
    run = tmp_path / "run"
    base = smoke_train_args("shortcut", tiny_teacher_dir, run, tiny_data_root, 12)
    first = launch([*base, "train.ckpt_every=1", "eval_count=0"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_0000001",
        "step_0000002",
    ]
    assert first.stdout.count("student saved to") == 1  # one process writes the student
    assert json.loads((run / "train_summary.json").read_text())["processes"] == 2
    cost = json.loads((run / "train_cost.json").read_text())
    assert cost["updates"] == 2 and cost["network_passes"]["student_backward"] == 2 * 2 * 2  # 2 x 2
    nfe_2 = cost["teacher_nfe"]
    assert nfe_2 > 0 and nfe_2 % 2 == 0  # both processes' teacher calls, counted once each
    # a run stopped after update 2 continues from its checkpoint to update 4
    second = launch([*base, "train.steps=4", "train.ckpt_every=1", "eval_count=0"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "from step 2" in second.stdout + second.stderr
    cost = json.loads((run / "train_cost.json").read_text())
    assert cost["updates"] == 4 and cost["teacher_nfe"] == 2 * nfe_2
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["device"].startswith("cpu")
    rows = (run / "losses.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # one writer


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """The float32 trained weights of a run's last checkpoint."""
    (last,) = (run / "checkpoints").glob("step_0000002")
    return load_file(last / "model.safetensors")


def _moved_share(a: Path, b: Path) -> float:
    """The share of weight elements two runs leave more than 1e-6 apart. Adam's first updates
    are about lr * sign(gradient): where a gradient element lies within float noise of zero, the
    summation order (one process or two) can flip it, so a few elements move; training on other
    rows moves most of them."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    diff = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    return float((diff > 1e-6).float().mean())


TINY = {
    "teacher": ["teacher", "train", str(ROOT / "configs/teacher/tiny.yaml")],
    "recon": ["recon", "train", str(ROOT / "configs/recon/tiny.yaml")],
}


@pytest.mark.parametrize("what", ["shortcut", "teacher", "recon"])
def test_two_processes_with_half_batches_match_one(
    what, tiny_teacher_dir, tiny_data_root, tmp_path
):
    """Two processes with batch 2 each end at the weights one process with batch 4 reaches: the
    step's draws are the global batch's, each process trains on its rows, gradients average."""
    runs = {}
    for procs, batch in [(1, 4), (2, 2), (1, 2)]:
        if procs == 1 and batch == 2 and what != "teacher":
            continue  # the control below, once
        run = tmp_path / f"p{procs}b{batch}"
        if what == "shortcut":
            args = smoke_train_args(what, tiny_teacher_dir, run, tiny_data_root, 12, "eval_count=0")
        else:
            args = [
                sys.executable, "-m", "distill.cli", *TINY[what], f"run_dir={run}",
                f"out={run / 'out'}", f"data.root={tiny_data_root}", "data.train_count=12",
                "train.steps=2",
            ]  # fmt: skip
        args += [f"train.batch_size={batch}", "train.warmup=1", "train.ckpt_every=2"]
        if procs == 1:
            r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
        else:
            r = launch(args)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads((run / "train_summary.json").read_text())["processes"] == procs
        runs[procs, batch] = run
    assert _moved_share(runs[1, 4], runs[2, 2]) < 0.01
    if what == "teacher":  # the check has power: the first half of the batch alone moves most
        assert _moved_share(runs[1, 4], runs[1, 2]) > 0.3
