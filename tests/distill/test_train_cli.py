"""`distill train --method NAME` end to end on tiny settings, then `distill sample`."""

import json

import pytest
from tiny_util import smoke_train_args

from distill.methods import METHODS
from students.folder import LoadedStudent


@pytest.mark.parametrize("method", ["meanflow", "reflow", "consistency", "dmd2", "shortcut"])
def test_train_cli_smoke_x0_teacher(method, tiny_x0_teacher_dir, tiny_data_root, tmp_path):
    """Methods whose student or auxiliary networks change parametrization (velocity students,
    the consistency boundary, DMD2's fake score, shortcut's velocity targets) distil an
    x0-predicting teacher (the shipped kind): finite losses, a student that samples. The others
    regress the teacher's own parametrization, as with every teacher."""
    test_train_cli_smoke(method, tiny_x0_teacher_dir, tiny_data_root, tmp_path)


@pytest.mark.parametrize("method", list(METHODS))
def test_train_cli_smoke(method, tiny_teacher_dir, tiny_data_root, tmp_path):
    from distill.cli import main

    # in-process through the CLI's parser (one import of torch for every method; the
    # subprocess path of `distill train` is the multi-process and kill/resume tests')
    args = smoke_train_args(method, tiny_teacher_dir, tmp_path / "run", tiny_data_root, 12)
    assert main(args[3:]) == 0
    folder = tmp_path / "run" / "student"
    st = LoadedStudent.from_pretrained(folder)
    assert st.card.method == method and st.card.metrics["by_steps"]
    assert st.card.metrics["split"] == "val"  # quick figures for choosing: never test
    log = (tmp_path / "run" / "losses.csv").read_text()
    assert log.startswith("step,lr,elapsed_s,loss")
    cost = json.loads((folder / "student.json").read_text())["train_cost"]
    assert cost["wall_s"] >= cost["prepare_s"] > 0 and cost["updates"] == 2
    assert cost["network_passes"]["student_backward"] == 2 * 2 and cost["machine"]
    assert cost["student_passes"] == sum(cost["network_passes"].values())  # every network
    assert (cost["teacher_nfe"] > 0) == (method != "finetune")
    if method == "dmd2":
        assert st.card.steps == [2] and "regression" in log.splitlines()[0]  # the trained chain
    if method == "reflow":  # the couplings' 4 samples x 2 steps are part of the cost
        assert cost["teacher_nfe"] >= 4 * 2 and st.card.steps == [1]
    if method == "progressive":  # rounds 2 -> 1 steps, one update each, fresh optimizer
        assert st.card.method_info == {"updates_per_round": {"1": 1, "2": 1}}
    if method == "shortcut":
        assert "bootstrap" in log.splitlines()[0] or "flow" in log.splitlines()[0]
    sample = ["sample", "--student", str(folder), "--steps", str(st.card.steps[0])]
    out = ["--count", "1", "--out", str(tmp_path / "g.png"), "--data-root", str(tiny_data_root)]
    assert main(sample + out) == 0
    assert (tmp_path / "g.png").exists()
