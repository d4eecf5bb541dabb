"""scripts/leak_null.py: the null check of a sweep's leak, on known answers and a tiny sweep."""

import json
import math

import pytest
import torch
from tiny_util import script

from eval.unseen import leak
from scenes.objects import back_class
from scenes.world import WorldConfig, split_seed

ln = script("leak_null")


def test_a_copier_is_far_above_the_null_and_a_constant_reader_is_exactly_at_it():
    truth = torch.tensor([0, 0, 0, 1, 1, 2, 3, 4, 5, 0, 1, 2] * 4)
    shares = torch.bincount(truth, minlength=6).double() / len(truth)
    copy = ln.leak_null(truth.clone(), truth, permutations=500)
    assert copy["hits"] == copy["read"] == len(truth)
    # chance from the objects' own shares: accuracy 1 minus sum of the squared shares
    assert math.isclose(copy["leak_own_shares"], 1 - float((shares**2).sum()), rel_tol=1e-12)
    assert copy["perm_p"] == pytest.approx(1 / 501)  # no shuffle reaches every hit
    const = ln.leak_null(torch.zeros_like(truth), truth, permutations=200)
    # a reader blind to the object: its hits are the count of class 0 whatever the pairing
    assert const["hits"] == int((truth == 0).sum()) and const["null_hits_mean"] == const["hits"]
    assert const["perm_p"] == 1.0 and abs(const["leak_own_shares"]) < 1e-12


def test_unreadable_objects_count_in_the_leak_but_not_in_the_shuffle():
    truth = torch.tensor([0, 1, 2, 0])
    read = torch.tensor([0, -1, -2, 1])  # -1 unreadable, -2 disagree
    r = ln.leak_null(read, truth, permutations=50)
    assert (r["objects"], r["read"], r["hits"]) == (4, 2, 1)
    assert math.isclose(r["leak_prior"], float(leak(read, truth).mean()), rel_tol=1e-12)


def _sweep(tmp_path, reads, version=3, leak_of=None):
    n = len(reads)
    world = WorldConfig(version=version)
    truth = torch.tensor([max(back_class(split_seed("test", i), world), 0) for i in range(n)])
    meta = {"world_version": version, "split": "test", "objects": n, "eval_set": "tiny"}
    (tmp_path / "results.json").write_text(json.dumps({"meta": meta, "rows": []}))
    (tmp_path / "cells").mkdir()
    cell = {"model": "copier", "sampler": "euler", "steps": 4}
    (tmp_path / "cells" / "copier__euler__4__ab.json").write_text(json.dumps(cell))
    read = truth.clone() if reads == "copy" else torch.tensor(reads)
    per_leak = leak(read, truth if leak_of is None else leak_of)
    per_leak[0] = float("nan")  # an object whose back no view shows
    per = {"back_read": read, "unseen_leak": per_leak}
    torch.save({"per": per}, tmp_path / "cells" / "copier__euler__4__ab.pt")
    return truth


def test_cli_on_a_tiny_sweep_writes_json_and_md(tmp_path):
    _sweep(tmp_path, reads=[0] * 40)
    ln.main([str(tmp_path), "--permutations", "100"])
    res = json.loads((tmp_path / "leak_null.json").read_text())
    (row,) = res["rows"]
    assert row["objects"] == 39 and row["model"] == "copier" and row["perm_p"] == 1.0
    assert "| copier | euler | 4 | 39 |" in (tmp_path / "leak_null.md").read_text()


def test_cli_refuses_true_classes_that_do_not_reproduce_the_sweep(tmp_path):
    # the sweep's leak was computed against other classes (another split or world)
    _sweep(tmp_path, reads=[1] * 20, leak_of=torch.full((20,), 1))
    with pytest.raises(SystemExit, match="do not give the sweep's own leak figure"):
        ln.main([str(tmp_path), "--permutations", "10"])


def test_cli_refuses_a_world_without_back_classes(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"meta": {"world_version": 1}}))
    with pytest.raises(SystemExit, match="world version 1 has no back classes"):
        ln.main([str(tmp_path)])


def test_cli_refuses_a_sweep_without_back_reads(tmp_path):
    meta = {"world_version": 3, "split": "test", "objects": 4, "eval_set": "tiny"}
    (tmp_path / "results.json").write_text(json.dumps({"meta": meta, "rows": []}))
    (tmp_path / "cells").mkdir()
    with pytest.raises(SystemExit, match="no cell read the unseen side"):
        ln.main([str(tmp_path), "--permutations", "10"])
