"""One world per evaluation, chosen from the models (scenes/model_views.py models_world): the sweep
makes missing data in the world its models were trained on (not the reconstructor's), refuses a
folder holding another world's data, and refuses models of different worlds in one sweep."""

import json
import re
from dataclasses import asdict, replace

import pytest
import torch
from tiny_util import smoke_sweep_config, student_card, tiny_recon, tiny_student

from eval.encoder import FeatureEncoder
from eval.sweep import Sweep
from scenes.data import make_split
from scenes.model_views import folders_world
from scenes.world import WorldConfig, world_id
from teachers.io import load_teacher

W2 = WorldConfig(image_size=16, gaussians=64)  # version 2: the models' world
W1 = replace(W2, version=1)  # the reconstructor's (as the shipped one: world 1)


@pytest.fixture(scope="module")
def assets(tiny_teacher_dir, tmp_path_factory):
    """A tiny teacher recording world 2, a student of it whose card records no world (it answers
    for its teacher), a student of it whose card records world 1, and a reconstructor trained on
    world 1 at the same rig."""
    root = tmp_path_factory.mktemp("evalworld")
    t = load_teacher(tiny_teacher_dir)
    t.save_pretrained(
        root / "t2", dtype=torch.float32, record={"train_config": {"world": asdict(W2)}}
    )
    t2 = load_teacher(root / "t2")
    torch.manual_seed(1)
    for name, train_config in (("s2", {"train_seconds": 1.0}), ("s1", {"world": asdict(W1)})):
        s = tiny_student(t2, "shortcut")
        card = student_card(s, root / "t2", path="linear", prediction="velocity")
        card.train_config = train_config
        s.save_pretrained(root / name, card)
    tiny_recon(16, seed=0).save_pretrained(
        root / "recon", record={"train_config": {"world": asdict(W1)}}
    )
    FeatureEncoder(width=8).save_pretrained(root / "encoder", {})
    return root


def _cfg(assets, data_root, out, **kw):
    base = dict(
        models=["teacher", str(assets / "s2")],
        steps=[1],
        teacher=str(assets / "t2"),
        recon=str(assets / "recon"),
        encoder=str(assets / "encoder"),
        data_root=str(data_root),
        latency_repeats=3,
        threads=1,
    )
    return smoke_sweep_config(out, **{**base, **kw})


def test_a_fresh_data_root_gets_the_models_world_not_the_reconstructors(assets, tmp_path):
    from recon.io import load_reconstructor
    from scenes.model_views import recon_world

    assert recon_world(load_reconstructor(assets / "recon")).version == 1
    sw = Sweep(_cfg(assets, tmp_path / "data", tmp_path / "sw"))
    man = json.loads((tmp_path / "data" / "test" / "manifest.json").read_text())
    assert man["world_version"] == 2 and man["world_id"] == world_id(W2)
    assert sw.world == W2 and sw.eval_world.recorded_by == f"teacher {assets / 't2'}"
    rows = sw.run()
    meta = json.loads((tmp_path / "sw" / "results.json").read_text())["meta"]
    assert meta["world_version"] == 2 and meta["world_id"] == world_id(W2)
    assert "the models' world" in meta["world_source"]
    report = (tmp_path / "sw" / "report.md").read_text()
    assert "World: version 2 (the models' world" in report
    # the timings of the same sweep: interleaved, pinned, median and spread per cell
    assert meta["timing"]["threads"] == 1 and meta["timing"]["repeats"] == 3
    for r in rows:
        assert r["latency_repeats"] == 3 and r["network"]
        assert r["total_ms_q1"] <= r["total_ms_q3"] and r["diffusion_ms_iqr"] >= 0
        assert r["total_ms"] == pytest.approx(r["diffusion_ms"] + r["recon_ms"])
    assert "## Timings you can rank on" in report and "Latency (total ms" in report
    assert "Same recon computation, the reconstructor" in report


def test_teacher_and_student_evaluations_choose_the_models_world(assets, tmp_path):
    from eval.views import models_objects
    from students.folder import LoadedStudent

    st = LoadedStudent.from_pretrained(assets / "s2")  # its card records none: its teacher's
    truth, seeds, ew = models_objects(str(tmp_path / "d"), "val", 2, {"s2": st})
    assert ew.world == W2 and truth.world_version == 2 and len(seeds) == 2
    man = json.loads((tmp_path / "d" / "val" / "manifest.json").read_text())
    assert man["world_id"] == world_id(W2)


def test_a_folder_of_another_worlds_data_is_refused_naming_both(assets, tmp_path):
    make_split(tmp_path / "data", "test", 2, W1)
    ids = f"{world_id(W1)}.*version 1.*{world_id(W2)}.*version 2"
    with pytest.raises(ValueError, match=ids):
        Sweep(_cfg(assets, tmp_path / "data", tmp_path / "sw"))
    # models that record no world keep the folder's data at their image size
    from scenes.model_views import models_world

    bare = load_teacher(assets / "t2")
    bare.record = {}
    ew = models_world({"bare": bare})
    assert ew.recorded_by is None
    assert ew.open(tmp_path / "data", "test", 2).world == W1


def test_models_of_different_worlds_in_one_sweep_are_refused(assets, tmp_path):
    cfg = _cfg(assets, tmp_path / "data", tmp_path / "sw")
    cfg.models = ["teacher", str(assets / "s2"), str(assets / "s1")]
    both = rf"{world_id(W2)}.*{world_id(W1)}.*different worlds"
    with pytest.raises(ValueError, match=both) as e:
        Sweep(cfg)
    assert re.search(r"teacher .*t2", str(e.value)) and "student s1" in str(e.value)
    assert not (tmp_path / "data").exists()  # refused before any data is made


def test_served_folders_world_is_read_from_the_records_not_the_reconstructors(assets):
    """The load test and the page screenshot send conditions of the served students' world:
    a card recording none answers for its teacher's record; two worlds are refused, naming both;
    folders recording nothing get the default world at the given image size."""
    assert world_id(folders_world([assets / "s2"], 16)) == world_id(W2)  # via its teacher
    assert world_id(folders_world([assets / "t2", assets / "s2"], 16)) == world_id(W2)
    assert world_id(folders_world([assets / "s1"], 16)) == world_id(W1)
    with pytest.raises(ValueError, match=rf"s2 .*{world_id(W2)}.*s1 .*{world_id(W1)}"):
        folders_world([assets / "s2", assets / "s1"], 16)
    bare = assets / "encoder"  # no student.json / teacher.json
    assert folders_world([bare], 24) == WorldConfig(image_size=24)
