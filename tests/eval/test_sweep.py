import json
import subprocess
import sys

import pytest
import torch
from tiny_util import ROOT, student_card, tiny_recon, tiny_student

from eval.distribution import distribution_distances
from eval.encoder import FeatureEncoder
from eval.report import amortised
from eval.sweep import Sweep, SweepConfig
from teachers.io import load_teacher


@pytest.fixture(scope="module")
def sweep_assets(tiny_teacher_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    t = load_teacher(tiny_teacher_dir)
    torch.manual_seed(1)
    s = tiny_student(t, "shortcut")
    card = student_card(
        s,
        tiny_teacher_dir,
        path="linear",
        prediction="velocity",
        train_config={"train_seconds": 60.0},
    )
    s.save_pretrained(root / "shortcut", card)
    tiny_recon(16).save_pretrained(root / "recon")
    FeatureEncoder(width=8).save_pretrained(root / "encoder", {})
    return root


def _cfg(assets, data_root, tmp_path, **kw):
    base = dict(
        out=str(tmp_path / "sw"),
        models=["teacher", str(assets / "shortcut")],
        steps=[1, 2],
        teacher=str(load_teacher_dir(assets)),
        recon=str(assets / "recon"),
        encoder=str(assets / "encoder"),
        data_root=str(data_root),
        objects=4,
        batch=4,
        latency_repeats=2,
        set_resamples=50,  # the reported sweep uses 1000; a smoke run needs fewer
        throughput_batch=2,
        reference_steps=3,
    )
    base.update(kw)
    return SweepConfig(**base)


def load_teacher_dir(assets):
    return json.loads((assets / "shortcut" / "student.json").read_text())["teacher_dir"]


def test_sweep_outputs_and_resume(sweep_assets, tiny_data_root, tmp_path):
    sw = Sweep(_cfg(sweep_assets, tiny_data_root, tmp_path, calibration=str(tmp_path / "no.json")))
    rows = sw.run()
    assert len(rows) == 4
    out = tmp_path / "sw"
    for f in ("results.json", "results.csv", "pareto.png", "report.md"):
        assert (out / f).exists(), f
    keys = (
        "model",
        "method",
        "steps",
        "nfe",
        "e2e_psnr",
        "e2e_ssim",
        "seen_psnr",
        "seen_psnr_ci95",
        "seen_psnr_view0",
        "sharpness",
        "sharpness_ci95",
        "fid",
        "fid_ci95",
        "kid",
        "kid_ci95",
        "chamfer",
        "silhouette_iou",
        "teacher_psnr",
        "vs_ref_seen_psnr_diff",
        "vs_ref_seen_psnr_diff_ci95",
        "diffusion_ms",
        "recon_ms",
        "render_ms",
        "total_ms",
        "objects",
    )
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert all(k in header for k in keys)
    r = {(x["model"], x["steps"]): x for x in rows}
    assert r[("teacher", 2)]["nfe"] == 2 and r[("shortcut", 1)]["nfe"] == 1
    # what a user waits for: image -> views -> Gaussians; rendering is reported on its own
    assert all(x["total_ms"] == pytest.approx(x["diffusion_ms"] + x["recon_ms"]) for x in rows)
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["missing"]["lpips"] and meta["world_version"] == 2
    assert all(0 <= x["unseen_dist"] <= 1 and "averaged_rate" in x for x in rows)
    assert meta["split"] == "test" and meta["verdict_metrics"] == []  # no calibration given
    report = (out / "report.md").read_text()
    assert "Amortised cost per asset" in report and "pareto.png" in report
    assert "fails its calibration" not in report and "no calibration at" in report
    # a rerun reuses every finished cell and gives the same quality figures
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    rows2 = Sweep(
        _cfg(sweep_assets, tiny_data_root, tmp_path, calibration=str(tmp_path / "no.json"))
    ).run()
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert before == after
    assert [x["e2e_psnr"] for x in rows2] == [x["e2e_psnr"] for x in rows]
    # cells are keyed by the weights they used: another encoder makes every cached cell stale
    FeatureEncoder(width=8).save_pretrained(tmp_path / "enc2", {})
    Sweep(_cfg(sweep_assets, tiny_data_root, tmp_path, encoder=str(tmp_path / "enc2"))).run()
    fresh = {p.name for p in (out / "cells").glob("*.json")} - set(before)
    assert len(fresh) == len(before)  # 4 cells + the reference, all recomputed
    # and so does another reference step count (agreement and paired figures depend on it)
    seen = {p.name for p in (out / "cells").glob("*.json")}
    rows3 = Sweep(
        _cfg(
            sweep_assets,
            tiny_data_root,
            tmp_path,
            steps=[1],
            models=["teacher"],
            reference_steps=2,
            calibration=str(tmp_path / "no.json"),
        )
    ).run()
    assert len({p.name for p in (out / "cells").glob("*.json")} - seen) == 2
    assert all("vs_ref_seen_psnr_diff" in x for x in rows + rows3)


def test_quality_is_reproducible_across_runs(sweep_assets, tiny_data_root, tmp_path):
    a = Sweep(
        _cfg(
            sweep_assets,
            tiny_data_root,
            tmp_path,
            out=str(tmp_path / "a"),
            models=["teacher"],
            steps=[2],
        )
    ).run()[0]
    b = Sweep(
        _cfg(
            sweep_assets,
            tiny_data_root,
            tmp_path,
            out=str(tmp_path / "b"),
            models=["teacher"],
            steps=[2],
        )
    ).run()[0]
    for k in ("e2e_psnr", "fid", "kid", "chamfer", "teacher_psnr", "view0_psnr"):
        assert a[k] == pytest.approx(b[k], abs=1e-6), k


def test_unsupported_steps_and_missing_folder(sweep_assets, tiny_data_root, tmp_path):
    with pytest.raises(ValueError, match=r"does not support 4 steps; supported: \[1, 2\]"):
        Sweep(_cfg(sweep_assets, tiny_data_root, tmp_path, steps=[4])).cells()
    sw = Sweep(_cfg(sweep_assets, tiny_data_root, tmp_path, steps=[4], skip_unsupported=True))
    assert [c[0] for c in sw.cells()] == ["teacher"] and "does not support" in sw.skipped[0][
        "reason"
    ]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Sweep(_cfg(sweep_assets, tiny_data_root, tmp_path, models=[str(tmp_path / "nothing")]))


def test_reconstructor_of_another_size_is_refused(sweep_assets, tiny_data_root, tmp_path):
    tiny_recon(8).save_pretrained(tmp_path / "recon8")
    with pytest.raises(ValueError, match=r"works at 8px, teacher .* at 16px"):
        Sweep(_cfg(sweep_assets, tiny_data_root, tmp_path, recon=str(tmp_path / "recon8")))


def test_amortised_break_even():
    rows = [
        {
            "model": "teacher",
            "method": "teacher",
            "steps": 50,
            "total_ms": 1000.0,
            "train_seconds": 0.0,
        },
        {"model": "s", "method": "shortcut", "steps": 1, "total_ms": 100.0, "train_seconds": 900.0},
    ]
    table, notes = amortised(rows, 50)
    assert "1e+02" in table and "1e+07" in table
    assert "breaks even after 1,000 assets" in notes[0]  # 900 s / 0.9 s saved per asset


def test_fid_on_encoder_features_detects_blur():
    torch.manual_seed(0)
    enc = FeatureEncoder(width=8).eval()
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    same = distribution_distances(enc, x, x.clone())
    blur = distribution_distances(enc, x, torch.nn.functional.avg_pool2d(x, 5, 1, 2))
    assert abs(same["fid"]) < 1e-3
    assert blur["fid"] > 100 * max(same["fid"], 1e-6) and blur["kid"] > same["kid"]
    torch.manual_seed(123)
    again = distribution_distances(enc, x, torch.nn.functional.avg_pool2d(x, 5, 1, 2))
    assert again == blur  # no random state: the same figures whatever the caller's seed


def test_sweep_cli_smoke(sweep_assets, tiny_data_root, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "sweep",
            "--models",
            "teacher",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "cli"),
            f"teacher={load_teacher_dir(sweep_assets)}",
            f"recon={sweep_assets / 'recon'}",
            f"encoder={sweep_assets / 'encoder'}",
            f"data_root={tiny_data_root}",
            "objects=2",
            "batch=2",
            "latency_repeats=1",
            "throughput_batch=2",
            "reference_steps=2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["rows"][0]["steps"] == 1


def test_report_names_a_best_student_only_when_different():
    from eval.report import verdict_lines

    common = {"runner_up": "b", "margin": 0.3, "objects_to_decide": None, "tied": ["a"]}
    lines = verdict_lines(
        [
            {
                "steps": 1,
                "metric": "fid",
                "best": "a",
                "diff": -1.2,
                "ci95": 0.4,
                "verdict": "different",
                **common,
            },
            {
                "steps": 2,
                "metric": "seen_psnr",
                "best": "a",
                "diff": 0.1,
                "ci95": 0.3,
                "verdict": "inconclusive",
                **{**common, "objects_to_decide": 900},
            },
            {
                "steps": 4,
                "metric": "fid",
                "best": "a",
                "diff": 0.01,
                "ci95": 0.02,
                "verdict": "equivalent",
                **common,
            },
        ]
    )
    assert "different: **a** best" in lines[0] and "runner-up b" in lines[0]
    assert "inconclusive: a has the best point estimate" in lines[1] and "**" not in lines[1]
    assert "about 900 objects would decide" in lines[1]
    assert "equivalent: a and the runner-up b within the margin 0.3" in lines[2]
    assert "no best student" in lines[2]


def test_cell_key_is_stable_so_cached_cells_are_found():
    from eval.cells import cell_key

    class Model:
        def weights_key(self):
            return "abc123"

    hashes = {
        "teacher": "t",
        "recon": "r",
        "encoder": "e",
        "world": "w",
        "split": "test",
        "seeds": "s",
        "axis": 2,
        "reference_steps": 50,
        "lpips": False,
    }
    # recorded before the sweep was split into cells/verdicts/results: a changed key would
    # orphan every cached cell (docs/sweep/cells)
    assert cell_key(hashes, Model(), "euler", 4, 1.0, 32) == "1f3ae11eb3dc99db"


def test_verdicts_name_the_best_only_against_a_resolved_runner_up():
    from eval.verdicts import verdicts

    rows = [
        {"model": m, "method": "x", "sampler": "euler", "steps": 1, "fid": f}
        for m, f in (("a", 1.0), ("b", 2.0), ("c", 5.0))
    ] + [{"model": "t", "method": "teacher", "sampler": "euler", "steps": 1, "fid": 0.0}]
    pers = {(r["model"], "euler", 1): r["fid"] for r in rows}

    def paired(x, y):  # difference x - y with a fixed half-width of 1.5
        return {"fid_diff": x - y, "fid_diff_ci95": 1.5}

    (v,) = verdicts(rows, pers, ["fid"], paired)
    assert v["best"] == "a" and v["runner_up"] == "b" and not v["best_resolved"]
    assert v["tied"] == ["a", "b"]  # c is 4 worse: resolved; the teacher is not a candidate


def test_sweep_report_lines_are_three_way_verdicts_against_its_margins(
    sweep_assets, tiny_data_root, tmp_path
):
    """A sweep on tiny assets with a calibration that passes its metrics and margins fixed in
    advance: every comparison line carries exactly one of the three verdict words, the report
    names the margins file and its key, and results.json records what /v1/students shows."""
    from eval.margins import load_margins, write_margins

    passes = {"passes": True}
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"verdicts": {m: passes for m in ("seen_psnr", "fid")}}))
    doc = {
        "meta": {"reference": "teacher@3 (euler)", "split": "val", "objects": 4, "created": "x"},
        "margins": {"seen_psnr": {"margin": 0.5, "kinds": {}}, "fid": {"margin": 1e9, "kinds": {}}},
    }
    write_margins(tmp_path, doc)
    key = load_margins(tmp_path / "margins.json").key
    cfg = _cfg(
        sweep_assets,
        tiny_data_root,
        tmp_path,
        calibration=str(cal),
        margins=str(tmp_path / "margins.json"),
    )
    Sweep(cfg).run()
    out = tmp_path / "sw"
    text = (out / "report.md").read_text()
    assert f"key `{key}`" in text and str(tmp_path / "margins.json") in text
    lines = [ln for ln in text.splitlines() if ln.startswith("- ") and " step" in ln[:12]]
    assert lines and "match" not in text
    words = ("equivalent", "different", "inconclusive")
    for ln in lines:
        assert sum(w in ln for w in words) == 1, ln
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["margins"]["key"] == key
    ref = meta["reference_verdicts"]
    assert {v["metric"] for v in ref} == {"seen_psnr", "fid"}
    # an absurdly wide FID margin: every FID comparison passes its two one-sided tests
    assert all(v["verdict"] == "equivalent" for v in ref if v["metric"] == "fid")


def test_a_sweep_does_not_take_margins_of_another_world(sweep_assets, tiny_data_root, tmp_path):
    """Margins derived on world version 1 do not decide equivalence in a sweep on version 2:
    the sweep drops them before any cell runs and results.json will say why."""
    from eval.margins import write_margins

    doc = {
        "meta": {
            "reference": "teacher@3",
            "split": "val objects 0..3 of world version 1",
            "objects": 4,
            "created": "x",
        },
        "margins": {"seen_psnr": {"margin": 0.5, "kinds": {}}},
    }
    write_margins(tmp_path, doc)
    sw = Sweep(_cfg(sweep_assets, tiny_data_root, tmp_path, margins=str(tmp_path / "margins.json")))
    assert sw.world.version == 2 and sw.margins is None
    assert "world version 1" in sw.margins_missing and "intervals only" in sw.margins_missing
