"""sCM (continuous-time consistency distillation in TrigFlow) on the lab's paths: the exact
conversions, the sCD tangent against closed forms and finite differences on Gaussian data, the
boundary, the adaptive weight, and a smoke run of the CLI."""

import math
import subprocess
from types import SimpleNamespace

import pytest
import torch
from tiny_util import ROOT, smoke_train_args

from distill.methods.scm import SCM, LogWeight, SCMConfig, normalise_tangent, scm_tangent
from distill.methods.trigflow import (
    F_per_velocity,
    consistency_fn,
    lab_time,
    trig_angle,
    trig_F,
    trig_scale,
    trig_velocity,
)
from samplers.paths import from_x0_eps, get_path, interpolate, to_x0_eps

PATHS = ["linear", "cosine"]
SD = 0.5  # sigma_d
MU, S = 0.3, 0.8  # the Gaussian data N(MU, S^2) per coordinate


def _b(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _method(path="linear", **cfg):
    return SCM(SCMConfig(**cfg), SimpleNamespace(path=get_path(path), teacher=None))


@pytest.mark.parametrize("name", PATHS)
def test_lab_time_and_trig_angle_round_trip(name):
    path = get_path(name)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    tau = trig_angle(path, t, SD)
    assert tau[0] == 0 and tau[-1] == pytest.approx(math.pi / 2, abs=1e-15)
    assert torch.allclose(lab_time(path, tau, SD), t, atol=1e-14, rtol=0)
    tau = torch.linspace(0, math.pi / 2, 101, dtype=torch.float64)
    assert torch.allclose(trig_angle(path, lab_time(path, tau, SD), SD), tau, atol=1e-14, rtol=0)
    # the same noise level: sigma / alpha = sigma_d tan(tau)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    ratio = path.sigma(t) / path.alpha(t)
    assert torch.allclose(ratio, SD * torch.tan(trig_angle(path, t, SD)), rtol=1e-12)


def _posterior(path, x, t):
    """Exact (E[x0 | x_t], E[eps | x_t]) on the lab path for the data N(MU, S^2)."""
    a, s = _b(path.alpha(t), x), _b(path.sigma(t), x)
    x0 = MU + a * S**2 * (x - a * MU) / (a**2 * S**2 + s**2)
    return x0, (x - a * x0) / s


@pytest.mark.parametrize("name", PATHS)
def test_point_and_velocity_conversions_are_exact_on_a_gaussian(name):
    path, g = get_path(name), torch.Generator().manual_seed(0)
    t = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=torch.float64)
    tau = trig_angle(path, t, SD)
    x0 = MU + S * torch.randn(4, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x_t = interpolate(path, x0, eps, t)
    x_tau = _b(torch.cos(tau), x0) * x0 + _b(torch.sin(tau), x0) * SD * eps
    assert torch.allclose(x_t, _b(trig_scale(path, t, SD), x_t) * x_tau, atol=1e-14)
    # the lab denoiser's TrigFlow velocity = TrigFlow's own PF-ODE velocity for this data
    ex0, eeps = _posterior(path, x_t, t)
    c, s = _b(torch.cos(tau), x0), _b(torch.sin(tau), x0)
    ex0_trig = MU + c * S**2 * (x_tau - c * MU) / (c**2 * S**2 + s**2 * SD**2)
    ez = (x_tau - c * ex0_trig) / s
    assert torch.allclose(trig_velocity(ex0, eeps, tau, SD), -s * ex0_trig + c * ez, atol=1e-12)
    # ... and the chain rule of x_tau(tau) = x_t(t(tau)) / k(t(tau)) along fixed (x0, eps)
    h = 1e-6

    def point(tt):
        ts = lab_time(path, tt, SD)
        return interpolate(path, x0, eps, ts) / _b(trig_scale(path, ts, SD), x0)

    fd = (point(tau + h) - point(tau - h)) / (2 * h)
    assert torch.allclose(trig_velocity(x0, eps, tau, SD), fd, atol=1e-8)
    # F is affine in a velocity output v, with slope F_per_velocity
    v = from_x0_eps(path, ex0, eeps, t, "velocity")
    dv = torch.randn(4, 3, generator=g, dtype=torch.float64)
    F0, F1 = (trig_F(*to_x0_eps(path, u, x_t, t, "velocity"), tau, SD) for u in (v, v + dv))
    assert torch.allclose(F1 - F0, _b(F_per_velocity(path, t, SD), dv) * dv, atol=1e-12)
    # the consistency function of a denoiser's F is its x0
    F = trig_F(ex0, eeps, tau, SD)
    assert torch.allclose(consistency_fn(x_tau, F, tau, SD), ex0, atol=1e-12)


class _GaussianModel(torch.nn.Module):
    """A velocity model on the lab path whose x0 estimate is the consistency function of the
    data N(MU, ``scale``^2) in TrigFlow (exact for scale = S): the standardised point
    (x_tau - cos MU) / sqrt(cos^2 scale^2 + sin^2 sigma_d^2) is constant along its PF-ODE."""

    prediction = "velocity"

    def __init__(self, name, scale):
        super().__init__()
        self.path_name, self.scale = name, scale

    def forward(self, x, t, cond):
        path, t = get_path(self.path_name), t.double()
        tau = trig_angle(path, t, SD)
        x_tau = x / _b(trig_scale(path, t, SD), x)
        c, s = _b(torch.cos(tau), x), _b(torch.sin(tau), x)
        f = MU + self.scale * (x_tau - c * MU) / torch.sqrt(c**2 * self.scale**2 + s**2 * SD**2)
        return from_x0_eps(
            path, f, (x - _b(path.alpha(t), x) * f) / _b(path.sigma(t), x), t, "velocity"
        )


def _flow_point(name, n=5, seed=1):
    """(x_tau, tau, dx_tau/dtau of the exact Gaussian PF-ODE) at random points."""
    path, g = get_path(name), torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.8 + 0.1
    tau = trig_angle(path, t, SD)
    x_t = MU + 1.3 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    x_tau = x_t / _b(trig_scale(path, t, SD), x_t)
    dx = trig_velocity(*_posterior(path, x_t, t), tau, SD)
    return x_tau, tau, dx


def _tangent(m, model, x_tau, tau, dx, r=1.0):
    cs = torch.cos(tau) * torch.sin(tau)
    F, jvp, _ = m.trig_jvp(model, x_tau, tau, None, _b(cs, dx) * dx, cs)
    return scm_tangent(F, jvp, dx, x_tau, tau, SD, r), F


@pytest.mark.parametrize("name", PATHS)
def test_scd_tangent_vanishes_for_the_exact_consistency_function(name):
    m = _method(name)
    x_tau, tau, dx = _flow_point(name)
    g, _ = _tangent(m, _GaussianModel(name, S), x_tau, tau, dx)
    assert g.abs().max() < 1e-10  # df/dtau = 0 along the teacher's flow


@pytest.mark.parametrize("name", PATHS)
def test_scd_tangent_is_cos_tau_times_the_total_derivative_of_f(name):
    """A student with the wrong data scale: g = cos(tau) df/dtau along the teacher's flow, f its
    x0 estimate (a central difference); the warm-up's r scales the second term only."""
    m, model, path = _method(name), _GaussianModel(name, 0.5 * S), get_path(name)
    x_tau, tau, dx = _flow_point(name)

    def f(x, tt):
        t = lab_time(path, tt, SD)
        x_t = x * _b(trig_scale(path, t, SD), x)
        return to_x0_eps(path, model(x_t, t, None), x_t, t, "velocity")[0]

    h = 1e-5
    fd = (f(x_tau + h * dx, tau + h) - f(x_tau - h * dx, tau - h)) / (2 * h)
    g, F = _tangent(m, model, x_tau, tau, dx)
    assert fd.abs().max() > 0.1  # a real derivative, not zero
    assert torch.allclose(g, _b(torch.cos(tau), fd) * fd, atol=1e-7)
    c = _b(torch.cos(tau), F)
    g0, _ = _tangent(m, model, x_tau, tau, dx, r=0.0)
    assert torch.allclose(g0, -c * c * (SD * F - dx), atol=1e-12)
    g_half, _ = _tangent(m, model, x_tau, tau, dx, r=0.5)
    assert torch.allclose(g_half, 0.5 * (g + g0), atol=1e-12)


def test_tangent_normalisation():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.03, 0.04]], dtype=torch.float64)
    out = normalise_tangent(g, 0.1)
    assert torch.allclose(out[0], g[0] / 5.1) and torch.equal(out[1], g[1])
    assert torch.allclose(out[2], g[2] / 0.15)
    assert torch.allclose(normalise_tangent(g, 0.1, "rms")[0], g[0] / (5 / 2**0.5 + 0.1))


