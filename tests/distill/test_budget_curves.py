"""scripts/budget_curves.py on the tiny teacher: a method whose schedule does not span the run is
one run extended budget by budget, progressive (rounds over the run) one run per budget; every
student measured by one val sweep; the curves carry measured wall time and paired figures."""

import json
import sys

import pytest
import torch
from tiny_util import ROOT, script, tiny_recon

from eval.encoder import FeatureEncoder

bc = script("budget_curves")


def test_plan_shares_a_run_unless_the_schedule_spans_it(tmp_path):
    entries = bc.plan(["finetune", "progressive"], [2.0, 0.5, 1.0], tmp_path, smoke=False)
    fine = [e for e in entries if e["method"] == "finetune"]
    prog = [e for e in entries if e["method"] == "progressive"]
    assert [e["fraction"] for e in fine] == [0.5, 1.0, 2.0]  # trained in increasing order
    assert len({e["run_dir"] for e in fine}) == 1 and not fine[0]["own_run"]
    assert len({e["run_dir"] for e in prog}) == 3 and prog[0]["own_run"]
    recipe = (ROOT / "configs/methods/finetune.yaml").read_text()
    base = int(next(ln for ln in recipe.splitlines() if ln.strip().startswith("steps:")).split()[1])
    assert [e["updates"] for e in fine] == [round(0.5 * base), base, 2 * base]
    assert len({e["student"].split("/")[-1] for e in entries}) == len(entries)  # sweep names


def test_budget_curves_smoke(tiny_x0_teacher_dir, tiny_data_root, tmp_path, monkeypatch):
    torch.manual_seed(0)
    tiny_recon(16).save_pretrained(tmp_path / "recon")
    FeatureEncoder(width=8).save_pretrained(tmp_path / "encoder", {})
    train = [
        f"data.root={tiny_data_root}", "data.train_count=12", "world.image_size=16",
        "world.gaussians=64", "train.batch_size=2", "train.warmup=1", "train.log_every=1",
    ]  # fmt: skip
    sweep = [
        f"recon={tmp_path / 'recon'}", f"encoder={tmp_path / 'encoder'}",
        f"data_root={tiny_data_root}", "batch=2", "set_resamples=50", "throughput_batch=1",
        "reference_steps=2", f"calibration={tmp_path / 'none.json'}", "device=cpu",
    ]  # fmt: skip
    argv = ["budget_curves.py", "--methods", "finetune,progressive", "--fractions", "1,2"]
    argv += ["--base-steps", "2", "--smoke", "--teacher", str(tiny_x0_teacher_dir)]
    argv += ["--eval-count", "2", "--run-root", str(tmp_path / "runs")]
    argv += ["--out", str(tmp_path / "docs" / "budget_curves")]
    argv += [x for kv in train for x in ("--set", kv)] + [
        x for kv in sweep for x in ("--sweep-set", kv)
    ]
    monkeypatch.setattr(sys, "argv", argv)
    bc.main()
    out = tmp_path / "docs" / "budget_curves"
    res = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert "finetune" in out.with_suffix(".md").read_text()
    assert res["objects"] == 2 and res["teacher50"]["seen_psnr"] is not None
    # finetune: one run stopped at 2 then 4 updates; the 2x student's cost includes the 1x's
    fine = res["curves"]["finetune"]["1"]
    assert [p["fraction"] for p in fine] == [1.0, 2.0]
    assert [p["updates"] for p in fine] == [2, 4]
    assert fine[1]["wall_s"] > fine[0]["wall_s"]
    run = tmp_path / "runs" / "finetune" / "run"
    assert (run / "checkpoints" / "step_0000002").exists()
    assert (run / "checkpoints" / "step_0000004").exists()
    for f, updates in ((1, 2), (2, 4)):
        card = json.loads(
            (tmp_path / "runs/finetune" / f"finetune_x{f}" / "student.json").read_text()
        )
        assert card["train_cost"]["updates"] == updates
    # progressive: its own run per budget, each a whole run of its updates
    assert {p["updates"] for p in res["curves"]["progressive"]["1"]} == {2, 4}
    for f in (1, 2):
        assert (tmp_path / "runs" / "progressive" / f"x{f}" / "checkpoints").exists()
    p = fine[0]
    assert p["seen_psnr_ci95"] is not None and "seen_psnr_vs_teacher50" in p


def test_bad_fractions_are_refused(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["budget_curves.py", "--fractions", "1,0"])
    with pytest.raises(SystemExit, match="positive"):
        bc.main()
    monkeypatch.setattr(sys, "argv", ["budget_curves.py", "--methods", "nope"])
    with pytest.raises(SystemExit, match="unknown methods"):
        bc.main()


def test_the_sweep_must_be_on_val_objects():
    """Choosing a budget is a choice: a sweep set to the test split is refused before it runs."""
    from argparse import Namespace

    a = Namespace(run_root="runs/unused", teacher="t", eval_count=2, sweep_set=["split=test"])
    with pytest.raises(SystemExit, match="val objects"):
        bc.measure(["s"], a)


def _res(methods, objects=2, key="k1"):
    curves = {m: {"1": [{"fraction": 1.0, "updates": 4, "wall_s": 60.0, "own_run": False,
                       "seen_psnr": float(i), "seen_psnr_ci95": 0.5}]} for i, m in
              enumerate(methods)}  # fmt: skip
    return {
        "teacher": "t", "teacher_key": key, "objects": objects, "world_version": 3,
        "plan": [{"method": m, "fraction": 1.0} for m in methods], "curves": curves,
        "sessions": {m: {"date": "d", "reference_s": 0.1} for m in methods},
    }  # fmt: skip


def test_a_later_session_keeps_the_methods_it_did_not_train(tmp_path):
    """Methods trained in another session stay in the curves (their own session record); a
    method trained again is replaced, not doubled; another teacher or object set is refused."""
    path = tmp_path / "bc.json"
    path.write_text(json.dumps(_res(["finetune", "shortcut"])))
    new = _res(["shortcut", "dmd2"])
    new["curves"]["shortcut"]["1"][0]["seen_psnr"] = 9.0
    new["sessions"]["shortcut"] = new["sessions"]["dmd2"] = {"date": "later"}
    out = bc.merge(path, new)
    assert list(out["curves"]) == ["dmd2", "finetune", "shortcut"]
    assert out["curves"]["shortcut"]["1"][0]["seen_psnr"] == 9.0  # the new run's
    assert out["curves"]["finetune"]["1"][0]["seen_psnr"] == 0.0  # kept
    assert out["sessions"]["finetune"]["date"] == "d" and out["sessions"]["dmd2"]["date"] == "later"
    assert sorted(e["method"] for e in out["plan"]) == ["dmd2", "finetune", "shortcut"]
    assert "finetune" in bc.report(out) and "later" in bc.report(out)
    with pytest.raises(SystemExit, match="teacher_key"):
        bc.merge(path, _res(["dmd2"], key="other"))
    with pytest.raises(SystemExit, match="objects"):
        bc.merge(path, _res(["dmd2"], objects=64))
    assert bc.merge(tmp_path / "none.json", new) is new  # nothing earlier: as measured
    again = _res(["finetune"])  # measured again, nothing trained: the training session stays
    again["sessions"]["finetune"] = None
    assert bc.merge(path, again)["sessions"]["finetune"] == {"date": "d", "reference_s": 0.1}
