import itertools

import pytest
import torch

from samplers.paths import (
    PREDICTIONS,
    convert,
    ddim_step,
    from_x0_eps,
    get_path,
    interpolate,
    to_x0_eps,
    velocity,
)

PATHS = ["linear", "cosine"]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.02, 0.3, 0.5, 0.77, 0.98], dtype=torch.float64)
    return x0, eps, t


@pytest.mark.parametrize("name", PATHS)
def test_endpoints(name):
    p = get_path(name)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(p.alpha(t), torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-15)
    assert torch.allclose(p.sigma(t), torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-15)


@pytest.mark.parametrize("name,src,dst", list(itertools.product(PATHS, PREDICTIONS, PREDICTIONS)))
def test_conversions_round_trip(name, src, dst):
    p = get_path(name)
    x0, eps, t = _batch()
    x_t = interpolate(p, x0, eps, t)
    pred = from_x0_eps(p, x0, eps, t, src)
    there = convert(p, pred, x_t, t, src, dst)
    back = convert(p, there, x_t, t, dst, src)
    assert torch.allclose(back, pred, atol=1e-6, rtol=0)
    # and every parametrization recovers the true (x0, eps)
    x0h, epsh = to_x0_eps(p, there, x_t, t, dst)
    assert torch.allclose(x0h, x0, atol=1e-6) and torch.allclose(epsh, eps, atol=1e-6)


@pytest.mark.parametrize("name,pred_type", list(itertools.product(PATHS, PREDICTIONS)))
def test_step_with_true_prediction_lands_on_path(name, pred_type):
    p = get_path(name)
    x0, eps, t = _batch(1)
    x_t = interpolate(p, x0, eps, t)
    s = t * 0.4
    pred = from_x0_eps(p, x0, eps, t, pred_type)
    x0h, epsh = to_x0_eps(p, pred, x_t, t, pred_type)
    x_s = ddim_step(p, x0h, epsh, s)
    assert torch.allclose(x_s, interpolate(p, x0, eps, s), atol=1e-12)


def test_linear_ddim_equals_euler_velocity_step():
    p = get_path("linear")
    x0, eps, t = _batch(2)
    # an arbitrary (wrong) model prediction: the identity must hold for any prediction
    v = torch.randn_like(x0)
    x_t = interpolate(p, x0, eps, t)
    x0h, epsh = to_x0_eps(p, v, x_t, t, "velocity")
    s = t - 0.25 * t
    ddim = ddim_step(p, x0h, epsh, s)
    euler = x_t + (s - t).reshape(-1, 1, 1, 1) * v
    assert torch.allclose(ddim, euler, atol=1e-12)


def test_velocity_is_time_derivative():
    for name in PATHS:
        p = get_path(name)
        x0, eps, t = _batch(3)
        h = 1e-6
        fd = (interpolate(p, x0, eps, t + h) - interpolate(p, x0, eps, t - h)) / (2 * h)
        assert torch.allclose(velocity(p, x0, eps, t), fd, atol=1e-6)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="linear, cosine"):
        get_path("edm")
    p = get_path("linear")
    x0, eps, t = _batch()
    with pytest.raises(ValueError, match="velocity, eps, x0, v"):
        from_x0_eps(p, x0, eps, t, "score")