def test_adaptive_weight_learns_the_inverse_loss():
    """w_phi minimises e^w L - w: e^w -> 1 / L at every time (here L = 0.01 tan(tau)^0.5)."""
    m = _method()
    m.weight = LogWeight(16, 0.0)
    m.weight_opt = torch.optim.Adam(m.weight.parameters(), lr=0.1)
    tau = torch.linspace(0.05, 1.5, 32, dtype=torch.float64)
    loss = 0.01 * torch.tan(tau) ** 0.5
    for _ in range(300):
        w = m.adapt_weight(tau, loss)
    assert torch.allclose(w, -torch.log(loss), atol=0.1)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="method.steps"):
        _method(steps=[4])
    with pytest.raises(ValueError, match="method.mid_angle"):
        _method(mid_angle=2.0)
    with pytest.raises(ValueError, match="method.tangent_norm"):
        _method(tangent_norm="max")
    with pytest.raises(ValueError, match="no TrigFlow conversion"):
        SCM(SCMConfig(), SimpleNamespace(path=SimpleNamespace(name="edm")))


def test_sampling_times_are_the_papers_angles():
    m = _method()
    m.top_time = lambda: 1.0
    times = m.sampling_times()
    assert times["1"] == [1.0, 0.0] and times["2"][0] == 1.0 and times["2"][2] == 0.0
    mid = times["2"][1]  # tau = 1.1 on the linear path: t / (1 - t) = sigma_d tan(1.1)
    assert mid / (1 - mid) == pytest.approx(SD * math.tan(1.1), rel=1e-12)


