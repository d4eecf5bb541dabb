"""Margins from a reference's outputs (known answers on synthetic calibration rows, the tiny
calibration run end to end), three-way verdict lines in the report, Holm within a family, and
the verdicts /v1/students shows."""

import hashlib
import json
import math
from dataclasses import replace

import pytest
import torch
from tiny_util import tiny_recon

from eval.margins import derive_margins, load_margins, write_margins
from eval.report import basis_lines, reference_lines, report, verdict_lines
from eval.stats import DIFFERENT, EQUIVALENT, INCONCLUSIVE
from eval.verdicts import decide_family, reference_verdicts, verdicts
from serve.registry import sweep_verdicts

WORDS = (EQUIVALENT, DIFFERENT, INCONCLUSIVE)
CLAIMS = {"seen_psnr": {"noise": "down", "blur": "down", "colour": "down"}}


def _row(kind, level, d, h, metric="seen_psnr"):
    return {"kind": kind, "level": level, f"{metric}_diff": d, f"{metric}_diff_ci95": h}


def _synthetic_rows():
    """seen PSNR on a reference's outputs: noise costs 0.10 dB at its smallest level; blur 0.5
    raises it (the wrong way) before 1.0 lowers it; colour's smallest level is not resolved,
    its next one costs 0.06 dB."""
    return [
        _row("noise", 0.05, -0.50, 0.05),
        _row("noise", 0.02, -0.10, 0.02),
        _row("blur", 0.5, +0.21, 0.05),
        _row("blur", 1.0, -0.40, 0.05),
        _row("colour", 0.02, -0.01, 0.02),
        _row("colour", 0.05, -0.06, 0.01),
    ]


def test_margin_is_the_smallest_effect_at_the_smallest_detected_levels():
    m = derive_margins(_synthetic_rows(), CLAIMS, ["seen_psnr"])["seen_psnr"]
    assert m["margin"] == pytest.approx(0.06)  # min(noise 0.10 at 0.02, colour 0.06 at 0.05)
    assert m["from"]["kind"] == "colour" and m["from"]["level"] == 0.05
    k = m["kinds"]
    assert k["noise"]["status"] == "used" and k["noise"]["effect"] == pytest.approx(0.10)
    assert k["noise"]["level"] == 0.02  # the smallest level, though listed second
    # blur raises the fidelity figure at 0.5: excluded with the reason, whatever 1.0 does
    assert k["blur"]["status"] == "wrong_way" and k["blur"]["level"] == 0.5
    assert "not a verdict metric for this degradation" in k["blur"]["reason"]


def test_a_metric_that_only_moves_the_wrong_way_or_not_at_all_has_no_margin():
    rows = [_row("blur", 0.5, +0.2, 0.05), _row("noise", 0.02, -0.01, 0.05)]
    m = derive_margins(rows, CLAIMS, ["seen_psnr"])["seen_psnr"]
    assert m["margin"] is None and m["kinds"]["noise"]["status"] == "undetected"
    assert "blur: moves the wrong way" in m["reason"] and "colour" not in m["kinds"]


def _doc(margins):
    return {
        "meta": {
            "reference": "teacher@50 (euler)",
            "split": "val objects 0..63 of world version 2",
            "objects": 64,
            "created": "now",
        },
        "operating_point": {"seen_psnr": 17.4},
        "margins": margins,
    }


def test_margins_files_round_trip_and_say_what_is_excluded(tmp_path):
    rows = _synthetic_rows() + [_row("noise", 0.02, +0.3, 0.01, "fid")]
    claims = {**CLAIMS, "fid": {"noise": "up", "blur": "up"}}
    doc = _doc(derive_margins(rows, claims, ["seen_psnr", "fid", "unseen_dist"]))
    write_margins(tmp_path, doc)
    md = (tmp_path / "margins.md").read_text()
    assert "seen_psnr is not a verdict metric for blur: moves the wrong way at level 0.5" in md
    assert "Rule:" in md and "smallest detected level" in md
    assert "none: intervals only" in md  # unseen_dist: no claims given here, no margin
    mg = load_margins(tmp_path / "margins.json")
    raw = (tmp_path / "margins.json").read_bytes()
    assert mg.key == hashlib.sha256(raw).hexdigest()[:16]
    assert mg.values == {"seen_psnr": pytest.approx(0.06), "fid": pytest.approx(0.3)}
    assert set(mg.excluded) == {"unseen_dist"} and mg.reference == "teacher@50 (euler)"
    assert load_margins(tmp_path / "nothing.json") is None and load_margins("") is None


