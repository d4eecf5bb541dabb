"""The sweep under `accelerate launch` with 2 CPU processes (gloo): each process generates and
measures its share of the objects, the main process gathers and writes; the per-object figures
and the report equal one process's (timings aside)."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from tiny_util import ROOT, student_card, tiny_recon, tiny_student

from eval.encoder import FeatureEncoder
from eval.shards import merge_figures, process_share
from teachers.io import load_teacher


def test_shares_are_whole_batches_in_order_and_cover_every_object():
    assert [process_share(8, 2, r, 2) for r in (0, 1)] == [(0, 4), (4, 8)]
    assert [process_share(5, 2, r, 2) for r in (0, 1)] == [(0, 4), (4, 5)]
    assert [process_share(2, 2, r, 2) for r in (0, 1)] == [(0, 2), (2, 2)]  # one batch: one share
    parts = [{"a": torch.tensor([1.0, 2.0])}, {}, {"a": torch.tensor([3.0])}]
    assert merge_figures(parts)["a"].tolist() == [1.0, 2.0, 3.0]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(args: list[str], processes: int) -> subprocess.CompletedProcess:
    """``distill sweep ARGS`` in one process, or under accelerate's torchrun launcher with two
    CPU processes (accelerate 1.x starts one process for ``--cpu --num_processes 2``; see
    tests/training/test_multiprocess.py)."""
    if processes == 1:
        cmd = [sys.executable, "-m", "distill.cli", "sweep", *args]
    else:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
            "no", "--main_process_port", str(_port()), "-m", "distill.cli", "sweep", *args,
        ]  # fmt: skip
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


TIMING = (" ms", "Commit", "latency", "throughput", "peak MB", "s/obj", "break-even")


def _report(path) -> list[str]:
    """report.md without its timings: the run's date and timing lines dropped, and in tables
    the timing columns (named by their header)."""
    out, drop = [], set()
    for ln in path.read_text().splitlines():
        cells = ln.split("|")
        if ln.startswith("|") and "---" not in ln and not drop.isdisjoint(range(len(cells))):
            ln = "|".join(c for i, c in enumerate(cells) if i not in drop)
        elif ln.startswith("| model"):  # a table header: its timing columns
            drop = {i for i, c in enumerate(cells) if any(t.strip() in c for t in TIMING)}
        elif any(t in ln for t in TIMING):
            continue
        out.append(ln)
    return out


@pytest.mark.slow
def test_two_process_sweep_equals_one_process(tiny_teacher_dir, tiny_data_root, tmp_path):
    t = load_teacher(tiny_teacher_dir)
    torch.manual_seed(1)
    s = tiny_student(t, "shortcut")
    s.save_pretrained(tmp_path / "shortcut", student_card(s, tiny_teacher_dir))
    tiny_recon(16).save_pretrained(tmp_path / "recon")
    FeatureEncoder(width=8).save_pretrained(tmp_path / "encoder", {})
    outs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        args = [
            "--models", f"teacher,{tmp_path / 'shortcut'}", "--steps", "1", "--out", str(out),
            f"teacher={tiny_teacher_dir}", f"recon={tmp_path / 'recon'}",
            f"encoder={tmp_path / 'encoder'}", f"data_root={tiny_data_root}", "objects=4",
            "batch=2", "latency_repeats=1", "throughput_batch=1", "reference_steps=2",
            "set_resamples=50", "device=auto", f"calibration={tmp_path / 'none.json'}",
        ]  # fmt: skip
        r = _sweep(args, procs)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.count("wrote ") == 1  # one process writes
        outs[procs] = out
    one, two = (sorted((outs[p] / "cells").glob("*.pt")) for p in (1, 2))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 3  # same cell keys
    for a, b in zip(one, two):
        pa, pb = torch.load(a)["per"], torch.load(b)["per"]
        assert pa.keys() == pb.keys()
        for k in pa:
            assert pa[k].shape[0] == 4, k
            torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6, msg=f"{a.name} {k}")
    assert _report(outs[1] / "report.md") == _report(outs[2] / "report.md")
