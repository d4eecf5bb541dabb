"""`distill bench scale` on tiny settings: every stage at 32 px, batch 1, one timed call."""

import json

import pytest

from distill.bench_scale import STAGES, exponent, measure_one
from distill.cli import main, run


def test_exponent_is_the_log_log_slope():
    rows = [{"pixels": p, "median_s": 3e-6 * p**1.5} for p in (32**2, 64**2, 128**2)]
    assert exponent(rows) == pytest.approx(1.5)
    assert exponent(rows[:1]) is None


def test_every_stage_runs_at_32px_batch_1():
    for stage in STAGES:
        r = measure_one(stage, 32, 1, 1, "cpu")
        assert r["median_s"] > 0 and r["peak_mb"] >= 0 and "ru_maxrss" in r["memory"], stage


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
