"""`distill bench lora` end to end on a tiny LoRA student (the speed figures themselves are the
benchmark's, not a test's)."""

import json
import subprocess
import sys

import torch
from tiny_util import ROOT, student_card, tiny_student

from teachers.io import load_teacher


def test_bench_lora_cli_reports_merged_and_unmerged_calls(tiny_teacher_dir, tmp_path):
    t = load_teacher(tiny_teacher_dir)
    torch.manual_seed(3)
    s = tiny_student(t, "shortcut", lora_rank=4)
    with torch.no_grad():  # non-zero adapters (LoRA's B starts at zero)
        for n, p in s.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.05)
    s.save_pretrained(tmp_path / "st", student_card(s, tiny_teacher_dir), dtype=torch.float32)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "bench",
            "lora",
            "--student",
            str(tmp_path / "st"),
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "lora.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "lora.json").read_text())
    assert rep["max_abs_output_difference"] < 1e-4 and rep["merged_over_teacher"] > 0
    assert set(rep["call_ms"]) == {"teacher", "student_unmerged", "student_merged"}


def test_bench_recon_cli_times_a_reconstructor_folder(tmp_path):
    from tiny_util import tiny_recon

    tiny_recon(16, seed=0).save_pretrained(tmp_path / "recon")
    r = subprocess.run(
        [sys.executable, "-m", "distill.cli", "bench", "recon", str(tmp_path / "recon"),
         "--repeats", "1", "--device", "cpu", "--out", str(tmp_path / "recon.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (case,) = json.loads((tmp_path / "recon.json").read_text())["cases"]
    assert case["image_size"] == 16 and case["median_s"] > 0 and case["gflops"] > 0


def test_bench_teacher_measures_each_family_and_the_reference_pass(tiny_teacher_dir, tmp_path):
    """One step of the lab teacher and of the Zero123++ and MVDream fixtures. Zero123++'s
    reference pass runs the condition latent (one view) through the same UNet as the 3x2 grid
    (six views): about a sixth more convolution FLOPs, plus the appended keys in every
    self-attention; so more than the plain call and well under twice it."""
    from tiny_util import script

    from distill.cli import main

    fx = script("make_fixtures")
    zpp, mvd = fx.zero123plus(tmp_path / "zpp"), fx.mvdream(tmp_path / "mvd")
    out = tmp_path / "teacher.json"
    args = ["bench", "teacher", str(tiny_teacher_dir), str(zpp), str(mvd), "--repeats", "1"]
    assert main([*args, "--out", str(out), "--device", "cpu"]) == 0
    rows = {r["family"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"lab", "zero123plus", "mvdream"}
    for r in rows.values():
        assert r["median_s"] > 0 and r["gflops"] > 0 and r["parameters"] > 0
    z = rows["zero123plus"]
    assert 1.1 < z["reference_flops_ratio"] < 1.6, z["reference_flops_ratio"]
    assert z["without_reference"]["gflops"] < z["gflops"]
    assert "reference_cost_ratio" not in rows["mvdream"]
