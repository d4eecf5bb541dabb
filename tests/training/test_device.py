"""Device placement: one owner (training.processes and the loop), and scripts/gpu_check.sh.
The CUDA tests are marked ``gpu`` and skip on a machine without CUDA; the rest check the CPU
side of the contract."""

import json
import subprocess

import pytest
import torch
from tiny_util import ROOT, smoke_train_args

from distill.methods import METHODS
from scenes.data import WorldDataset
from scenes.world import WorldConfig
from training.config import TrainConfig
from training.draws import Draws, step_generator
from training.loop import train
from training.processes import train_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_says_no_cuda_device():
    r = subprocess.run(
        [str(ROOT / "scripts/gpu_check.sh")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2
    assert "no CUDA device" in r.stderr


def test_batch_rows_follow_the_index(tiny_data_root):
    ds = WorldDataset(tiny_data_root, "train", WorldConfig(image_size=16, gaussians=64))
    by_list, by_tensor = ds.batch([3, 1]), ds.batch(torch.tensor([3, 1]))
    for k in by_list:
        assert torch.equal(by_list[k], by_tensor[k])
        assert by_list[k].device.type == "cpu"
    assert by_list["targets"].dtype == torch.float32


def test_steps_run_on_the_training_device(tmp_path):
    """Inside a step the training device is torch's default and the step generator lives on
    it, so what a step builds or draws is made where the model is; the model comes back
    where it was."""
    seen = []
    model = torch.nn.Linear(2, 1)

    def step_fn(m, step, draws):
        x = draws.randn(2)
        assert x.shape == (4, 2)  # one process: the whole batch
        seen.append((x.device, draws.gen.device, torch.empty(0).device))
        return {"loss": m(x).pow(2).mean()}

    cfg = TrainConfig(steps=2, batch_size=4, warmup=1, ema_decay=0.0, log_every=1)
    out, _, summary = train(tmp_path, cfg, model, step_fn)
    dev = train_device()
    assert all(a.type == b.type == c.type == dev.type for a, b, c in seen) and len(seen) == 2
    assert summary["device"] == str(dev)
    assert next(out.parameters()).device.type == "cpu"
    # the generator is a pure function of (seed, step) on any device
    a, b = step_generator(0, 5), step_generator(0, 5)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


def test_draws_split_the_global_batch_between_processes():
    """Process r of N keeps rows r*b..(r+1)*b-1 of each draw made for all N*b rows, and parts of
    the batch drawn on their own (the first k rows, the rest) split by their global rows."""
    one = Draws(step_generator(0, 3), 6)
    full_u, full_i = one.rand(2), one.randint(0, 100)
    parts = [Draws(step_generator(0, 3), 2, r, 3) for r in range(3)]
    u = torch.cat([d.rand(2) for d in parts])
    i = torch.cat([d.randint(0, 100) for d in parts])
    assert torch.equal(u, full_u) and torch.equal(i, full_i)
    x = torch.arange(10, 14)  # a part drawn for global rows 2..5
    assert [d.local(x, first=2).tolist() for d in parts] == [[], [10, 11], [12, 13]]
    with pytest.raises(ValueError, match="process 3 of 3"):
        Draws(step_generator(0, 3), 2, 3, 3)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_cuda(method, tiny_x0_teacher_dir, tiny_data_root, tmp_path):
    args = smoke_train_args(method, tiny_x0_teacher_dir, tmp_path / "run", tiny_data_root, 12)
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["device"].startswith("cuda")
