"""Each method's targets on tiny tensors with known answers."""

from types import SimpleNamespace

import pytest
import torch
from tiny_util import method_context, student_inputs

from distill.methods import METHODS, get_method
from distill.methods.couplings import make_couplings
from distill.methods.progressive import two_step_target
from samplers.paths import ddim_step, get_path, interpolate, to_x0_eps, velocity
from samplers.sampling import generate
from scenes.data import WorldDataset
from students.module import Student, StudentConfig
from teachers.io import load_teacher


def test_shortcut_smallest_step_target_is_teacher_velocity(tiny_teacher_dir, tiny_data_root):
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("shortcut")
    m = cls(cls.Config(bootstrap_fraction=0.0), method_context(t, tiny_data_root))
    student = Student(t, StudentConfig(second_time=True))
    m.prepare(student)
    tg = m.targets(student, torch.Generator().manual_seed(3))
    assert torch.all(tg.s == 1 / m.cfg.max_steps) and tg.space == "velocity"  # the finest level
    assert torch.all(tg.t >= 1 / m.cfg.max_steps)
    with torch.no_grad():
        x0, eps = to_x0_eps(get_path("linear"), t(tg.x_t, tg.t, tg.cond), tg.x_t, tg.t, "velocity")
    assert torch.allclose(tg.target, velocity(get_path("linear"), x0, eps, tg.t), atol=1e-6)


def test_shortcut_bootstrap_of_constant_velocity_is_that_velocity(tiny_teacher_dir, tiny_data_root):
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("shortcut")
    m = cls(cls.Config(bootstrap_fraction=1.0), method_context(t, tiny_data_root))
    v = torch.randn(4, 3, 16, 16)

    class Constant(torch.nn.Module):
        path_name, prediction = "linear", "velocity"

        def forward(self, x, t, cond, s=None):
            return v.expand_as(x)

    m.ema = SimpleNamespace(module=Constant())
    tg = m.targets(None, torch.Generator().manual_seed(4))
    assert torch.all(tg.s >= 2 / m.cfg.max_steps) and torch.all(tg.t - tg.s >= -1e-6)
    assert torch.allclose(tg.target, v.expand_as(tg.target), atol=1e-6)


def test_shortcut_half_steps_land_on_trained_levels(tiny_teacher_dir, tiny_data_root):
    """Every step size the EMA student is asked for is one the student trains: the flow part's
    1/M or a bootstrap level 2^j/M; the smallest bootstrap level's half steps are exactly 1/M."""
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("shortcut")
    M = 8
    m = cls(
        cls.Config(bootstrap_fraction=1.0, max_steps=M), method_context(t, tiny_data_root, batch=64)
    )
    asked = []

    class Recorder(torch.nn.Module):
        path_name, prediction = "linear", "velocity"

        def forward(self, x, t, cond, s=None):
            asked.append(s.clone())
            return torch.zeros_like(x)

    m.ema = SimpleNamespace(module=Recorder())
    tg = m.targets(None, torch.Generator().manual_seed(5))
    trained = {1 / M} | {2**j / M for j in range(1, 4)}  # flow level and bootstrap levels
    half = torch.cat(asked)
    assert set(half.tolist()) <= trained
    assert torch.allclose(half[tg.s[: len(tg.s)].repeat(2) == 2 / M], torch.tensor(1 / M))
    assert (tg.s == 2 / M).any()  # the smallest bootstrap level was drawn


