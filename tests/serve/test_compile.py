"""The compiled one-step pipeline (torch.compile + channels-last, an option of serving and of
`distill bench compile`) gives the eager pipeline's outputs within float tolerance."""

import pytest
import torch
from tiny_util import make_serving

from distill.bench_compile import TOLERANCE, compare, max_diff
from serve.pipeline import Pipeline


@pytest.mark.slow
def test_compiled_pipeline_equals_eager_within_tolerance(tiny_teacher_dir, tmp_path):
    root = make_serving(tiny_teacher_dir, tmp_path)
    student = next(p for p in sorted((root / "students").iterdir()) if p.is_dir())
    eager = Pipeline.from_pretrained(student, root / "recon", device="cpu")
    compiled = Pipeline.from_pretrained(student, root / "recon", device="cpu").compile()
    assert compiled.compiled and not eager.compiled
    cond = torch.rand(2, 3, eager.image_size, eager.image_size) * 2 - 1
    try:
        out_c = compiled(cond, steps=eager.default_steps, seed=[0, 1])
    except Exception as e:  # noqa: BLE001  (no C++ compiler, an unsupported op: say which)
        pytest.skip(f"torch.compile cannot run here: {type(e).__name__}: {str(e)[:200]}")
    out_e = eager(cond, steps=eager.default_steps, seed=[0, 1])
    assert max_diff(out_e, out_c) <= TOLERANCE
    (row,) = compare(eager, compiled, [2], 1, eager.default_steps)  # the bench's measurement
    assert row["equal_within_tolerance"] and row["speedup"] > 0
