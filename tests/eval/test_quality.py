"""The quality axis on tiny tensors with known answers, the world's back classes and reader,
and the calibration command on a handful of objects."""

import json
import math
import subprocess
import sys

import pytest
import torch
from tiny_util import ROOT, tiny_recon

from eval.distribution import frechet, kid
from eval.geometry import silhouette_iou
from eval.seen import masked_psnr, masked_ssim, pooled_psnr, visible_mask
from eval.sharpness import sharpness_ratio
from eval.stats import excludes_zero, mean_ci, paired_ci, set_ci
from eval.unseen import read_backs, read_distribution, unseen_distance
from scenes.objects import back_class, make_object
from scenes.rig import make_rig
from scenes.samples import make_samples
from scenes.world import WorldConfig, back_class_probs, back_classes, world_config, world_id


def test_masked_psnr_counts_only_masked_pixels():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    b[:, :, :2] += 0.2  # 0.1 in [0, 1] units on the masked half: MSE 0.01 -> 20 dB
    b[:, :, 2:] = 1.0  # large errors outside the mask are ignored
    assert torch.allclose(masked_psnr(a, b, mask), torch.tensor([20.0, 20.0]), atol=1e-4)
    empty = torch.zeros_like(mask)
    assert torch.isnan(masked_psnr(a, b, empty)).all()
    # pooled over views: squared errors and pixel counts add up before the log
    v = torch.stack([a, a], 1)  # [2, 2, 3, 4, 4]
    w = torch.stack([b, a], 1)
    m = torch.stack([mask, mask], 1)
    expect = 10 * math.log10(1 / 0.005)  # half the masked pixels off by 0.1
    assert torch.allclose(pooled_psnr(v, w, m), torch.tensor([expect] * 2).float(), atol=1e-4)


