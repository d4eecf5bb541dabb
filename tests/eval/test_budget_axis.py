"""The amortised table's budget axis: the curves are taken only for the sweep's own teacher and
world, at each method's fewest step count, and priced with the sweep's latency."""

import json

from eval.budget_axis import budget_axis_lines, load_budget_axis


def _curves(tmp_path, teacher_key="abc", world_version=3):
    def pt(fraction, wall_s, fid):
        return {
            "fraction": fraction,
            "updates": int(10 * fraction),
            "wall_s": wall_s,
            "student_passes": 99,
            "fid": fid,
            "fid_ci95": 0.5,
            "seen_psnr_vs_teacher50": -0.25,
            "seen_psnr_vs_teacher50_ci95": 0.1,
            "unseen_dist": 0.6,
            "sharpness": 0.9,
        }

    doc = {
        "teacher_key": teacher_key,
        "world_version": world_version,
        "objects": 64,
        "teacher50": {"fid": 2.0},
        "curves": {
            "shortcut": {"2": [pt(1.0, 60.0, 3.0)], "1": [pt(2.0, 180.0, 4.0), pt(1.0, 90.0, 5.0)]},
            "dmd2": {"1": [pt(1.0, 45.0, 1.5)]},
        },
    }
    p = tmp_path / "budget_curves.json"
    p.write_text(json.dumps(doc))
    return str(p)


def test_other_teacher_or_world_or_no_file_is_missing_with_the_reason(tmp_path):
    path = _curves(tmp_path)
    other = load_budget_axis(path, "def", 3)
    assert "abc" in other["missing"] and "def" in other["missing"]
    assert "version 2" in load_budget_axis(path, "abc", 2)["missing"]
    assert "not found" in load_budget_axis(str(tmp_path / "none.json"), "abc", 3)["missing"]
    assert "missing" in load_budget_axis("", "abc", 3)
    lines = budget_axis_lines([], load_budget_axis(path, "def", 3))
    assert any(line.startswith("Missing:") and "def" in line for line in lines)


def test_fewest_steps_sorted_by_budget_and_priced_with_the_sweeps_latency(tmp_path):
    axis = load_budget_axis(_curves(tmp_path), "abc", 3)
    assert axis["methods"]["shortcut"]["steps"] == 1  # not 2
    assert [p["fraction"] for p in axis["methods"]["shortcut"]["points"]] == [1.0, 2.0]
    assert "student_passes" not in axis["methods"]["shortcut"]["points"][0]
    rows = [
        {"method": "teacher", "steps": 50, "total_ms": 1000.0},
        {"method": "teacher", "steps": 1, "total_ms": 80.0},
        {"method": "shortcut", "steps": 1, "total_ms": 100.0},
        {"method": "shortcut", "steps": 2, "total_ms": 150.0},
    ]
    lines = budget_axis_lines(rows, axis, reference_steps=50)
    sc1 = next(line for line in lines if line.startswith("| shortcut@1 | 1x"))
    # 90 s / 1e3 assets = 90 ms + 100 ms; / 1e5 = 0.9 ms + 100; break-even 90 s / 0.9 s = 100
    assert "| 190.0 | 100.9 | 100 assets |" in sc1
    assert "5.00 ± 0.50" in sc1 and "-0.25 ± 0.10" in sc1 and "| 1.5 |" in sc1
    sc2 = next(line for line in lines if line.startswith("| shortcut@1 | 2x"))
    assert "| 280.0 | 101.8 | 200 assets |" in sc2  # 180 s: 180 + 100 ms; 180 / 0.9 = 200
    dmd = next(line for line in lines if line.startswith("| dmd2@1"))
    assert "(not in this sweep)" in dmd and dmd.endswith("| - |")


def test_a_student_no_faster_than_the_teacher_never_breaks_even(tmp_path):
    axis = load_budget_axis(_curves(tmp_path), "abc", 3)
    rows = [
        {"method": "teacher", "steps": 50, "total_ms": 100.0},
        {"method": "shortcut", "steps": 1, "total_ms": 100.0},
    ]
    line = next(x for x in budget_axis_lines(rows, axis) if x.startswith("| shortcut@1 | 1x"))
    assert "never" in line
