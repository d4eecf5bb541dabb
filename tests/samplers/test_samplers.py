import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from samplers.paths import from_x0_eps, get_path, to_x0_eps
from samplers.sampling import (
    SAMPLERS,
    Denoiser,
    generators_for,
    get_sampler,
    per_sample_noise,
    sample_euler,
    time_grid,
)

X0 = torch.linspace(-0.8, 0.9, 2 * 1 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 1, 3, 4, 4)


def perfect_model(path_name, prediction, x0=X0):
    """The exact denoiser of a one-point data distribution at x0."""
    path = get_path(path_name)

    def model(x, t, cond):
        tb = t.reshape(-1, 1, 1, 1, 1)
        eps = (x - path.alpha(tb) * x0) / path.sigma(tb)
        return from_x0_eps(path, x0.expand_as(x), eps, t, prediction)

    return model


@pytest.mark.parametrize("name", ["euler", "ddim", "heun", "dpmpp", "consistency", "shortcut"])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_perfect_denoiser_lands_on_data_linear(name, steps):
    model = perfect_model("linear", "velocity")
    den = Denoiser(lambda x, t, c, s=None: model(x, t, c), get_path("linear"), "velocity")
    gens = generators_for([1, 2])
    x = per_sample_noise(X0.shape[1:], gens, dtype=torch.float64)
    out = get_sampler(name)(den, x, time_grid(steps).double(), None, gens)
    assert torch.allclose(out, X0, atol=1e-5)


@pytest.mark.parametrize("name", ["ddim", "dpmpp", "consistency"])
def test_perfect_denoiser_lands_on_data_cosine(name):
    model = perfect_model("cosine", "v")
    den = Denoiser(model, get_path("cosine"), "v")
    gens = generators_for([3, 4])
    x = per_sample_noise(X0.shape[1:], gens, dtype=torch.float64)
    out = get_sampler(name)(den, x, time_grid(5).double(), None, gens)
    assert torch.allclose(out, X0, atol=1e-5)


def test_euler_matches_diffusers_flow_match_euler():
    torch.manual_seed(0)
    w = torch.randn(3, 3, dtype=torch.float64) * 0.3

    def model(x, t, cond):  # an arbitrary smooth velocity field
        return torch.einsum("ij,bvjhw->bvihw", w, x) * (1 + t.reshape(-1, 1, 1, 1, 1))

    x = torch.randn(2, 1, 3, 4, 4, dtype=torch.float64)
    steps = 6
    ts = time_grid(steps).double()
    ours = sample_euler(Denoiser(model, get_path("linear"), "velocity"), x.clone(), ts, None)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(sigmas=ts[:-1].tolist())
    y = x.clone()
    for k, timestep in enumerate(sched.timesteps):
        sigma = sched.sigmas[k].to(torch.float64)
        y = sched.step(model(y, sigma.expand(2), None), timestep, y).prev_sample
    assert torch.allclose(ours, y.to(torch.float64), atol=1e-5)


def test_two_half_euler_steps_on_constant_velocity_equal_one():
    v = torch.randn(1, 1, 3, 2, 2)
    den = Denoiser(lambda x, t, c: v.expand_as(x), get_path("linear"), "velocity")
    x = torch.randn(1, 1, 3, 2, 2)
    one = sample_euler(den, x, torch.tensor([1.0, 0.5]), None)
    two = sample_euler(den, x, torch.tensor([1.0, 0.75, 0.5]), None)
    assert torch.allclose(one, two, atol=1e-6)


def test_cfg_combines_and_counts_nfe():
    def model(x, t, cond):
        return x * 0 + cond.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1, 1)

    cond = torch.ones(2, 3, 4, 4)
    x = torch.zeros(2, 1, 3, 4, 4)
    t = torch.full((2,), 0.5)
    den = Denoiser(model, get_path("linear"), "velocity", guidance=3.0)
    raw = den.raw(x, t, cond)
    assert torch.allclose(raw, torch.full_like(raw, 3.0))  # u=0, c=1 -> 0 + 3 * (1 - 0)
    den(x, t, cond)
    assert den.nfe == 2
    den1 = Denoiser(model, get_path("linear"), "velocity")
    den1(x, t, cond)
    assert den1.nfe == 1