def test_masked_ssim_identical_is_one_and_empty_is_nan():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    mask = torch.ones(2, 16, 16, dtype=torch.bool)
    assert torch.allclose(masked_ssim(x, x, mask), torch.ones(2), atol=1e-5)
    noisy = (x + 0.6 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert (masked_ssim(x, noisy, mask) < 0.9).all()
    assert torch.isnan(masked_ssim(x, x, torch.zeros_like(mask))).all()


def test_visible_mask_known_cameras(tiny_world):
    rig = make_rig(tiny_world)
    packed = make_samples([3, 4], tiny_world, rig)["gaussians"]
    from eval.seen import _render_depth

    # the condition camera sees everything it renders
    own = visible_mask(packed, rig.cond_viewmats, rig.cond_viewmats, rig.K, rig.size)
    alpha = _render_depth(packed, rig.cond_viewmats, rig.K, rig.size)[0] > 0.5
    assert torch.equal(own, alpha)
    # the back view (azimuth 180) sees almost nothing the condition camera sees
    seen = visible_mask(packed, rig.target_viewmats, rig.cond_viewmats, rig.K, rig.size)
    obj = _render_depth(packed, rig.target_viewmats, rig.K, rig.size)[0] > 0.5
    share = seen.flatten(2).sum(2) / obj.flatten(2).sum(2)
    assert (share[:, 0] > 0.6).all() and (share[:, 2] < 0.1).all()
    assert not (seen & ~obj).any()


def test_sharpness_ratio_detects_blur_and_grain():
    torch.manual_seed(0)
    x = torch.rand(2, 2, 3, 16, 16) * 2 - 1
    mask = torch.ones(2, 2, 16, 16, dtype=torch.bool)
    assert torch.allclose(sharpness_ratio(x, x, mask), torch.ones(2))
    blur = torch.nn.functional.avg_pool2d(x.flatten(0, 1), 3, 1, 1).reshape(x.shape)
    assert (sharpness_ratio(blur, x, mask) < 0.6).all()
    smooth = torch.zeros_like(x)
    grain = (smooth + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    assert (sharpness_ratio(grain, smooth + 0.01 * torch.randn_like(x), mask) > 5).all()
    # pixels outside the mask do not count
    y = x.clone()
    y[..., :8, :] = torch.randn_like(y[..., :8, :])
    m = mask.clone()
    m[..., :10, :] = False
    assert torch.allclose(sharpness_ratio(y, x, m), torch.ones(2))


def test_silhouette_iou_known_masks():
    a = torch.zeros(1, 1, 4, 4)
    b = torch.zeros(1, 1, 4, 4)
    a[..., :2, :] = 1  # 8 pixels
    b[..., 1:3, :] = 1  # 8 pixels, 4 shared
    assert silhouette_iou(a, b).item() == pytest.approx(4 / 12)
    assert silhouette_iou(a, a).item() == 1.0
    assert silhouette_iou(torch.zeros_like(a), torch.zeros_like(a)).item() == 1.0


def test_unseen_distance_known_distributions():
    p = back_class_probs()
    assert p.sum().item() == pytest.approx(1.0) and len(p) == len(back_classes())
    # exactly the true proportions: distance 0
    counts = (p * 100).round().long()
    read = torch.cat([torch.full((int(c),), i) for i, c in enumerate(counts)])
    assert unseen_distance(read) == pytest.approx(0.0, abs=1e-9)
    # mode collapse onto class 0: total variation 1 - p0
    assert unseen_distance(torch.zeros(50, dtype=torch.long)) == pytest.approx(1 - p[0].item())
    # all unreadable (washed-out averages): disjoint from the truth
    assert unseen_distance(torch.full((10,), -1)) == pytest.approx(1.0)
    q = read_distribution(torch.tensor([0, 0, -1, 5, -2, -2, 0, 0]))
    assert q.tolist() == [0.5, 0, 0, 0, 0, 0.125, 0.125, 0.25]  # classes, unreadable, disagree


BACK_VIEW = 2  # the target view at azimuth 180


def test_world_v2_back_classes_and_reader():
    w2, w1 = WorldConfig(), WorldConfig(version=1)
    # version 1's id is what it was before versions were a setting (the shipped data's world)
    assert world_id(w1) == "2a0d40256c873602" and world_id(w2) != world_id(w1)
    assert world_config({"image_size": 32}).version == 1  # unversioned records are version 1
    with pytest.raises(ValueError, match="world version 7 unknown"):
        world_config({"version": 7})
    assert back_class(5, w1) == -1
    # the same geometry and fronts in both versions; a chosen back changes only the colours
    a, b, c = (
        make_object(20_000_001, w1),
        make_object(20_000_001, w2),
        make_object(20_000_001, w2, back=0),
    )
    assert torch.equal(a.means, b.means) and torch.equal(b.means, c.means)
    # the fixed reader reads true back views of every class (objects of the val split)
    seeds = [10_000_000 + i for i in range(24)]
    s = make_samples(seeds, w2)
    read = read_backs(s["targets"][:, BACK_VIEW])
    assert (read == s["back_class"]).float().mean() >= 23 / 24
    assert len(set(s["back_class"].tolist())) >= 4
    # the mean of two backs of different colours is unreadable
    rig = make_rig(w2)
    from scenes.rig import render_views

    views = []
    for seed, cls in zip(seeds[:6], s["back_class"][:6].tolist()):
        other = (cls + 2) % len(back_classes())  # same pattern, next colour
        g = make_object(seed, w2, back=other)
        views.append(render_views(g, rig.target_viewmats, rig.K, rig.size)[BACK_VIEW])
    avg = (s["targets"][:6, BACK_VIEW] + torch.stack(views)) / 2
    assert (read_backs(avg) < 0).float().mean() >= 5 / 6


def test_intervals_fixed_seed_and_paired():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0] * 8)
    m, h = mean_ci(v)
    assert m == 2.5 and 0 < h < 1 and mean_ci(v) == (m, h)
    assert mean_ci(torch.full((10,), 3.0)) == (3.0, 0.0)
    assert mean_ci(torch.tensor([1.0, float("nan"), 3.0]))[0] == 2.0  # undefined objects left out
    d, hd = paired_ci(v + 0.5, v)  # a constant paired shift is resolved exactly
    assert d == pytest.approx(0.5) and hd == pytest.approx(0.0) and excludes_zero(d, hd)
    assert not excludes_zero(0.1, 0.2) and not excludes_zero(1.0, float("nan"))
    full, half = set_ci(lambda idx: float(v[idx].max()), len(v))
    assert full == 4.0 and half >= 0


def test_frechet_and_kid_known_answers():
    torch.manual_seed(0)
    a = torch.randn(400, 8, dtype=torch.float64)
    assert frechet(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)  # |mean shift|^2, same covariance
    assert kid(a, a + 1.0) > kid(a, a[torch.randperm(400)]) + 0.01


