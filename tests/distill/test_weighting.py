"""Each method weighted as its paper weights it, on flows with known answers; advertised step
counts that are trained levels; every network pass in the cost (issue 25)."""

import json
import math
import subprocess
from types import SimpleNamespace

import pytest
import torch
from tiny_util import ROOT, method_context, smoke_train_args

from distill.methods import get_method
from distill.methods.base import Targets, regression_loss, student_loss
from distill.methods.couplings import coupling_objects, make_couplings
from distill.methods.progressive import truncated_snr
from samplers.paths import get_path, to_x0_eps
from scenes.data import WorldDataset
from students.module import Student, StudentConfig
from teachers.io import load_teacher

LIN = get_path("linear")
B5 = (-1, 1, 1, 1, 1)


class _Field(torch.nn.Module):
    """A model given by fn(z, t, r) (t, r broadcast per sample), sampled like a student."""

    def __init__(self, fn, prediction="velocity"):
        super().__init__()
        self.fn, self.path_name, self.prediction = fn, "linear", prediction

    def forward(self, z, t, cond, s=None, **kw):
        r = None if s is None else s.reshape(B5)
        return self.fn(z, t.reshape(B5), r)


def _data(m, x0):
    m.batch = lambda gen: {"targets": x0, "cond": torch.zeros(len(x0), 3, 16, 16)}