def test_bad_margins_files_are_refused_by_name(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="m.json: not a margins file"):
        load_margins(p)
    p.write_text(json.dumps(_doc({"fid": {"margin": -1.0}})))
    with pytest.raises(ValueError, match=r"margin of fid must be a number > 0, got -1.0"):
        load_margins(p)


def test_failures_on_a_share_of_objects_and_the_truth_special_case(tiny_world):
    from eval.calibrate import CalibrateConfig
    from eval.degrade import degradations, render_with_backs, with_share
    from eval.quality import Truth
    from scenes.rig import make_rig
    from scenes.samples import make_samples
    from scenes.world import WorldConfig

    a, b = torch.zeros(8, 1), torch.ones(8, 1)
    assert with_share(a, b, 0.125).flatten().tolist() == [0] * 7 + [1]  # the last object
    assert with_share(a, b, 0.25).sum() == 2 and with_share(a, b, 1.0).sum() == 8
    world = WorldConfig(image_size=16, gaussians=64)
    rig = make_rig(world)
    seeds = [1, 2, 3, 4]
    s = make_samples(seeds, world, rig)
    truth = Truth.from_batch(s, rig, 2)
    cfg = CalibrateConfig(noise=(), blur=(), colour=(), failure_shares=(0.25, 1.0))
    gt = truth.targets
    out = {(k, lv): v for k, lv, v in degradations(cfg, gt, truth, seeds, world, None)}
    # on the truth at share 1 the failures are the old ones: collapse = the object 0 repaint
    col = render_with_backs(seeds, [int(truth.back_class[0])] * 4, world)
    assert torch.allclose(out[("collapse", 1.0)], col, atol=1e-5)
    assert torch.equal(out[("averaging", 0.25)][:3], gt[:3])  # one object in four changed
    # on a model's outputs the same change is applied to its own pixels
    base = torch.zeros_like(gt)
    out2 = {(k, lv): v for k, lv, v in degradations(cfg, base, truth, seeds, world, None)}
    assert torch.allclose(out2[("collapse", 1.0)], (col - gt).clamp(-1, 1), atol=1e-5)
    inc = out2[("inconsistency", 0.25)]
    assert torch.equal(inc, base)  # view 1 from another object: all zeros in, all zeros out


def test_calibrate_derives_margins_on_the_reference_outputs(tmp_path, tiny_teacher_dir):
    from eval.calibrate import CalibrateConfig, cache_dir, calibrate, parse_reference
    from eval.encoder import FeatureEncoder
    from scenes.data import make_split
    from scenes.world import WorldConfig

    make_split(tmp_path / "data", "test", 4, WorldConfig(image_size=16, gaussians=64))
    tiny_recon(16).save_pretrained(tmp_path / "recon")
    FeatureEncoder(width=8).save_pretrained(tmp_path / "encoder", {})
    cfg = CalibrateConfig(
        out=str(tmp_path / "cal"),
        data_root=str(tmp_path / "data"),
        objects=4,
        recon=str(tmp_path / "recon"),
        encoder=str(tmp_path / "encoder"),
        batch=4,
        set_resamples=4,  # a smoke run: each subsample recomputes FID
        noise=(0.02,),
        blur=(0.5,),
        colour=(0.02,),
        failure_shares=(0.25, 1.0),
        reference="teacher@2",
        teacher=str(tiny_teacher_dir),
        reference_objects=4,
    )
    res = calibrate(cfg)
    assert len({(r["kind"], r["level"]) for r in res["rows"]}) == 10  # clean + 3 + 3 x 2 shares
    doc = json.loads((tmp_path / "cal" / "margins.json").read_text())
    assert doc["meta"]["reference"] == "teacher@2 (euler)"
    assert doc["meta"]["world"]["version"] == 2  # a sweep on another world does not take them
    assert doc["meta"]["split"].startswith("val objects 0..3")
    # the reference's objects are val objects of the same world, not the test ones
    manifest = json.loads((tmp_path / "data" / "val" / "manifest.json").read_text())
    assert manifest["world"]["gaussians"] == 64
    assert {"seen_psnr", "fid", "unseen_dist", "consistency_psnr", "sharpness"} <= set(
        doc["margins"]
    )
    for m, e in doc["margins"].items():
        assert (e["margin"] is None) == ("reason" in e), m
        assert e["margin"] is None or e["margin"] > 0
    assert doc["operating_point"]["seen_psnr"] < 100  # the model's outputs, not the truth
    md = (tmp_path / "cal" / "margins.md").read_text()
    assert md.startswith("# Equivalence margins") and "teacher@2 (euler)" in md
    # a killed calibration resumes: every case of both passes (and the reference's outputs)
    # comes back from its cache, nothing is evaluated again, and the figures are the same
    from eval.quality import QualityAxis

    cached = list((tmp_path / "cal" / ".cache").glob("*/*.pt"))
    assert len(cached) == 2 * 10 + 1
    evaluate = QualityAxis.evaluate
    QualityAxis.evaluate = lambda *a, **k: pytest.fail("a cached case was evaluated again")
    try:
        again = calibrate(cfg)
    finally:
        QualityAxis.evaluate = evaluate
    assert again["rows"] == res["rows"]
    # another setting, or another model, is another cache: nothing of the first is reused
    assert cache_dir(replace(cfg, noise=(0.05,)), "truth", "r") != cache_dir(cfg, "truth", "r")
    assert cache_dir(cfg, "truth", "r") != cache_dir(cfg, "truth", "other recon")
    with pytest.raises(ValueError, match="reference must be MODEL@STEPS"):
        parse_reference("teacher50")