def test_calibrate_cli_smoke(tmp_path, tiny_x0_teacher_dir):
    """The world comes from the models (a tiny teacher that records none: the default world at
    its 16 px), not from the reconstructor or the folder."""
    from eval.encoder import FeatureEncoder

    tiny_recon(16).save_pretrained(tmp_path / "recon")
    FeatureEncoder(width=8).save_pretrained(tmp_path / "encoder", {})
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "metrics",
            "calibrate",
            f"out={tmp_path / 'cal'}",
            f"data_root={tmp_path / 'data'}",
            "objects=6",
            "set_resamples=50",
            f"recon={tmp_path / 'recon'}",
            f"encoder={tmp_path / 'encoder'}",
            "batch=6",
            "reference=",  # no model-output calibration here (tests/eval/test_margins.py)
            f"teacher={tiny_x0_teacher_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    kinds = {(x["kind"], x["level"]) for x in res["rows"]}
    assert len(kinds) == 19 and ("averaging", 1.0) in kinds and ("clean", 0.0) in kinds
    # exact answers on true views: seen-side PSNR falls with noise, sharpness rises with it
    noise = sorted((x for x in res["rows"] if x["kind"] == "noise"), key=lambda x: x["level"])
    assert noise[0]["seen_psnr"] > noise[1]["seen_psnr"] > noise[2]["seen_psnr"]
    assert res["verdicts"]["sharpness"]["claims"]["blur"]["right_way"]
    assert (tmp_path / "cal" / "calibration.md").read_text().startswith("# Calibration")
    assert not (tmp_path / "cal" / "margins.json").exists()  # reference= skips the margins


def test_lpips_reported_when_backbone_weights_are_cached(tmp_path, tiny_world):
    """Random AlexNet weights of the right architecture in a temporary torch cache: the values
    mean nothing, the test checks the wiring (LPIPS is then computed, not reported missing)."""
    import torchvision

    from eval.encoder import FeatureEncoder
    from eval.metrics import ALEXNET_FILE, load_lpips
    from eval.quality import QualityAxis, Truth

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        assert load_lpips()[0] is None and "not in the local torch cache" in load_lpips()[1]
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        torch.save(
            torchvision.models.alexnet().state_dict(),
            tmp_path / "hub" / "checkpoints" / ALEXNET_FILE,
        )
        lp, reason = load_lpips()
    finally:
        torch.hub.set_dir(old)
    assert lp is not None and reason == ""
    rig = make_rig(tiny_world)
    b = make_samples([1, 2, 3], tiny_world, rig)
    recon = tiny_recon(16).eval()
    axis = QualityAxis(Truth.from_batch(b, rig, 2), recon, FeatureEncoder(width=8).eval(), lpips=lp)
    same = axis.evaluate(b["targets"])
    other = axis.evaluate(b["targets"].roll(1, 0))
    assert torch.allclose(same["lpips"], torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert (other["lpips"] > 0).all() and "lpips_ci95" in axis.summary(other)
    # the reconstructor's evaluation reports it too
    from eval.recon_eval import evaluate
    from scenes.samples import unpack_gaussians

    vm, K = rig.target_viewmats, rig.K
    res = evaluate(
        lambda v: recon(v, vm, K.expand(len(vm), 3, 3)),
        b["targets"],
        b["heldout"],
        unpack_gaussians(b["gaussians"]).means,
        rig.heldout_viewmats,
        K,
        lpips=lp,
    )
    assert res["lpips"] > 0 and "lpips_ci95" in res


def test_teacher_eval_cli_on_val_split(tiny_teacher_dir, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "teacher",
            "eval",
            "--teacher",
            str(tiny_teacher_dir),
            "--steps",
            "1,2",
            "--count",
            "3",
            "--split",
            "val",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "ev"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "ev" / "quality.json").read_text())
    assert res["split"] == "val" and res["world_version"] == 2
    assert (tmp_path / "data" / "val" / "manifest.json").exists()
    assert not (tmp_path / "data" / "test").exists()  # choosing never touches the test split
    row = res["rows"][1]
    for k in ("seen_psnr", "seen_psnr_ci95", "seen_psnr_view0", "sharpness", "unseen_dist"):
        assert k in row, k
    assert "Copying the condition image" in (tmp_path / "ev" / "quality.md").read_text()


def test_calibrate_refuses_a_world_without_back_classes(tmp_path, tiny_x0_teacher_dir):
    from eval.calibrate import CalibrateConfig, calibrate
    from eval.encoder import FeatureEncoder
    from scenes.data import make_split

    tiny_recon(16).save_pretrained(tmp_path / "recon")
    FeatureEncoder(width=8).save_pretrained(tmp_path / "encoder", {})
    make_split(tmp_path / "d1", "test", 2, WorldConfig(version=1, image_size=16, gaussians=64))
    cfg = CalibrateConfig(
        out=str(tmp_path / "cal"),
        data_root=str(tmp_path / "d1"),
        objects=2,
        recon=str(tmp_path / "recon"),
        encoder=str(tmp_path / "encoder"),
        teacher=str(tiny_x0_teacher_dir),  # records no world: the folder's data are taken
    )
    with pytest.raises(ValueError, match="needs a world version 2 dataset"):
        calibrate(cfg)