@pytest.mark.parametrize("kind", ["tiny_teacher_dir", "tiny_x0_teacher_dir"])
def test_boundary_is_the_identity_at_t0(kind, request):
    """The student's consistency function (its x0 estimate) at t = 0 is the identity, for a
    velocity teacher and for an x0 teacher read as a velocity student."""
    from students.module import Student, StudentConfig
    from teachers.io import load_teacher

    teacher = load_teacher(request.getfixturevalue(kind))
    st = Student(teacher, StudentConfig(), prediction=SCM.needs.prediction)
    x = torch.randn(2, *teacher.noise_shape(), generator=torch.Generator().manual_seed(0))
    cond, t = torch.zeros(2, 3, 16, 16), torch.zeros(2)
    with torch.no_grad():
        x0, _ = to_x0_eps(get_path(st.path_name), st(x, t, cond), x, t, "velocity")
    assert torch.equal(x0, x)
    assert torch.equal(consistency_fn(x, torch.randn_like(x), t.double(), SD), x)


def test_smoke_train_and_sample(tiny_x0_teacher_dir, tiny_data_root, tmp_path):
    """Two updates of `distill train --method scm` on the tiny x0 teacher (the shipped kind):
    the student loads, samples 1 and 2 steps on the card's times, and its loss log is finite."""
    from samplers.sampling import time_grid
    from students.folder import LoadedStudent

    run = tmp_path / "run"
    args = smoke_train_args("scm", tiny_x0_teacher_dir, run, tiny_data_root, 12, "eval_count=0")
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    st = LoadedStudent.from_pretrained(run / "student")
    card = st.card
    assert (card.method, card.sampler, card.steps) == ("scm", "consistency", [1, 2])
    assert card.prediction == "velocity" and card.method_info["sigma_data"] == 0.5
    times = card.method_info["sampling_times"]
    assert torch.equal(st.sampling_times(2), torch.tensor(times["2"], dtype=torch.float32))
    assert times["2"][1] == pytest.approx(
        float(lab_time(get_path("linear"), torch.tensor(1.1), 0.5))
    )
    assert card.train_cost["network_passes"]["student_jvp"] == 2 * 2  # the JVP is a pass
    lines = (run / "losses.csv").read_text().splitlines()
    assert len(lines) == 3 and all(math.isfinite(float(v)) for v in lines[-1].split(",")[3:] if v)
    cond = torch.rand(2, 3, 16, 16) * 2 - 1
    for steps in (1, 2):
        views, nfe = st.sample(cond, steps, [0, 1])
        assert nfe == steps and torch.isfinite(views).all()
    # a card without its own times samples on the grid every student uses
    card.method_info = {}
    assert torch.equal(st.sampling_times(2), time_grid(2, 1.0, st.start_time))
