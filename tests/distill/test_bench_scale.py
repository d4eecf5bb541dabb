"""`distill bench scale` on tiny settings: every stage at 32 px, batch 1, one timed call."""

import json

import pytest
import torch

from distill.bench_scale import (
    STAGES,
    _status_kb,
    bench_scale,
    exponent,
    measure_one,
    reset_peak_rss,
)
from distill.cli import main, run


def test_exponent_is_the_log_log_slope():
    rows = [{"pixels": p, "median_s": 3e-6 * p**1.5} for p in (32**2, 64**2, 128**2)]
    assert exponent(rows) == pytest.approx(1.5)
    assert exponent(rows[:1]) is None


def test_every_stage_runs_at_32px_batch_1():
    for stage in STAGES:
        r = measure_one(stage, 32, 1, 1, "cpu")
        assert r["median_s"] > 0 and r["peak_mb"] >= 0 and r["memory"], stage


def test_peak_memory_sees_an_allocation_after_a_reset():
    """The peak resident set, reset to the current one, rises by what a call allocates and frees
    (ru_maxrss would not move when the process peaked higher before)."""
    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here")
    big = torch.ones(96 * 2**20)  # 384 MB touched, freed: the earlier peak
    del big
    assert reset_peak_rss()
    rss = _status_kb("VmRSS")
    x = torch.ones(64 * 2**20)  # 256 MB
    del x
    grew_mb = (_status_kb("VmHWM") - rss) / 1024
    assert 240 < grew_mb < 300, grew_mb


def test_a_killed_run_resumes_from_its_partial_rows(tmp_path):
    out = tmp_path / "scale"
    row = {"stage": "recon", "size": 32, "batch": 1, "pixels": 1024, "median_s": 123.0,
           "times_s": [123.0], "device": "cpu", "peak_mb": 1.0, "memory": "m",
           "repeats": 1, "device_asked": "cpu"}  # fmt: skip
    out.with_suffix(".partial.jsonl").write_text(json.dumps(row) + "\n")
    res = bench_scale(str(out), sizes=(32,), batches=(1,), stages=("recon",), repeats=1,
                      device="cpu")  # fmt: skip
    assert res["rows"][0]["median_s"] == 123.0  # read back, not measured again
    assert not out.with_suffix(".partial.jsonl").exists()  # the finished run removes it


def test_bench_scale_cli_writes_json_md_png(tmp_path):
    """One configuration through the CLI (one subprocess: imports dominate its time)."""
    out = tmp_path / "scale"
    run(["bench", "scale", "--sizes", "32", "--batches", "1", "--stages", "recon", "--repeats",
         "1", "--device", "cpu", "--out", str(out)])  # fmt: skip
    res = json.loads(out.with_suffix(".json").read_text())
    (row,) = res["rows"]
    assert row["stage"] == "recon" and "error" not in row and row["median_s"] > 0
    assert res["exponents"] == {"recon": {"1": None}}  # one size: no slope (n/a in the table)
    assert "| recon | 1 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0


def test_bench_scale_refuses_bad_sizes_and_stages(tmp_path, capsys):
    assert main(["bench", "scale", "--sizes", "32,x", "--out", str(tmp_path / "s")]) == 2
    assert "--sizes" in capsys.readouterr().err
    assert main(["bench", "scale", "--stages", "vae", "--out", str(tmp_path / "s")]) == 2
    assert "unknown stage 'vae'" in capsys.readouterr().err


def test_a_configuration_predicted_over_the_time_limit_is_skipped():
    from distill.bench_scale import predicted_over

    rows = [
        {"stage": "recon", "size": 64, "batch": 8, "median_s": 10.0},
        {"stage": "raster", "size": 64, "batch": 8, "error": "over 600 s"},
    ]
    # linear in pixels and batch: 10 s x 4 x 1 = 40 s per call, under 60
    assert predicted_over(rows, "recon", 128, 8, 60.0) is None
    assert "predicted over 60 s (160 s per call" in predicted_over(rows, "recon", 128, 32, 60.0)
    assert "failed (over 600 s)" in predicted_over(rows, "raster", 64, 32, 60.0)
    assert predicted_over(rows, "recon", 32, 8, 1.0) is None  # only smaller ones predict
    assert predicted_over(rows, "teacher_step", 128, 32, 1.0) is None  # another stage