def test_consistency_target_in_closed_form(tiny_teacher_dir, tiny_data_root):
    """With a teacher that knows x0 = c exactly and an identity target network, the target is
    the point of the true ODE at t - 1/N: alpha(t') c + sigma(t') eps."""
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("consistency")
    N = 4
    cfg = cls.Config(grid=N, w_min=1.0, w_max=1.0, sample_w=1.0)
    c = torch.randn(3, 16, 16).expand(4, 4, 3, 16, 16).clone()

    class Exact(torch.nn.Module):  # linear path, velocity = (x_t - x0) / t for x0 = c
        path_name, prediction = "linear", "velocity"

        def forward(self, x, tt, cond, **kw):
            return (x - c[:1]) / tt.reshape(-1, 1, 1, 1, 1)  # every sample has x0 = c[0]

    class Identity(torch.nn.Module):
        def forward(self, x, tt, cond, **kw):
            return x

    ctx = method_context(t, tiny_data_root)
    ctx.teacher = Exact()
    m = cls(cfg, ctx)
    m.target = SimpleNamespace(module=Identity())
    m.batch = lambda gen: {"targets": c, "cond": torch.zeros(4, 3, 16, 16)}
    tg = m.targets(None, torch.Generator().manual_seed(6))
    b = (-1, 1, 1, 1, 1)
    eps = (tg.x_t - (1 - tg.t).reshape(b) * c) / tg.t.reshape(b)
    tp = (tg.t - 1 / N).reshape(b)
    assert torch.allclose(tg.target, (1 - tp) * c + tp * eps, atol=1e-5)
    assert torch.all(tg.w == 1.0)
    with pytest.raises(ValueError, match="outside the trained guidance range"):
        cls(cls.Config(w_min=1.0, w_max=2.0, sample_w=3.0), ctx)


def test_reflow_target_is_the_straight_line(tiny_teacher_dir, tiny_data_root):
    """x_t on the line from x1 (t = 0) to eps (t = 1) and target eps - x1: one Euler step of
    the target from any t lands on x1. A distilled reflow student advertises one step only."""
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("reflow")
    m = cls(cls.Config(couplings=6, distill_steps=0), method_context(t, tiny_data_root, batch=5))
    g = torch.Generator().manual_seed(7)
    m.pairs = {
        "x1": torch.randn(6, 4, 3, 16, 16, generator=g),
        "eps": torch.randn(6, 4, 3, 16, 16, generator=g),
        "index": torch.arange(6),
    }
    tg = m.targets(None, torch.Generator().manual_seed(8))
    x1 = tg.x_t - tg.t.reshape(-1, 1, 1, 1, 1) * tg.target  # Euler from t to 0
    eps = x1 + tg.target
    for k in range(5):
        j = [i for i in range(6) if torch.allclose(m.pairs["x1"][i], x1[k], atol=1e-5)]
        assert len(j) == 1 and torch.allclose(m.pairs["eps"][j[0]], eps[k], atol=1e-5)
    assert m.steps() == [1, 2, 4, 8]
    assert cls(cls.Config(distill_steps=5), m.ctx).steps() == [1]


def test_methods_draw_only_train_count_objects(tiny_teacher_dir, tiny_data_root):
    t = load_teacher(tiny_teacher_dir)
    ds = WorldDataset(tiny_data_root, "train")
    m = get_method("finetune")(get_method("finetune").Config(), method_context(t, tiny_data_root))
    m.ctx.train_count = 3
    seen = set()
    real = ds.batch
    m.ctx.data.batch = lambda idx: seen.update(int(i) for i in idx) or real(idx)
    for k in range(10):
        m.batch(torch.Generator().manual_seed(k))
    assert seen and max(seen) < 3
    m.ctx.train_count = len(ds) + 1
    with pytest.raises(ValueError, match="train_count"):
        m.batch(torch.Generator().manual_seed(0))


