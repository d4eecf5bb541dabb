"""scripts/teacher_diagnosis.py resumes only what was measured with this run's settings."""

import json
from argparse import Namespace

import pytest
from tiny_util import script

diag = script("teacher_diagnosis")


def _args(**kw) -> Namespace:
    a = {
        "eval_count": 32,
        "train_count": 2000,
        "world_version": 3,
        "equal_time": True,
        "set": [],
        "sample_steps": 50,
    }
    a.update(kw)
    return Namespace(**a)


def _write(path, objects: int, reference_objects: int | None, variants: bool) -> None:
    ref = {"teacher": "shipped/teacher", "seen_psnr_view0": 22.5}
    if reference_objects is not None:
        ref["objects"] = reference_objects
    res = {
        "objects": objects,
        "train_count": 2000,
        "world_version": 3,
        "equal_time": True,
        "set": [],
        "sample_steps": 50,
        "reference": ref,
        "variants": {"v3@1200=time": {"steps": 618, "points": []}} if variants else {},
    }
    path.write_text(json.dumps(res))


def test_variants_of_other_settings_are_refused(tmp_path):
    p = tmp_path / "diagnosis.json"
    _write(p, objects=64, reference_objects=64, variants=True)
    with pytest.raises(SystemExit, match="objects 64 \\(now 32\\)"):
        diag._load_results(p, _args(), copy=20.0)
    # the same settings resume: the variant and the reference are kept
    res = diag._load_results(p, _args(eval_count=64), copy=20.0)
    assert list(res["variants"]) == ["v3@1200=time"]
    assert res["reference"]["objects"] == 64


@pytest.mark.parametrize("reference_objects", [64, None])
def test_reference_of_other_objects_is_measured_again(tmp_path, reference_objects):
    """A reference measured on 64 objects (or one that did not say) is dropped for a run on 32,
    so main() measures it again on this run's objects."""
    p = tmp_path / "diagnosis.json"
    _write(p, objects=64, reference_objects=reference_objects, variants=False)
    res = diag._load_results(p, _args(), copy=20.0)
    assert "reference" not in res
    assert res["objects"] == 32 and res["copy_psnr_view0"] == 20.0