def test_meanflow_curved_flow_target_is_the_exact_average_velocity_and_weight_is_adaptive(
    tiny_teacher_dir, tiny_data_root
):
    """dz/dt = z: z_r = z_t e^(r - t), so the average velocity over [r, t] is
    u = z (1 - e^(r - t)) / (t - r), and du/dt along the flow is not 0: a wrong sign or scale of
    the (t - r) du/dt term moves the target off u. The loss is Geng et al.'s sg(w) ||delta||^2,
    w = 1 / (||delta||^2 + 1e-3)."""
    cls = get_method("meanflow")
    m = cls(
        cls.Config(r_fraction=1.0), method_context(load_teacher(tiny_teacher_dir), tiny_data_root)
    )
    m.ctx.teacher, m.ctx.path, m.ctx.prediction = _Field(lambda z, t, r: z), LIN, "velocity"
    x0 = torch.randn(4, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    _data(m, x0)
    exact = _Field(lambda z, t, r: z * -torch.expm1(r - t) / (t - r))
    tg = m.targets(exact, torch.Generator().manual_seed(2))
    assert torch.all(tg.s < tg.t)
    h = (tg.t - tg.s).reshape(B5)
    truth = tg.x_t * -torch.expm1(-h) / h
    assert torch.allclose(tg.target, truth, rtol=1e-3, atol=1e-4)
    assert (truth - tg.x_t).abs().max() > 0.05  # a curved flow: u differs from v = z
    # the adaptive weight: value and gradient of sg(w) * mse
    assert (tg.adaptive_p, tg.adaptive_c) == (1.0, 1e-3)
    out = (tg.target + 0.1 * torch.randn_like(tg.target)).requires_grad_(True)
    loss = regression_loss(out, tg)["loss"]
    mse = ((out - tg.target) ** 2).flatten(1).mean(1)
    assert loss.item() == pytest.approx(float((mse / (mse + 1e-3)).mean().detach()), rel=1e-5)
    (g,) = torch.autograd.grad(loss, out)
    (g_plain,) = torch.autograd.grad(mse.mean(), out)
    assert torch.allclose(g, g_plain / (mse.detach() + 1e-3).reshape(B5), rtol=1e-4, atol=1e-9)
    plain = cls(cls.Config(adaptive_p=0.0), m.ctx)
    _data(plain, x0)
    assert plain.targets(exact, torch.Generator().manual_seed(2)).adaptive_p == 0.0
    with pytest.raises(ValueError, match="adaptive_c"):
        cls(cls.Config(adaptive_c=0.0), m.ctx)


def test_shortcut_two_level_bootstrap_and_floored_x0_loss(tiny_teacher_dir, tiny_data_root):
    """EMA field v(x, t, h) = a x + b t + c h: the bootstrap target of step d is the mean of
    v(x_t, t, d/2) and v at the mid-point x_t - (d/2) v1, time t - d/2, step d/2. An x0 student's
    loss is the velocity error weighted by (t / max(t, 0.05))^2 (no 1/t^2 blow-up)."""
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("shortcut")
    M = 8
    m = cls(
        cls.Config(bootstrap_fraction=1.0, max_steps=M), method_context(t, tiny_data_root, batch=16)
    )
    a, b, c = 0.7, -1.3, 2.9
    m.ema = SimpleNamespace(module=_Field(lambda x, tt, h: a * x + b * tt + c * h))
    tg = m.targets(None, torch.Generator().manual_seed(3))
    h, tt = (tg.s / 2).reshape(B5), tg.t.reshape(B5)
    v1 = a * tg.x_t + b * tt + c * h
    v2 = a * (tg.x_t - h * v1) + b * (tt - h) + c * h
    assert torch.allclose(tg.target, 0.5 * (v1 + v2), atol=1e-5)
    assert len(set(tg.s.tolist())) > 1 and m.passes["target_forward"] == 2 * 16
    # the floored loss of an x0 student, converted by hand
    tg = Targets(
        x_t=torch.randn(3, 2, 1, 2, 2),
        t=torch.tensor([1 / 128, 0.05, 0.5]),
        cond=torch.zeros(3, 3, 4, 4),
        target=torch.randn(3, 2, 1, 2, 2),
        space="velocity",
        t_min=m.cfg.t_min,
    )
    x0_hat = torch.randn(3, 2, 1, 2, 2)
    student = _Field(lambda z, tt, r: x0_hat, prediction="x0")
    v_err = (tg.x_t - x0_hat) / tg.t.reshape(B5) - tg.target
    w = (tg.t / tg.t.clamp(min=0.05)) ** 2
    want = (w * (v_err**2).flatten(1).mean(1)).mean()
    assert m.cfg.t_min == 0.05
    assert student_loss(student, student, tg)["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    velocity_student = _Field(lambda z, tt, r: tg.target, prediction="velocity")
    assert student_loss(velocity_student, velocity_student, tg)["loss"].item() < 1e-12


def _gaussian_x0(x_t, t, mu):
    """E[x0 | x_t] for x0 ~ N(mu, 1) per dimension on the linear path."""
    a, s = 1 - t, t
    return mu + a / (a * a + s * s) * (x_t - a * mu)


def test_dmd2_step_on_gaussians_has_the_papers_magnitude(tiny_teacher_dir, tiny_data_root):
    """Data N(0, 1), generator N(mu, 1): fake - real = mu s^2 / (a^2 + s^2) exactly, so the
    target's shift x_hat - target is 0.5 (fake - real) / mean|x_hat - real|, DMD2's
    0.5 ||x - sg(x - grad)||^2 (tianweiy/DMD2 main/sd_guidance.py)."""
    cls = get_method("dmd2")
    cfg = cls.Config(fake_lora_rank=4, t_min=0.3, t_max=0.7)
    m = cls(cfg, method_context(load_teacher(tiny_teacher_dir), tiny_data_root))
    mu, seen = 1.5, {}

    def recording(name, mean):
        def fn(z, t, r):
            seen[name] = (z.clone(), t.flatten().clone())
            return _gaussian_x0(z, t, mean)

        return _Field(fn, prediction="x0")

    m.ctx.teacher, m.ctx.path, m.ctx.prediction = recording("real", 0.0), LIN, "x0"
    m.fake = recording("fake", mu)
    m._fake_update = lambda student, gen: 0.0
    _data(m, torch.zeros(4, 4, 3, 16, 16))

    class Generator(_Field):
        def noise_shape(self):
            return (4, 3, 16, 16)

    gen = Generator(lambda z, t, r: mu + z, prediction="x0")
    tg = m.targets(gen, torch.Generator().manual_seed(4))
    x_hat = mu + tg.x_t  # one step from pure noise
    noisy, tau = seen["real"]
    real = _gaussian_x0(noisy, tau.reshape(B5), 0.0)
    a, s = 1 - tau, tau
    gap = (mu * s * s / (a * a + s * s)).reshape(B5)
    norm = (x_hat - real).abs().flatten(1).mean(1).reshape(B5)
    assert torch.allclose(x_hat - tg.target, 0.5 * gap / norm, rtol=1e-4, atol=1e-6)
    assert m.passes["fake_forward"] == 4 and m.passes["student_forward"] == 4


def test_reflow_couplings_span_train_count_and_cache_per_setting(
    tiny_teacher_dir, tiny_data_root, tmp_path
):
    t = load_teacher(tiny_teacher_dir)
    ds = WorldDataset(tiny_data_root, "train")
    kw = dict(steps=1, batch=2, guidance=1.0, progress=False)
    a = make_couplings(t, ds, tmp_path / "c", count=4, seed=7, objects=12, **kw)
    assert a["index"].tolist() == coupling_objects(4, 12, 7).tolist()
    assert int(a["index"].max()) >= 4  # not the first 4 objects (i mod count)
    both = coupling_objects(24, 12, 7)  # each object twice, coupling i fixed whatever count
    assert sorted(both.tolist()) == sorted(list(range(12)) * 2)
    assert both[:4].tolist() == a["index"].tolist()
    # another seed or train_count in the same folder makes new shards
    b = make_couplings(t, ds, tmp_path / "c", count=4, seed=8, objects=12, **kw)
    c = make_couplings(t, ds, tmp_path / "c", count=4, seed=7, objects=5, **kw)
    assert not torch.equal(a["eps"], b["eps"]) and int(c["index"].max()) < 5
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 6


def test_reflow_one_step_student_averages_the_distillation_stage_only(
    tiny_teacher_dir, tiny_data_root
):
    cls = get_method("reflow")
    ctx = method_context(load_teacher(tiny_teacher_dir), tiny_data_root, steps=10, ema_decay=0.99)
    m = cls(cls.Config(distill_steps=3), ctx)
    net = torch.nn.Linear(1, 1, bias=False)
    m.student = net
    for step in range(1, 11):  # updates 8, 9, 10 distil
        with torch.no_grad():
            net.weight.fill_(1.0 if step > 7 else -5.0)
        m.on_step(step, net)
    final = m.final_ema("the loop's EMA")
    assert torch.equal(final.shadow["weight"], torch.ones(1, 1))  # no pre-distillation share
    assert cls(cls.Config(distill_steps=0), ctx).final_ema("the loop's EMA") == "the loop's EMA"


def test_progressive_truncated_snr_weight(tiny_teacher_dir, tiny_data_root):
    """max(alpha^2 / sigma^2, 1): 49 at t = 1/8 on the linear path; the student's loss is that
    weight times its x0 error (a velocity student here); round teachers are counted."""
    t = load_teacher(tiny_teacher_dir)
    assert truncated_snr(LIN, torch.tensor([1 / 8, 0.5, 1.0])).tolist() == [49.0, 1.0, 1.0]
    cls = get_method("progressive")
    m = cls(cls.Config(start_steps=16), method_context(t, tiny_data_root, batch=32))
    student = Student(t, StudentConfig())
    tg = m.targets(student, torch.Generator().manual_seed(5))
    snr = ((1 - tg.t) / tg.t).pow(2).clamp(min=1)
    assert torch.allclose(tg.weight, snr * tg.t**2)  # x0 error = -t * velocity error
    assert (tg.t == 1 / 8).any() and torch.allclose(tg.weight[tg.t == 1 / 8], torch.tensor(49 / 64))
    with torch.no_grad():
        out = student(tg.x_t, tg.t, tg.cond)
        x0_hat = to_x0_eps(LIN, out, tg.x_t, tg.t, "velocity")[0]
        x0_tg = to_x0_eps(LIN, tg.target, tg.x_t, tg.t, "velocity")[0]
        want = (snr * ((x0_hat - x0_tg) ** 2).flatten(1).mean(1)).mean()
        assert student_loss(student, student, tg)["loss"].item() == pytest.approx(
            want.item(), rel=1e-4
        )
    m.prepare(student)
    m._set_round_teacher(student.trainable_state())
    m.targets(student, torch.Generator().manual_seed(6))
    assert m.passes["round_teacher_forward"] == 2 * 32


def test_advertised_steps_must_be_trained(tiny_teacher_dir, tiny_data_root):
    ctx = method_context(load_teacher(tiny_teacher_dir), tiny_data_root)
    sc = get_method("shortcut")
    assert sc(sc.Config(max_steps=8), ctx).steps() == [1, 2, 4, 8]
    assert sc(sc.Config(), ctx).steps() == [1, 2, 4, 8, 16]
    for bad in ([1, 16], [3]):
        with pytest.raises(ValueError, match=rf"method.steps \[{bad[-1]}\]"):
            sc(sc.Config(max_steps=8, steps=bad), ctx)
    cs = get_method("consistency")
    assert cs(cs.Config(grid=4), ctx).steps() == [1, 2, 4]
    with pytest.raises(ValueError, match=r"method.steps \[8\] do not divide method.grid=4"):
        cs(cs.Config(grid=4, steps=[1, 8]), ctx)
    dm = get_method("dmd2")
    assert dm(dm.Config(generator_steps=4), ctx).steps() == [4]


def test_finetune_uses_the_teachers_recorded_objective(tiny_teacher_dir, tiny_data_root):
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("finetune")
    t.record = dict(t.record or {}, train_config={"objective": {"loss_space": "velocity"}})
    m = cls(cls.Config(), method_context(t, tiny_data_root))
    tg = m.targets(None, torch.Generator().manual_seed(7))
    assert (tg.space, tg.t_min) == ("velocity", 0.05)
    t.record = {"multiview": {}}  # an external teacher: its own prediction type
    tg = cls(cls.Config(), method_context(t, tiny_data_root)).targets(
        None, torch.Generator().manual_seed(7)
    )
    assert (tg.space, tg.t_min) == ("raw", 0.0)


def test_cost_counts_every_network_pass_on_a_two_update_run(
    tiny_teacher_dir, tiny_data_root, tmp_path
):
    """progressive 4 -> 2 -> 1 steps, batch 2, one update per round: update 1 calls the lab
    teacher twice per row (4), update 2 the round-1 student twice per row (4); the loop runs
    2 x 2 student forwards and backwards."""
    args = smoke_train_args("progressive", tiny_teacher_dir, tmp_path / "run", tiny_data_root, 12)
    r = subprocess.run(
        [*args, "eval_count=0"], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    cost = json.loads((tmp_path / "run" / "train_cost.json").read_text())
    want = {
        "teacher_forward": 4,
        "student_forward": 4,
        "student_backward": 4,
        "student_jvp": 0,
        "target_forward": 0,
        "round_teacher_forward": 4,
        "fake_forward": 0,
        "fake_backward": 0,
    }
    assert cost["network_passes"] == want and cost["teacher_nfe"] == 4
    assert cost["student_passes"] == 16 and not math.isnan(cost["wall_s"])