def test_progressive_target_makes_one_step_equal_two_teacher_steps(
    tiny_teacher_dir, tiny_data_root
):
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("progressive")
    m = cls(cls.Config(start_steps=8), method_context(t, tiny_data_root))
    assert m.round_steps == [4, 2, 1]
    student = Student(t, StudentConfig())
    tg = m.targets(student, torch.Generator().manual_seed(5))
    path, n = get_path("linear"), 4
    # a perfect student predicts the target; its DDIM step to t - 1/N ...
    x0, eps = to_x0_eps(path, tg.target, tg.x_t, tg.t, student.prediction)
    one = ddim_step(path, x0, eps, tg.t - 1 / n)
    # ... equals two DDIM steps of the teacher from the same point
    with torch.no_grad():
        a0, ae = to_x0_eps(path, t(tg.x_t, tg.t, tg.cond), tg.x_t, tg.t, "velocity")
        mid = ddim_step(path, a0, ae, tg.t - 0.5 / n)
        b0, be = to_x0_eps(path, t(mid, tg.t - 0.5 / n, tg.cond), mid, tg.t - 0.5 / n, "velocity")
        two = ddim_step(path, b0, be, tg.t - 1 / n)
    assert torch.allclose(one, two, atol=1e-4)
    # and the closed form is exact on both paths, including the last step to t = 0
    for name in ("linear", "cosine"):
        p = get_path(name)
        x, y = torch.randn(3, 5), torch.randn(3, 5)
        tt, te = torch.tensor([0.9, 0.5, 0.25]), torch.tensor([0.7, 0.25, 0.0])
        a, e = two_step_target(p, x, tt, y, te)
        assert torch.allclose(interpolate(p, a, e, tt), x, atol=1e-5)
        assert torch.allclose(ddim_step(p, a, e, te), y, atol=1e-5)


def test_reflow_couplings_reproducible(tiny_teacher_dir, tiny_data_root, tmp_path):
    t = load_teacher(tiny_teacher_dir)
    ds = WorldDataset(tiny_data_root, "train")
    a = make_couplings(
        t, ds, tmp_path / "a", count=5, steps=2, batch=3, seed=100, guidance=1.0, progress=False
    )
    b = make_couplings(
        t, ds, tmp_path / "b", count=5, steps=2, batch=3, seed=100, guidance=1.0, progress=False
    )
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # coupling i is the teacher's sample from noise seed (seed + i) for its recorded object
    x1, _ = generate(t, ds.batch([int(a["index"][4])])["cond"], 2, [104], "euler", decode=False)
    assert torch.allclose(a["x1"][4], x1[0], atol=1e-4)  # batch size changes float sums only
    # a finished shard is reused, not recomputed
    first = sorted((tmp_path / "a").glob("*.safetensors"))[0]
    mtime = first.stat().st_mtime_ns
    make_couplings(
        t, ds, tmp_path / "a", count=5, steps=2, batch=3, seed=100, guidance=1.0, progress=False
    )
    assert first.stat().st_mtime_ns == mtime


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="valid methods: " + ", ".join(METHODS)):
        get_method("no-such-method")


class _Field(torch.nn.Module):
    """A model u(z, r, t) given by a function, sampled like a student (linear path, velocity)."""

    path_name, prediction = "linear", "velocity"

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, z, t, cond, s=None, **kw):
        r = None if s is None else s.reshape(-1, 1, 1, 1, 1)  # a teacher is called without s
        return self.fn(z, t.reshape(-1, 1, 1, 1, 1), r)


def _meanflow(tiny_teacher_dir, tiny_data_root, **cfg):
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("meanflow")
    return cls(cls.Config(**cfg), method_context(t, tiny_data_root))


def test_meanflow_target_on_an_exactly_linear_flow_is_the_average_velocity(
    tiny_teacher_dir, tiny_data_root
):
    """One data point c: every path z_t = (1 - t) c + t eps is straight, so the average velocity
    over any [r, t] is (z_t - c) / t. A student equal to it is the target's fixed point, for
    r < t as for r = t, with the teacher's velocity and with the data's."""
    c = torch.randn(3, 16, 16).expand(4, 4, 3, 16, 16).clone()
    exact = _Field(lambda z, t, r: (z - c[:1]) / t)
    for from_data in (False, True):
        m = _meanflow(tiny_teacher_dir, tiny_data_root, r_fraction=1.0, from_data=from_data)
        m.ctx.teacher = exact  # the teacher's instantaneous velocity is the same field
        m.batch = lambda gen: {"targets": c, "cond": torch.zeros(4, 3, 16, 16)}
        tg = m.targets(exact, torch.Generator().manual_seed(9))
        assert torch.all(tg.s < tg.t) and tg.space == "velocity"
        truth = (tg.x_t - c) / tg.t.reshape(-1, 1, 1, 1, 1)
        assert torch.allclose(tg.target, truth, atol=1e-4)


