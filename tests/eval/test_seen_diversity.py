"""scripts/seen_diversity.py: the probe telling averaging from fidelity, on known answers."""

import math

import torch
from tiny_util import script

sd = script("seen_diversity")


def _truth():
    t = torch.ones(2, 3, 4, 4)  # white background
    t[:, :, 1:3, 1:3] = 0.0  # a 2x2 grey object
    return t


def test_identical_seeds_have_no_diversity_and_equal_psnrs():
    truth = _truth()
    views = (truth + 0.1).unsqueeze(1).repeat(1, 3, 1, 1, 1)  # every seed the same, off by 0.1
    r = sd.probe(views, truth)
    assert r["seed_std"] == 0.0
    # error 0.1 in [-1, 1] = 0.05 in [0, 1]: 20 log10(1 / 0.05)
    assert math.isclose(r["psnr_per_sample"], 20 * math.log10(20), rel_tol=1e-5)
    assert math.isclose(r["psnr_of_seed_mean"], r["psnr_per_sample"], rel_tol=1e-6)


def test_seeds_scattered_around_the_truth_average_to_it():
    truth = _truth()
    views = torch.stack([truth + 0.2, truth - 0.2], 1)  # two seeds, +-0.1 in [0, 1] units
    r = sd.probe(views, truth)
    assert math.isclose(r["psnr_per_sample"], 20.0, rel_tol=1e-5)  # 20 log10(1 / 0.1)
    assert r["psnr_of_seed_mean"] > 100  # the mean is the truth
    # std over two seeds (unbiased) of +-0.1: 0.1 * sqrt(2); only object pixels count
    assert math.isclose(r["seed_std"], 0.1 * math.sqrt(2), rel_tol=1e-5)


def test_background_pixels_do_not_count():
    truth = _truth()
    views = truth.unsqueeze(1).repeat(1, 2, 1, 1, 1)
    views[:, 1, :, 0, 0] = -1.0  # a background pixel changed in one seed
    r = sd.probe(views, truth)
    assert r["seed_std"] == 0.0 and r["psnr_of_seed_mean"] > 100
