"""The teacher's objective: its velocity-space loss and its config errors."""

import pytest
import torch
from tiny_util import ROOT

from samplers.paths import get_path, interpolate


def test_teacher_velocity_loss_of_an_x0_network_is_x0_error_over_t_squared():
    """objective.loss_space=velocity: for an x0 network on the linear path the regressed
    difference is (x0_hat - x0) / max(t, t_min), so the loss is |x0 error|^2 / max(t, t_min)^2."""
    from distill.methods.base import Targets, in_velocity

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 3, 8, 8, generator=g), torch.randn(3, 4, 3, 8, 8, generator=g)
    t = torch.tensor([0.01, 0.3, 1.0])
    path = get_path("linear")
    x_t = interpolate(path, x0, eps, t)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g)
    tg = Targets(x_t=x_t, t=t, cond=torch.zeros(3, 3, 8, 8), target=x0)
    out, target = in_velocity(path, "x0", tg, x0_hat, 0.05)
    want = (x0 - x0_hat) / torch.tensor([0.05, 0.3, 1.0]).reshape(3, 1, 1, 1, 1)
    assert torch.allclose(out - target, want, atol=1e-5)
    # with t >= t_min the target is the true velocity eps - x0
    assert torch.allclose(target[1:], (eps - x0)[1:], atol=1e-5)


def test_unknown_teacher_loss_space_is_a_clear_error():
    from distill.teacher_cmd import train_teacher

    with pytest.raises(ValueError, match="objective.loss_space='x0'; valid: prediction, velocity"):
        train_teacher([str(ROOT / "configs/teacher/tiny.yaml"), "objective.loss_space=x0"])
