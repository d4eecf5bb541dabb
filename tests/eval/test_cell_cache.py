"""The sweep's cell cache: one file pair per (model, sampler, steps, key), whatever the name."""

import torch

from eval.cells import CellCache


def test_dotted_model_names_keep_one_cell_per_step_count(tmp_path):
    """A budget's student is named like ``finetune_x0.5``: its cells at 1, 2 and 4 steps are
    three cells (a suffix taken from the name would make them one file, and a cell of another
    step count would be read back as this one's)."""
    cache = CellCache(tmp_path)
    for steps in (1, 2, 4):
        row = {"model": "finetune_x0.5", "steps": steps}
        cache.save("finetune_x0.5", "euler", steps, f"k{steps}", row, {"psnr": [steps]},
                   torch.zeros(1, 3, 2, 2))  # fmt: skip
    assert len(list(tmp_path.glob("*.json"))) == 3 and len(list(tmp_path.glob("*.pt"))) == 3
    for steps in (1, 2, 4):
        row, per, views = cache.load("finetune_x0.5", "euler", steps, f"k{steps}")
        assert row["steps"] == steps and per["psnr"] == [steps] and views.shape == (1, 3, 2, 2)
    assert cache.load("finetune_x0.5", "euler", 8, "k8") is None