def _entry(model, d, h, margin, metric="fid", steps=1):
    return {
        "model": model,
        "method": "x",
        "sampler": "euler",
        "steps": steps,
        f"vs_ref_{metric}_diff": d,
        f"vs_ref_{metric}_diff_ci95": h,
    }


def _comparison_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("- ") and "step" in ln.split(",")[0]]


def test_reference_lines_are_three_way_and_equivalent_only_when_tost_passes():
    rows = [
        _entry("same", 0.0, 0.01, 0.1),  # 90% interval well inside +-0.1: equivalent
        _entry("wide", 0.05, 0.2, 0.1),  # interval reaches beyond the margin: inconclusive
        _entry("worse", 1.0, 0.1, 0.1),  # excludes zero, beyond the margin: different
        _entry("close", 0.0, 0.01, 0.1, "seen_psnr"),  # no margin for seen_psnr
    ]
    es = reference_verdicts(rows, ["fid", "seen_psnr"], {"fid": 0.1}, 100)
    by = {(e["model"], e["metric"]): e for e in es}
    assert by[("same", "fid")]["verdict"] == EQUIVALENT
    assert by[("wide", "fid")]["verdict"] == INCONCLUSIVE
    assert by[("wide", "fid")]["objects_to_decide"] == math.ceil(100 * (0.2 / 0.05) ** 2)
    assert by[("worse", "fid")]["verdict"] == DIFFERENT and by[("worse", "fid")]["side"] == "worse"
    assert by[("close", "seen_psnr")]["verdict"] is None
    lines = reference_lines(es, "teacher@50")
    for ln in lines:
        assert sum(w in ln for w in WORDS) <= 1, ln
        assert "match" not in ln
    text = "\n".join(lines)
    assert "fid, same: equivalent" in text and "fid, worse: different, worse" in text
    assert "fid, wide: inconclusive" in text and "1,600 objects would decide" in text
    assert "seen_psnr, close: Δ +0 ± 0.01 vs teacher@50 (no margin: interval only)" in text


def test_holm_within_a_family_of_verdicts():
    # p = 0.04 each: equivalent alone, not after Holm in a family of two
    d = 0.5 - 1.7506860712521692 * 0.2 / 1.959963984540054
    one = decide_family([{"diff": d, "ci95": 0.2, "margin": 0.5}], 100)
    assert one[0]["verdict"] == EQUIVALENT and one[0]["p_equivalent"] == pytest.approx(0.04)
    two = decide_family([{"diff": d, "ci95": 0.2, "margin": 0.5} for _ in range(2)], 100)
    assert [e["verdict"] for e in two] == [INCONCLUSIVE, INCONCLUSIVE]
    assert all(e["uncorrected"] == EQUIVALENT for e in two)
    # a strong one first: the weak one then faces 0.05 / 1 and passes
    mix = decide_family(
        [{"diff": 0.0, "ci95": 0.05, "margin": 0.5}, {"diff": d, "ci95": 0.2, "margin": 0.5}], 100
    )
    assert [e["verdict"] for e in mix] == [EQUIVALENT, EQUIVALENT]
    # the comparisons to the reference are one family across models and metrics
    rows = [_entry("a", d, 0.2, 0.5), _entry("b", d, 0.2, 0.5)]
    es = reference_verdicts(rows, ["fid"], {"fid": 0.5}, 100)
    assert [e["verdict"] for e in es] == [INCONCLUSIVE, INCONCLUSIVE]
    # and so are the best-student comparisons, across step counts
    cand = [
        {"model": m, "method": "x", "sampler": "euler", "steps": s, "fid": f}
        for s in (1, 2)
        for m, f in (("a", 1.0), ("b", 1.0 + d))
    ]
    pers = {(r["model"], "euler", r["steps"]): r["fid"] for r in cand}

    def paired(x, y):
        return {"fid_diff": x - y, "fid_diff_ci95": 0.2}

    lines = verdicts(cand, pers, ["fid"], paired, {"fid": 0.5}, 100)
    assert [v["verdict"] for v in lines] == [INCONCLUSIVE, INCONCLUSIVE]
    assert [v["verdict"] for v in verdicts(cand[:2], pers, ["fid"], paired, {"fid": 0.5}, 100)] == [
        EQUIVALENT
    ]