def test_meanflow_total_derivative_in_closed_form(tiny_teacher_dir, tiny_data_root):
    """u = t^2 z + r: du/dt along v (r fixed) = 2 t z + t^2 v; target v - (t - r) du/dt."""
    m = _meanflow(tiny_teacher_dir, tiny_data_root)
    g = torch.Generator().manual_seed(10)
    z, v = torch.randn(3, 4, 3, 16, 16, generator=g), torch.randn(3, 4, 3, 16, 16, generator=g)
    t, r = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.1, 0.5, 0.0])
    model = _Field(lambda z, t, r: t * t * z + r)
    b = (-1, 1, 1, 1, 1)
    dudt = m.total_derivative(model, z, t, r, torch.zeros(3, 3, 16, 16), v)
    tb, rb = t.reshape(b), r.reshape(b)
    assert torch.allclose(dudt, 2 * tb * z + tb * tb * v, atol=1e-5)
    from distill.methods.meanflow import meanflow_target

    tgt = meanflow_target(v, dudt, t, r)
    assert torch.allclose(tgt, v - (tb - rb) * (2 * tb * z + tb * tb * v), atol=1e-5)
    assert torch.equal(tgt[1], v[1])  # r = t: the instantaneous velocity


def test_meanflow_jvp_runs_through_the_unet_with_attention(tiny_teacher_dir, tiny_data_root):
    """The JVP goes through the real student (LoRA UNet, attention at 8x8) and agrees with a
    central difference along z."""
    t = load_teacher(tiny_teacher_dir)
    m = _meanflow(tiny_teacher_dir, tiny_data_root)
    s = Student(t, StudentConfig(second_time=True, lora_rank=4))
    with torch.no_grad():
        for p in s.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    z, tt, c = student_inputs()
    r, v = tt * 0.5, torch.randn_like(z)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _, du = torch.func.jvp(
            lambda z_: m.average_velocity(s, z_, tt, r, c), (z,), (v,)
        )  # z direction only: the t direction is checked in closed form above
        h = 1e-2
        fd = (
            m.average_velocity(s, z + h * v, tt, r, c) - m.average_velocity(s, z - h * v, tt, r, c)
        ) / (2 * h)
    assert (du - fd).abs().max() < 1e-2 * du.abs().max()
    full = m.total_derivative(s, z, tt, r, c, v)
    assert full.shape == z.shape and torch.isfinite(full).all()


def test_meanflow_sampler_one_step_of_the_exact_average_velocity_lands_on_the_data():
    from samplers.sampling import generate

    c = torch.randn(4, 3, 8, 8)

    class Exact(_Field):
        def __init__(self):
            super().__init__(lambda z, t, r: (z - c) / t)
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def noise_shape(self):
            return (4, 3, 8, 8)

        def decode(self, x):
            return x

    for steps in (1, 3):
        x, nfe = generate(Exact(), torch.zeros(2, 3, 8, 8), steps, [0, 1], "meanflow")
        assert nfe == steps and torch.allclose(x, c.expand_as(x), atol=1e-5)


def _gaussian_x0(x_t, t, mu, sd):
    """E[x0 | x_t] for x0 ~ N(mu, sd^2) per dimension on the linear path (closed form)."""
    a, sig = 1 - t, t
    return mu + a * sd**2 / (a * a * sd**2 + sig * sig) * (x_t - a * mu)


