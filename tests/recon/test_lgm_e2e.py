"""End to end through an LGM-layout folder: a lab world rig at LGM's cameras, a tiny lab teacher
at that rig -> the LGM fixture -> Gaussians -> PLY and renders; serving and `distill recon
eval|run` pointed at the LGM folder."""

import base64
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image
from test_lgm import fixture_module

from recon.gaussians import load_ply, save_ply
from scenes.model_views import recon_world
from scenes.rig import render_views
from scenes.world import WorldConfig, target_views

# a lab world whose target rig is LGM's: 4 views at elevation 0, azimuths 0/90/180/270, fov 49.1
LGM_WORLD = WorldConfig(image_size=16, gaussians=64, fov_deg=49.1, target_elevation=0.0)


@pytest.fixture(scope="module")
def lgm_dir(tmp_path_factory):
    return fixture_module().make_lgm_fixture(tmp_path_factory.mktemp("lgm") / "lgm", size=16)


@pytest.fixture(scope="module")
def lgm_teacher_dir(tmp_path_factory):
    """A tiny random lab teacher whose record says it makes views at LGM's rig."""
    from teachers.lab import LabTeacher, LabTeacherConfig

    torch.manual_seed(0)
    t = LabTeacher(
        LabTeacherConfig(
            image_size=16, channels=[16, 32], attention=[False, True], norm_groups=8, head_dim=8
        )
    )
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    t.save_pretrained(
        folder, dtype=torch.float32, record={"train_config": {"world": asdict(LGM_WORLD)}}
    )
    return folder


def test_the_lgm_world_rig_is_the_lgm_reconstructors(lgm_dir):
    from recon.io import load_reconstructor

    lgm = load_reconstructor(lgm_dir)
    assert target_views(LGM_WORLD) == lgm.rig.views == target_views(recon_world(lgm))
    assert LGM_WORLD.fov_deg == lgm.rig.fov_deg


def test_teacher_to_lgm_to_ply_and_renders(lgm_dir, lgm_teacher_dir, tmp_path):
    from serve.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(lgm_teacher_dir, lgm_dir, device="cpu")
    assert pipe.recon.kind == "lgm" and pipe.image_size == 16
    cond = torch.rand(1, 3, 16, 16) * 2 - 1
    views, g, timings = pipe(cond, steps=2, seed=0)
    assert views.shape == (1, 4, 3, 16, 16) and g.count == 4 * 8 * 8
    assert timings.recon_ms > 0
    g0 = g.map(lambda t: t[0].cpu())
    save_ply(g0, tmp_path / "lgm.ply")
    back = load_ply(tmp_path / "lgm.ply")
    assert torch.allclose(back.means, g0.means) and torch.allclose(
        back.scales, g0.scales, rtol=1e-5
    )
    imgs = render_views(g0, pipe.rig.heldout_viewmats, pipe.rig.K, 16)
    assert imgs.shape[1:] == (3, 16, 16) and torch.isfinite(imgs).all()
    assert imgs.min() >= -1 and imgs.max() <= 1 and imgs.std() > 0  # something was drawn


def test_serving_answers_through_the_lgm_folder(lgm_dir, lgm_teacher_dir, tmp_path):
    from fastapi.testclient import TestClient
    from tiny_util import student_card, tiny_student

    from serve.app import ServeConfig, create_app
    from teachers.io import load_teacher

    t = load_teacher(lgm_teacher_dir)
    s = tiny_student(t, "shortcut", noise=0.01)
    s.save_pretrained(tmp_path / "students" / "shortcut", student_card(s, lgm_teacher_dir))
    cfg = ServeConfig(students=str(tmp_path / "students"), reconstructor=str(lgm_dir), device="cpu")
    client = TestClient(create_app(cfg))
    r = client.post(
        "/v1/generate", content=_png(tmp_path / "c.png"), params={"steps": 1, "seed": 0},
        headers={"content-type": "image/png"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["views_png"]) == 4 and base64.b64decode(body["ply"]).startswith(b"ply")


def _png(path):
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(
        path
    )
    return path.read_bytes()


def test_distill_recon_eval_and_run_on_the_lgm_folder(lgm_dir, tmp_path):
    from distill.cli import main

    out = tmp_path / "eval"
    main(["recon", "eval", "--recon", str(lgm_dir), "--count", "2", "--out", str(out),
          "--data-root", str(tmp_path / "data"), "--device", "cpu"])  # fmt: skip
    res = json.loads((out / "recon_eval.json").read_text())
    assert res["kind"] == "lgm" and res["objects"] == 2 and np.isfinite(res["psnr"])
    Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "grid.png"
    )
    main(["recon", "run", "--recon", str(lgm_dir), "--views", str(tmp_path / "grid.png"),
          "--out", str(tmp_path / "o.ply"), "--device", "cpu"])  # fmt: skip
    assert load_ply(tmp_path / "o.ply").count == 4 * 8 * 8


def test_recon_eval_refuses_data_off_the_rig(lgm_dir, tiny_data_root, tmp_path):
    from distill.recon_cmd import eval_recon

    with pytest.raises(ValueError, match=r"the reconstructor takes 4 views at .*\(90, 0\)"):
        eval_recon(str(lgm_dir), 2, str(tmp_path), str(tiny_data_root), "cpu")


def test_bench_times_each_reconstructor_at_its_size(lgm_dir, tmp_path):
    from tiny_util import tiny_recon

    from distill.bench_recon import bench_recon

    tiny_recon(16, seed=0).save_pretrained(tmp_path / "lab")
    rows = bench_recon([str(tmp_path / "lab"), str(lgm_dir)], tmp_path / "b.json", 1, "cpu")
    assert [r["kind"] for r in rows] == ["lab", "lgm"]
    assert [r["gaussians"] for r in rows] == [4 * 16 * 16, 4 * 8 * 8]
    assert all(r["median_s"] > 0 and r["gflops"] > 0 for r in rows)
    assert json.loads((tmp_path / "b.json").read_text())["cases"][1]["image_size"] == 16