def _full_row(model, method, steps, **vs):
    r = {
        "model": model,
        "method": method,
        "sampler": "euler",
        "steps": steps,
        "nfe": steps,
        "train_seconds": 60.0,
    }
    for k in ("diffusion_ms", "recon_ms", "total_ms", "render_ms", "throughput_per_s"):
        r[k] = 10.0 * steps
    r["peak_mem_mb"] = 0.0
    r.update(vs)
    return r


def _meta(margins):
    return {
        "commit": "abc",
        "created": "now",
        "device": "cpu",
        "eval_set": "test split objects 0..99",
        "objects": 100,
        "world_version": 2,
        "world_note": "",
        "seen_views": [0],
        "config": {"reference_steps": 50},
        "reference": "teacher@50 (euler)",
        "verdict_metrics": ["fid"],
        "unusable_metrics": [],
        "missing": {},
        "skipped": [],
        "sharpness_usable": False,
        "margins": margins,
    }


def test_report_without_margins_says_so_and_never_says_equivalent():
    rows = [
        _full_row("teacher", "teacher", 50),
        _full_row("s", "shortcut", 1, vs_ref_fid_diff=0.0, vs_ref_fid_diff_ci95=0.01),
    ]
    meta = _meta({"path": "docs/metrics/margins.json", "missing": "no margins file"})
    meta["verdicts"] = []
    meta["reference_verdicts"] = reference_verdicts(rows, ["fid"], None, 100)
    text = report(rows, meta)
    assert "No margins at `docs/metrics/margins.json`" in text
    assert "equivalent" not in text and "match" not in text
    assert "1 step, fid, s: Δ +0 ± 0.01 vs teacher@50 (euler) (no margin: interval only)" in text
    # a results.json written before verdicts were recorded: intervals only as well
    del meta["reference_verdicts"]
    assert "equivalent" not in report(rows, meta)


def test_report_with_margins_names_them_and_every_line_is_one_verdict():
    rows = [
        _full_row("teacher", "teacher", 50),
        _full_row("a", "shortcut", 1, vs_ref_fid_diff=0.0, vs_ref_fid_diff_ci95=0.01),
        _full_row("b", "dmd2", 1, vs_ref_fid_diff=2.0, vs_ref_fid_diff_ci95=0.1),
        _full_row("c", "meanflow", 2, vs_ref_fid_diff=0.1, vs_ref_fid_diff_ci95=0.5),
    ]
    margins = {
        "path": "m.json",
        "key": "0123abcd",
        "reference": "teacher@50 (euler)",
        "values": {"fid": 0.3},
        "excluded": {"unseen_dist": "no degradation gives a margin"},
    }
    meta = _meta(margins)
    meta["reference_verdicts"] = reference_verdicts(rows, ["fid"], {"fid": 0.3}, 100)
    meta["verdicts"] = [
        {
            "steps": 1,
            "metric": "fid",
            "best": "a",
            "runner_up": "b",
            "diff": -2.0,
            "ci95": 0.1,
            "margin": 0.3,
            "verdict": DIFFERENT,
            "objects_to_decide": None,
        }
    ]
    text = report(rows, meta)
    assert "`m.json` (key `0123abcd`" in text and "fid 0.3" in text
    assert "No margin, intervals only: unseen_dist (no degradation gives a margin)" in text
    lines = _comparison_lines(text)
    assert len(lines) == 4  # one best-student line, three against the reference
    for ln in lines:
        assert sum(w in ln for w in WORDS) == 1, ln
    assert "1 step, fid, a: equivalent" in text and "1 step, fid, b: different, worse" in text
    assert "2 steps, fid, c: inconclusive" in text and "objects would decide" in text
    assert "different: **a** best" in text and "match" not in text


def test_best_lines_without_a_margin_give_intervals_only():
    (ln,) = verdict_lines(
        [
            {
                "steps": 2,
                "metric": "fid",
                "best": "a",
                "runner_up": "b",
                "diff": -0.1,
                "ci95": 0.3,
                "margin": None,
                "verdict": None,
            }
        ]
    )
    assert "interval only" in ln and not any(w in ln for w in WORDS) and "**" not in ln
    assert (
        "No margins at `x.json`"
        in basis_lines({"reference": "t", "margins": {"path": "x.json"}})[0]
    )