def test_dmd2_gradient_on_gaussians():
    """Real score of data N(0, 1), fake score of the generator's N(mu, sd^2): the DM gradient
    vanishes when the two match and pushes the samples toward the data when they do not."""
    from distill.methods.dmd2 import dm_gradient

    g = torch.Generator().manual_seed(11)
    n, t = 4096, 0.5
    eps = torch.randn(n, 8, generator=g)
    z = torch.randn(n, 8, generator=g)
    for mu, sd in [(0.0, 1.0), (1.5, 1.0), (0.0, 2.0)]:
        x_hat = mu + sd * z
        x_t = (1 - t) * x_hat + t * eps
        real = _gaussian_x0(x_t, t, 0.0, 1.0)
        fake = _gaussian_x0(x_t, t, mu, sd)
        grad = dm_gradient(x_hat, real, fake)
        if (mu, sd) == (0.0, 1.0):
            assert torch.equal(grad, torch.zeros_like(grad))
            continue
        moved = x_hat - 0.1 * grad  # a step of the generator's regression
        if mu:  # too far right: the mean moves left, toward the data's 0
            assert moved.mean() < x_hat.mean() - 0.01
        else:  # too wide: the spread shrinks toward the data's 1
            assert moved.std() < x_hat.std() - 0.01


def test_dmd2_backward_simulation_and_steps(tiny_teacher_dir, tiny_data_root):
    t = load_teacher(tiny_teacher_dir)
    cls = get_method("dmd2")
    m = cls(cls.Config(generator_steps=4, fake_lora_rank=4), method_context(t, tiny_data_root))
    assert m.steps() == [4]  # the trained 4-step chain only
    student = Student(t, StudentConfig())
    m.prepare(student)
    seen = set()
    for k in range(12):
        b = m.batch(torch.Generator().manual_seed(k))
        x, tt = m.generate_inputs(student, b["cond"], torch.Generator().manual_seed(k))
        assert x.shape[1:] == student.noise_shape() and torch.all(tt == tt[0])
        seen.add(round(float(tt[0]), 4))
    assert seen == {1.0, 0.75, 0.5, 0.25}
    before = {k: v.clone() for k, v in m.fake.trainable_state().items()}
    tg = m.targets(student, torch.Generator().manual_seed(3))
    assert tg.space == "x0" and tg.target.shape == tg.x_t.shape
    after = m.fake.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the fake score trained
    assert cls(cls.Config(), m.ctx).steps() == [1]


def test_dmd2_gan_head_trains_and_its_shift_is_the_gan_gradient(tiny_teacher_dir, tiny_data_root):
    import torch.nn.functional as F

    t = load_teacher(tiny_teacher_dir)
    cls = get_method("dmd2")
    m = cls(
        cls.Config(fake_lora_rank=4, fake_updates=1, gan_weight=0.5),
        method_context(t, tiny_data_root),
    )
    student = Student(t, StudentConfig())
    m.prepare(student)
    head0 = {k: v.clone() for k, v in m.head.state_dict().items()}
    tg = m.targets(student, torch.Generator().manual_seed(1))
    assert torch.isfinite(tg.target).all()
    assert any(not torch.equal(head0[k], v) for k, v in m.head.state_dict().items())
    # the shift makes the regression's gradient equal the GAN loss's gradient at x_hat
    g = torch.Generator().manual_seed(2)
    x_hat, cond = torch.randn(2, 4, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    shift = m.gan_shift(x_hat, cond, torch.Generator().manual_seed(5))
    x = x_hat.clone().requires_grad_(True)
    noisy, tau, _ = m._noised(x, torch.Generator().manual_seed(5))
    (direct,) = torch.autograd.grad(F.softplus(-m.logits(noisy, tau, cond)).mean(), x)
    x2 = x_hat.clone().requires_grad_(True)
    reg = ((x2 - (x_hat - shift)) ** 2).flatten(1).mean(1).mean()
    (via_target,) = torch.autograd.grad(reg, x2)
    assert direct.abs().max() > 0 and torch.allclose(via_target, direct, atol=1e-7, rtol=1e-4)


def test_dmd2_gan_head_needs_a_middle_block_and_names_the_class():
    from distill.methods.dmd2 import middle_block

    block = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1), torch.nn.Conv2d(5, 7, 1))
    unet = torch.nn.Module()
    unet.middle_block = block  # the LDM layout (MVDream's UNet)
    assert middle_block(unet) == (block, 7)
    with pytest.raises(ValueError, match="Linear has neither mid_block nor middle_block"):
        middle_block(torch.nn.Linear(1, 1))
