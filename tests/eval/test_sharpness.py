"""Sharpness that blur and grain cannot satisfy: the cases that fool the pooled ratio (blur plus
noise; a blurred view next to a noisy one) fail the per-view log error and the correlation with
the truth's detail."""

import torch
import torchvision.transforms.functional as TF

from eval.sharpness import hf_correlation, sharpness_log_error, sharpness_ratio
from scenes.samples import make_samples
from scenes.world import WorldConfig


def _truth():
    b = make_samples(list(range(6)), WorldConfig(image_size=32))
    views = b["targets"]  # [6, 4, 3, 32, 32] in [-1, 1]
    mask = (views < 0.98).any(2)  # the object's pixels (white background)
    return views, mask


def _blur(x, sigma):
    return TF.gaussian_blur(x.flatten(0, 1), 5, sigma).reshape(x.shape)


def _noise(x, std, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (x + 2 * std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def _matched(make, views, mask):
    """``make(std)`` at the noise level whose mean pooled ratio is 1 (bisection: the ratio grows
    with the noise): the degradation tuned to look like the truth's sharpness."""
    lo, hi = 0.0, 0.3
    for _ in range(30):
        mid = (lo + hi) / 2
        if sharpness_ratio(make(mid), views, mask).mean() < 1:
            lo = mid
        else:
            hi = mid
    return make((lo + hi) / 2)


def _pooled_passes(gen, views, mask):
    return abs(float(sharpness_ratio(gen, views, mask).mean()) - 1) < 0.02


def test_the_truth_is_perfect_on_both_figures():
    views, mask = _truth()
    assert torch.allclose(sharpness_log_error(views, views, mask), torch.zeros(6), atol=1e-9)
    assert torch.allclose(hf_correlation(views, views, mask), torch.ones(6, dtype=torch.float64))


def test_view_mixing_fools_the_pooled_ratio_but_not_the_per_view_error():
    views, mask = _truth()

    def make(std):  # a blurred view beside a noisy one
        mixed = views.clone()
        mixed[:, 0] = _blur(views[:, :1], 1.0)[:, 0]
        mixed[:, 2] = _noise(views[:, 2:3], std)[:, 0]
        return mixed

    mixed = _matched(make, views, mask)
    assert _pooled_passes(mixed, views, mask)  # the old figure calls it the truth's sharpness
    assert (sharpness_log_error(mixed, views, mask) > 0.2).all()  # 0 for the truth


def test_blur_plus_noise_fools_the_pooled_ratio_but_not_the_correlation():
    views, mask = _truth()
    blurred = _blur(views, 1.0)
    fooled = _matched(lambda std: _noise(blurred, std), views, mask)
    assert _pooled_passes(fooled, views, mask)
    clean = hf_correlation(views, views, mask)
    assert (hf_correlation(fooled, views, mask) < clean - 0.3).all()


def test_noise_is_not_detail():
    views, mask = _truth()
    noisy = _noise(views, 0.05)
    assert (sharpness_ratio(noisy, views, mask) > 1).all()  # more energy ...
    assert (hf_correlation(noisy, views, mask) < 0.9).all()  # ... but not the truth's
