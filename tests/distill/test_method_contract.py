"""The method contract: what a student needs is declared on the method class, and its loss
(extra inputs, model spaces) is computed in one place."""

from dataclasses import asdict

import pytest
import torch

from distill.methods import METHODS
from distill.methods.base import CountingTeacher, Needs, Targets, student_loss, uncounted
from samplers.paths import convert, get_path
from students.module import StudentConfig


def test_needs_switch_on_inputs_without_touching_the_given_config():
    base = StudentConfig()
    cfg = Needs(second_time=True, boundary=True).student_config(base)
    assert cfg.second_time and cfg.boundary and not cfg.guidance_input
    assert asdict(base) == asdict(StudentConfig())  # not mutated
    # a user's own switch stays on when the method does not need it
    assert Needs().student_config(StudentConfig(guidance_input=True)).guidance_input


def test_needs_keep_the_teachers_path_and_prediction_unless_named():
    class T:
        path_name, prediction = "cosine", "eps"

    assert (Needs().student_path(T), Needs().student_prediction(T)) == ("cosine", "eps")
    n = Needs(path="linear", prediction="velocity")
    assert (n.student_path(T), n.student_prediction(T)) == ("linear", "velocity")


def test_every_method_declares_its_needs():
    wanted = {
        "consistency": Needs(prediction="x0", guidance_input=True, boundary=True),
        "meanflow": Needs(path="linear", prediction="velocity", second_time=True),
        "reflow": Needs(path="linear", prediction="velocity"),
        "shortcut": Needs(second_time=True),
        "scm": Needs(prediction="velocity"),
    }
    for name, cls in METHODS.items():
        assert cls.needs == wanted.get(name, Needs()), name
        assert not hasattr(cls, "student_setup"), name


class _Model(torch.nn.Module):
    """x0-predicting toy on the linear path: output = 2 x + s + w (missing inputs count 0)."""

    path_name, prediction = "linear", "x0"

    def forward(self, x, t, cond, s=None, w=None):
        out = 2 * x
        for extra in (s, w):
            if extra is not None:
                out = out + extra.reshape(-1, *([1] * (x.ndim - 1)))
        return out


def test_student_loss_feeds_extra_inputs_and_converts_to_the_target_space():
    m = _Model()
    x, t = torch.randn(3, 2, 1, 2, 2), torch.tensor([0.2, 0.5, 0.9])
    s, w = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 2.0, 3.0])
    target = torch.randn_like(x)
    tg = Targets(x_t=x, t=t, cond=torch.zeros(3, 3, 4, 4), target=target, s=s, w=w)
    out = 2 * x + (s + w).reshape(-1, 1, 1, 1, 1)
    assert student_loss(m, m, tg)["loss"] == pytest.approx(float(((out - target) ** 2).mean()))
    tg.space = "velocity"
    v = convert(get_path("linear"), out, x, t, "x0", "velocity")
    assert student_loss(m, m, tg)["loss"] == pytest.approx(float(((v - target) ** 2).mean()))


def test_uncounted_unwraps_the_counting_teacher_only():
    net = _Model()
    counted = CountingTeacher(net)
    counted(torch.zeros(4, 1, 1, 1, 1), torch.zeros(4), None)
    assert counted.nfe == 4
    assert uncounted(counted) is net and uncounted(net) is net
