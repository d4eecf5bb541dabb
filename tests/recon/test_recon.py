import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_util import ROOT

from distill.cli import main
from eval.geometry import chamfer
from eval.recon_eval import unproject_baseline
from recon.gaussians import load_ply
from recon.model import ReconConfig, Reconstructor
from scenes.rig import make_rig
from scenes.samples import make_samples
from scenes.world import WorldConfig

TINY = dict(image_size=16, channels=[16, 32], attention=[False, True], norm_groups=8, head_dim=8)


def _model():
    torch.manual_seed(0)
    return Reconstructor(ReconConfig(**TINY))


def test_pixel_aligned_outputs_and_bounds():
    m = _model()
    rig = make_rig(WorldConfig(image_size=16))
    views = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    g = m(views, rig.target_viewmats, rig.K.expand(4, 3, 3))
    assert g.means.shape == (2, 4 * 16 * 16, 3)
    c = m.cfg
    assert g.scales.min() >= c.min_scale and g.scales.max() <= c.max_scale
    assert g.opacities.min() >= 0 and g.opacities.max() <= 1
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(2, 1024), atol=1e-5)
    # every Gaussian sits on its own pixel's ray, within the depth range
    vm = rig.target_viewmats
    means = g.means.reshape(2, 4, 16 * 16, 3)
    cam = torch.einsum("vij,bvpj->bvpi", vm[:, :3, :3], means) + vm[None, :, None, :3, 3]
    assert cam[..., 2].min() >= c.near - 1e-4 and cam[..., 2].max() <= c.far + 1e-4
    K = rig.K
    u = K[0, 0] * cam[..., 0] / cam[..., 2] + K[0, 2]
    ys, xs = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    assert torch.allclose(u, xs.reshape(-1).expand_as(u), atol=1e-3)


def test_wrong_views_or_cameras_are_clear_errors():
    m = _model()
    rig = make_rig(WorldConfig(image_size=16))
    K = rig.K.expand(4, 3, 3)
    with pytest.raises(ValueError, match=r"views must be \[B, 4, 3, 16, 16\]"):
        m(torch.zeros(1, 3, 3, 16, 16), rig.target_viewmats[:3], K[:3])
    with pytest.raises(ValueError, match=r"views must be"):
        m(torch.zeros(1, 4, 3, 32, 32), rig.target_viewmats, K)
    with pytest.raises(ValueError, match="cameras do not match the views"):
        m(torch.zeros(1, 4, 3, 16, 16), rig.heldout_viewmats, K)
    with pytest.raises(ValueError, match="cameras do not match the views: Ks"):
        m(torch.zeros(1, 4, 3, 16, 16), rig.target_viewmats, K[:2])
    scaled = rig.target_viewmats.clone()
    scaled[:, :3, :3] *= 2
    with pytest.raises(ValueError, match="rigid transforms"):
        m(torch.zeros(1, 4, 3, 16, 16), scaled, K)
    with pytest.raises(ValueError, match="positive focals"):
        m(torch.zeros(1, 4, 3, 16, 16), rig.target_viewmats, -K)


def test_save_load_round_trip_and_corrupt_weights(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "r", dtype=torch.float32)
    back = Reconstructor.from_pretrained(tmp_path / "r")
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    (tmp_path / "r" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors: corrupt"):
        Reconstructor.from_pretrained(tmp_path / "r")
    m.save_pretrained(tmp_path / "s")
    info = json.loads((tmp_path / "s" / "recon.json").read_text())
    info["config"]["channels"] = [16, 48]
    (tmp_path / "s" / "recon.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="weights do not match recon.json"):
        Reconstructor.from_pretrained(tmp_path / "s")


def test_chamfer_and_baseline():
    a = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]])
    assert chamfer(a, torch.ones(1, 2), a).item() == 0
    b = a + torch.tensor([0.0, 0.1, 0])
    assert torch.allclose(chamfer(a, torch.ones(1, 2), b), torch.tensor([0.1]))
    # low-weight predictions do not count as covering the truth
    far = torch.tensor([[[0.0, 0, 0], [5.0, 0, 0]]])
    assert chamfer(far, torch.tensor([[1.0, 0.0]]), a).item() == pytest.approx(0.25)
    w = WorldConfig(image_size=16, gaussians=96)
    s = make_samples([3], w)
    rig = make_rig(w)
    g = unproject_baseline(s["targets"], rig.target_viewmats, rig.K.expand(4, 3, 3), w.distance)
    assert g.means.shape == (1, 1024, 3) and 0 < g.opacities.mean() < 1


def _cli(*args):
    r = subprocess.run(
        [sys.executable, "-m", "distill.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_recon_train_eval_run_cli(tmp_path, capsys):
    cfg = str(ROOT / "configs" / "recon" / "tiny.yaml")
    _cli("recon", "train", cfg, f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'd'}")
    rdir = tmp_path / "run" / "recon"
    _cli(
        "recon",
        "eval",
        "--recon",
        str(rdir),
        "--count",
        "3",
        "--out",
        str(tmp_path / "ev"),
        "--data-root",
        str(tmp_path / "d"),
    )
    res = json.loads((tmp_path / "ev" / "recon_eval.json").read_text())
    for k in ("psnr", "ssim", "chamfer", "recon_ms", "render_ms"):
        assert isinstance(res[k], float) and res[k] > 0
    assert "psnr" in res["baseline"] and res["lpips"] is None and res["lpips_missing"]
    # a refinement stage starts exactly from the init weights (lr 0 keeps them)
    _cli(
        "recon",
        "train",
        cfg,
        f"run_dir={tmp_path / 'run2'}",
        f"data.root={tmp_path / 'd'}",
        f"init={rdir}",
        "train.lr=0",
        "train.steps=1",
    )
    first, second = (
        Reconstructor.from_pretrained(rdir),
        Reconstructor.from_pretrained(tmp_path / "run2" / "recon"),
    )
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), k
    assert second.record["init"] == str(rdir)
    init_args = ["recon", "train", cfg, f"init={rdir}", f"run_dir={tmp_path / 'run3'}"]
    assert main([*init_args, f"data.root={tmp_path / 'd'}", "recon.channels=[24,32]"]) == 2
    assert "has another architecture than recon" in capsys.readouterr().err
    assert main([*init_args, f"data.root={tmp_path / 'd3'}", "world.distance=2.5"]) == 2
    assert "was trained on another world" in capsys.readouterr().err
    # a 2x2 grid PNG of four 16px views
    s = make_samples([20_000_001], WorldConfig(image_size=16, gaussians=64))
    grid = s["targets"][0].reshape(2, 2, 3, 16, 16).permute(2, 0, 3, 1, 4).reshape(3, 32, 32)
    arr = ((grid.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    Image.fromarray(arr).save(tmp_path / "grid.png")
    _cli(
        "recon",
        "run",
        "--recon",
        str(rdir),
        "--views",
        str(tmp_path / "grid.png"),
        "--out",
        str(tmp_path / "o.ply"),
        "--renders",
        str(tmp_path / "sheet.png"),
    )
    assert load_ply(tmp_path / "o.ply").count == 4 * 16 * 16
    assert (tmp_path / "sheet.png").exists()
    # a grid of the wrong size is a clear error
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "bad.png")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "recon",
            "run",
            "--recon",
            str(rdir),
            "--views",
            str(tmp_path / "bad.png"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "must be 32x32 pixels, got 40x40" in r.stderr