def test_per_sample_noise_is_independent_of_batch():
    a = per_sample_noise((3, 4), generators_for([5, 6]))
    b = per_sample_noise((3, 4), generators_for([6]))
    assert torch.equal(a[1], b[0])


def test_time_grid_and_errors():
    g = time_grid(4)
    assert g[0] == 1 and g[-1] == 0 and len(g) == 5 and torch.all(g[1:] < g[:-1])
    gs = time_grid(4, shift=3.0)
    assert torch.all(gs[1:-1] > g[1:-1])  # shift spends steps at high noise
    with pytest.raises(ValueError, match="steps must be >= 1"):
        time_grid(0)
    with pytest.raises(ValueError, match="valid samplers: " + ", ".join(SAMPLERS)):
        get_sampler("plms")
    with pytest.raises(ValueError, match="one generator per sample"):
        per_sample_noise((2,), [])


def test_to_x0_eps_used_by_denoiser():
    path = get_path("linear")
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    t = torch.tensor([0.3, 0.6])
    v = from_x0_eps(path, x0, eps, t, "velocity")
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    a, b = to_x0_eps(path, v, x_t, t, "velocity")
    assert torch.allclose(a, x0, atol=1e-6) and torch.allclose(b, eps, atol=1e-6)


def test_guided_with_unit_scales_makes_no_null_condition_pass():
    from samplers.sampling import guided

    calls = []

    def model(x, t, cond):
        calls.append(x.shape[0])
        return x + cond  # cond [B, 1]: 1 conditioned, 0 for the null condition

    x, t, c = torch.randn(3, 2), torch.rand(3), torch.ones(3, 1)
    a = guided(model, x, t, c, torch.ones(3))
    assert calls == [3] and torch.equal(a, model(x, t, c))
    calls.clear()
    b = guided(model, x, t, c, torch.tensor([1.0, 2.0, 1.0]))
    assert calls == [6]  # one conditional and one null-condition pass per sample
    assert torch.allclose(b, x + torch.tensor([[1.0], [2.0], [1.0]]))  # u + w (c - u), c = u + 1


@pytest.mark.parametrize("path_name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["velocity", "v", "x0", "eps"])
@pytest.mark.parametrize("name", ["euler", "ddim", "heun", "dpmpp"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_every_path_prediction_sampler_lands_on_x0_in_float32(path_name, prediction, name, steps):
    """A perfect denoiser with float32 time grids (as sampling uses them): every combination
    lands on x0 and never yields NaN or Inf; eps models start just below pure noise."""
    x0 = X0.float()
    model = perfect_model(path_name, prediction, x0)
    den = Denoiser(model, get_path(path_name), prediction)
    gens = generators_for([5, 6])
    x = per_sample_noise(x0.shape[1:], gens, dtype=torch.float32)
    t_max = 0.98 if prediction == "eps" else 1.0
    out = get_sampler(name)(den, x, time_grid(steps, t_max=t_max), None, gens)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, x0, atol=2e-4), (out - x0).abs().max()


def test_cosine_path_endpoints_exact_in_float32():
    p = get_path("cosine")
    t = torch.tensor([0.0, 1.0])
    assert p.alpha(t).tolist() == [1.0, 0.0] and p.sigma(t).tolist() == [0.0, 1.0]
    lam = p.log_snr(t)
    assert lam[0] == float("inf") and lam[1] == float("-inf")


def test_eps_prediction_at_pure_noise_is_a_clear_error():
    model = perfect_model("cosine", "eps", X0.float())
    den = Denoiser(model, get_path("cosine"), "eps")
    x = torch.randn(2, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="start_time < 1"):
        get_sampler("euler")(den, x, time_grid(2), None, None)
