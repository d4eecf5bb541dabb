"""The teacher's targets decided three-way from known figures, and `distill teacher eval
--targets` end to end on the tiny teacher."""

import json
import math

import pytest

from eval.teacher_targets import INCONCLUSIVE, MET, NOT_MET, at_least, no_worse, teacher_targets


@pytest.mark.parametrize(
    "value, half, expected",
    [
        (26.0, 0.5, MET),  # z = 1.0 / (0.5 / 1.96) = 3.9
        (24.0, 0.5, NOT_MET),
        (25.1, 0.5, INCONCLUSIVE),  # z = 0.39
        (25.5, 0.5, MET),  # z = 1.96 > 1.645: one-sided at 5%
        (25.4, 0.5, INCONCLUSIVE),  # z = 1.57 < 1.645
        (26.0, float("nan"), INCONCLUSIVE),
    ],
)
def test_at_least_is_one_sided_at_five_percent(value, half, expected):
    assert at_least(value, half, 25.0) == expected


def test_no_worse_is_non_inferiority_within_the_margin():
    assert no_worse(0.0, 0.02, 0.05) == MET  # z = 0.05 / 0.0102 = 4.9
    assert no_worse(0.2, 0.05, 0.05) == NOT_MET  # 0.15 above the margin, z = 5.9
    assert no_worse(0.05, 0.5, 0.05) == INCONCLUSIVE
    assert no_worse(-3.0, 0.5, 0.05) == MET  # better than the reference


def _row(**kw):
    row = {
        "objects": 64,
        "seen_psnr_view0": 26.0,
        "seen_psnr_view0_ci95": 0.4,
        "vs_copy_psnr_view0": 3.8,
        "vs_copy_psnr_view0_ci95": 0.3,
        "copy_psnr_view0": 22.2,
        "sharpness": 1.01,
        "sharpness_ci95": 0.04,
        "unseen_fit_p": 0.4,
        "unseen_objects": 50,
        "unseen_leaks": False,
        "fid": 1.0,
        "fid_ci95": 0.01,
    }
    row.update(kw)
    return row


MARGINS = {"sharpness": 0.177, "fid": 0.05}


def test_a_teacher_that_meets_every_target():
    t = teacher_targets(_row(), MARGINS, {"fid": 1.0, "fid_ci95": 0.01})
    assert [x["verdict"] for x in t] == [MET] * 6


def test_each_target_fails_for_its_own_reason():
    bad = _row(
        seen_psnr_view0=23.0,
        vs_copy_psnr_view0=1.9,
        sharpness=1.4,
        unseen_fit_p=0.001,
        unseen_leaks=True,
        fid=2.0,
    )
    t = teacher_targets(bad, MARGINS, {"fid": 1.0, "fid_ci95": 0.01})
    assert [x["verdict"] for x in t] == [NOT_MET] * 6
    # the FID interval is the unpaired one: both half-widths
    assert f"± {math.hypot(0.01, 0.01):.2f}" in t[-1]["figure"]


def test_missing_reference_or_margin_is_inconclusive_with_the_reason():
    t = teacher_targets(_row(), {}, None)
    by = {x["target"].split(" ")[0]: x for x in t}
    assert by["sharpness"]["verdict"] == INCONCLUSIVE and "margin" in by["sharpness"]["note"]
    assert t[-1]["verdict"] == INCONCLUSIVE and "reference" in t[-1]["note"]
    # a world without known backs: the unseen side says so
    row = {k: v for k, v in _row().items() if not k.startswith("unseen")}
    t = teacher_targets(row, MARGINS, None)
    assert any(x["target"] == "unseen side" and "version 1" in x["note"] for x in t)


def test_teacher_eval_writes_the_targets(tiny_x0_teacher_dir, tiny_data_root, tmp_path):
    from distill.teacher_cmd import eval_teacher
    from eval.encoder import FeatureEncoder

    FeatureEncoder(width=8).save_pretrained(tmp_path / "encoder", {})
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"rows": [{"steps": 50, "fid": 5.0, "fid_ci95": 1.0}]}))
    margins = tmp_path / "margins.json"
    margins.write_text(
        json.dumps(
            {"meta": {"reference": "teacher@50"}, "margins": {"sharpness": {"margin": 0.177}}}
        )
    )
    out = tmp_path / "eval"
    rows = eval_teacher(
        str(tiny_x0_teacher_dir), [50], "euler", 3, 1.0, str(out), str(tiny_data_root),
        encoder_dir=str(tmp_path / "encoder"), targets=str(ref), margins=str(margins),
    )  # fmt: skip
    r = rows[0]
    assert "vs_copy_psnr_view0" in r  # paired with copying the condition on the same objects
    assert r["vs_copy_psnr_view0"] == pytest.approx(r["seen_psnr_view0"] - r["copy_psnr_view0"])
    t = json.loads((out / "targets.json").read_text())["targets"]
    assert len(t) >= 5 and {x["verdict"] for x in t} <= {MET, NOT_MET, INCONCLUSIVE}
    # a random-weight teacher is far from 25 dB; there is no FID margin in this file
    assert t[0]["verdict"] == NOT_MET
    assert t[-1]["verdict"] == INCONCLUSIVE and "margin" in t[-1]["note"]
    assert "| target |" in (out / "targets.md").read_text()
    with pytest.raises(ValueError, match="50"):
        eval_teacher(
            str(tiny_x0_teacher_dir), [2], "euler", 3, 1.0, str(tmp_path / "e2"),
            str(tiny_data_root), encoder_dir="", targets=str(ref), margins=str(margins),
        )  # fmt: skip
