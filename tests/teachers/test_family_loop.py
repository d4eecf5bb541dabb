"""The whole loop on each published family's fixture: every method distils it, a reconstructor
is trained on the family's own rig (`distill recon train teacher=FOLDER`), and the sweep and
serving run image -> views -> Gaussians through it, serving hot-swapping two students.

Runs in-process (one import of torch and diffusers for 21 trainings); two updates each."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_util import script, smoke_sweep_config, smoke_train_args

from distill.methods import METHODS
from eval.encoder import FeatureEncoder
from eval.sweep import Sweep
from students.folder import LoadedStudent
from teachers.families import classify
from teachers.io import load_teacher

FAMILIES = ("zero123plus", "mvdream", "imagedream")


def _main(args: list[str]) -> int:
    from distill.cli import main

    return main(args)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """The family's fixture folder, every method's student of it (two updates on world data
    rendered at the family's cameras), and a reconstructor trained on the family's rig."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    folder = getattr(script("make_fixtures"), name)(root / name)
    data, runs = root / "data", {}
    for method in METHODS:
        run = root / "runs" / method
        extra = ("student.lora_rank=4", "eval_count=0")  # card figures: the train smoke tests'
        args = smoke_train_args(method, folder, run, data, 4, *extra)[3:]  # after `-m distill.cli`
        assert _main(args) == 0, (name, method)
        runs[method] = run / "student"
    recon = root / "recon"
    rc = _main(
        ["recon", "train", f"teacher={folder}", f"run_dir={root / 'recon_run'}", f"out={recon}",
         f"data.root={root / 'recon_data'}", "data.train_count=4", "world.image_size=16",
         "world.gaussians=64", "recon.image_size=16", "recon.channels=[8,16]",
         "recon.attention=[false,false]", "recon.head_dim=8", "recon.norm_groups=4",
         "train.steps=2", "train.batch_size=2", "train.warmup=1", "train.log_every=1"]
    )  # fmt: skip
    assert rc == 0, name
    return {"name": name, "folder": folder, "students": runs, "recon": recon, "root": root}


def test_every_method_distils_the_family_and_its_students_sample(family):
    t = load_teacher(family["folder"])
    assert classify(family["folder"]).name == family["name"]
    from scenes.data import WorldDataset
    from scenes.world import target_views

    world = WorldDataset(family["root"] / "data", "train").world  # rendered at its cameras
    assert target_views(world) == [tuple(map(float, v)) for v in t.views]
    for method, folder in family["students"].items():
        st = LoadedStudent.from_pretrained(folder)
        assert st.card.method == method and st.card.teacher_kind == family["name"], method
        views, _ = st.sample(torch.zeros(1, 3, 16, 16), st.card.steps[0], [0])
        assert views.shape == (1, t.info.views, 3, 16, 16), method
        assert torch.isfinite(views).all(), method


def test_the_reconstructor_is_trained_on_the_familys_rig(family):
    from recon.io import load_reconstructor
    from scenes.model_views import check_views_fit, recon_world

    t, recon = load_teacher(family["folder"]), load_reconstructor(family["recon"])
    assert len(recon.rig.azimuths) == t.info.views
    assert list(recon.rig.views) == [tuple(map(float, v)) for v in t.views]
    assert check_views_fit(t, recon_world(recon)) is None  # all of its views, in its order


def test_the_sweep_runs_the_family_through_its_reconstructor(family, tmp_path):
    enc = tmp_path / "encoder"
    torch.manual_seed(0)
    FeatureEncoder(width=8).save_pretrained(enc, {})
    cfg = smoke_sweep_config(
        tmp_path / "sw",
        models=["teacher", str(family["students"]["shortcut"])],
        steps=[1],
        teacher=str(family["folder"]),
        recon=str(family["recon"]),
        encoder=str(enc),
        data_root=str(family["root"] / "data"),
    )
    rows = Sweep(cfg).run()
    assert {r["method"] for r in rows} == {"teacher", "shortcut"}
    for r in rows:
        assert np.isfinite(r["seen_psnr"]) and r["recon_ms"] > 0, r["method"]
    assert (tmp_path / "sw" / "report.md").exists()


def test_serving_answers_and_hot_swaps_on_the_family(family, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from serve.app import ServeConfig, create_app

    students = tmp_path / "students"
    for method in ("consistency", "dmd2"):
        shutil.copytree(family["students"][method], students / method)
    cfg = ServeConfig(students=str(students), reconstructor=str(family["recon"]), device="cpu")
    c = TestClient(create_app(cfg))
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(
        buf, "PNG"
    )
    views = load_teacher(family["folder"]).info.views
    answers = {}
    for name in ("consistency", "dmd2"):
        assert c.post(f"/v1/students/{name}/activate").json()["active"] == name
        steps = json.loads((students / name / "student.json").read_text())["steps"][0]
        r = c.post(
            "/v1/generate", content=buf.getvalue(), params={"steps": steps, "seed": 0},
            headers={"content-type": "image/png"},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["student"] == name and len(body["views_png"]) == views
        answers[name] = body["views_png"]
    assert answers["consistency"] != answers["dmd2"]  # the swap changed who answers
    assert json.loads(c.get("/v1/students").text)