def test_students_endpoint_shows_the_sweeps_verdicts_in_three_words():
    rows = [
        _full_row("a", "shortcut", 1, vs_ref_fid_diff=0.0, vs_ref_fid_diff_ci95=0.01),
        _full_row("a", "shortcut", 2, vs_ref_fid_diff=1.0, vs_ref_fid_diff_ci95=0.1),
        _full_row("b", "dmd2", 1, vs_ref_fid_diff=0.1, vs_ref_fid_diff_ci95=0.5),
    ]
    meta = {
        "reference": "teacher@50 (euler)",
        "margins": {"path": "m.json", "key": "k1", "values": {"fid": 0.3}},
        "reference_verdicts": reference_verdicts(rows, ["fid"], {"fid": 0.3}, 100),
    }
    a = sweep_verdicts(meta, "a")
    assert [(v["steps"], v["verdict"]) for v in a["verdicts"]] == [(1, EQUIVALENT), (2, DIFFERENT)]
    assert a["verdicts"][1]["side"] == "worse" and "objects_to_decide" not in a["verdicts"][1]
    assert a["verdict_basis"] == {"margins": "m.json", "key": "k1", "reference": meta["reference"]}
    (b,) = sweep_verdicts(meta, "b")["verdicts"]
    assert b["verdict"] == INCONCLUSIVE and b["objects_to_decide"] > 100
    assert "match" not in json.dumps(sweep_verdicts(meta, "a"))
    none = sweep_verdicts({"reference": "t", "reference_verdicts": []}, "a")
    assert none == {
        "verdicts": [],
        "verdict_basis": {"margins": None, "note": "no margins: intervals only, no verdicts"},
    }


def test_a_resumed_run_says_its_time_covers_only_the_rest():
    from eval.margins import run_time

    assert run_time({"seconds": 120.0}) == "2.0 min"
    t = run_time({"seconds": 120.0, "cases": 19, "resumed_cases": 12})
    assert t.startswith("2.0 min in the run that finished") and "12 of 19 cases" in t
    assert run_time({}) == "time not recorded"


def test_margins_and_calibrations_of_another_world_do_not_apply(tmp_path):
    """Margins derived on one world say why they do not decide on another (by the recorded
    world's id, else the version in the split's description); a calibration of another world
    makes every verdict metric unusable, naming both worlds, and does not pass sharpness."""
    from dataclasses import asdict

    from eval.verdicts import VERDICT_METRICS, sharpness_calibrated, usable_metrics
    from scenes.world import WorldConfig, world_id

    w2, w3 = WorldConfig(image_size=16), WorldConfig(image_size=16, version=3)
    doc = _doc({"fid": {"margin": 0.5, "kinds": {}}})
    doc["meta"]["world"] = asdict(w2)
    write_margins(tmp_path, doc)
    mg = load_margins(tmp_path / "margins.json")
    assert mg.world_mismatch(w2) is None
    why = mg.world_mismatch(w3)
    assert why is not None and world_id(w2) in why and world_id(w3) in why and "version 3" in why
    assert mg.world_mismatch(WorldConfig(image_size=32)) is not None  # same version, other world
    # a file written before meta.world: the version in the split's description
    old = _doc({"fid": {"margin": 0.5, "kinds": {}}})
    write_margins(tmp_path, old)
    mg = load_margins(tmp_path / "margins.json")
    assert mg.world_version == 2 and mg.world_mismatch(WorldConfig(image_size=32)) is None
    assert "world version 2" in mg.world_mismatch(w3)
    old["meta"]["split"] = "val"  # says nothing: nothing to refuse
    write_margins(tmp_path, old)
    assert load_margins(tmp_path / "margins.json").world_mismatch(w3) is None

    cal = tmp_path / "calibration.json"
    passes = {m: {"passes": True} for m in (*VERDICT_METRICS, "sharpness")}
    cal.write_text(json.dumps({"meta": {"world": asdict(w2)}, "verdicts": passes}))
    usable, unusable, _ = usable_metrics(str(cal), True, 2, w2)
    assert set(usable) == set(VERDICT_METRICS) and not unusable
    assert sharpness_calibrated(str(cal), w2) and not sharpness_calibrated(str(cal), w3)
    usable, unusable, _ = usable_metrics(str(cal), True, 3, w3)
    assert not usable and len(unusable) == len(VERDICT_METRICS)
    assert all(world_id(w2) in u and "recalibrate" in u for u in unusable)
