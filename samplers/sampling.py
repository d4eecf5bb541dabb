"""Sampling functions over the path module. Plain functions with one signature:

    sample_X(den, x, ts, cond, generators=None, callback=None) -> x_0

``den`` is a :class:`Denoiser` (any model called as ``model(x_t, t, cond, s=None, **kw)``
plus its path and parametrization, with classifier-free guidance); ``ts`` is a time grid from
:func:`time_grid` running from 1 to 0; ``generators`` holds one torch.Generator per sample for
samplers that draw fresh noise. Samplers import no teacher, student or method.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from samplers.paths import (
    Path,
    _b,
    check_prediction,
    ddim_step,
    interpolate,
    to_x0_eps,
    velocity,
)


class Denoiser:
    """Turns a raw model into (x0_hat, eps_hat) predictions, with CFG and an NFE counter."""

    def __init__(
        self,
        model: Callable[..., Tensor],
        path: Path,
        prediction: str,
        guidance: float = 1.0,
        model_kwargs: dict | None = None,
    ):
        self.model = model
        self.path = path
        self.prediction = check_prediction(prediction)
        self.guidance = float(guidance)
        self.model_kwargs = model_kwargs or {}
        self.nfe = 0  # network evaluations per sample (a CFG pair counts as 2)

    def raw(self, x: Tensor, t: Tensor, cond: Tensor, s: Tensor | None = None) -> Tensor:
        # the sampler may keep its times in float64 (path math); the network takes x's dtype
        t = t.to(x.dtype)
        s = None if s is None else s.to(x.dtype)
        return guided(self.model, x, t, cond, self.guidance, s, **self.model_kwargs)

    def __call__(
        self, x: Tensor, t: Tensor, cond: Tensor, s: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        self.nfe += 2 if self.guidance != 1.0 else 1
        return to_x0_eps(self.path, self.raw(x, t, cond, s), x, t, self.prediction)


def guided(model, x: Tensor, t: Tensor, cond: Tensor, scale: float, s: Tensor | None = None, **kw):
    """Classifier-free guidance: u + scale * (c - u), with the null condition = zeros.

    The model is called as ``model(x, t, cond)`` or, with a second time, ``model(x, t, cond, s=s)``.
    """

    def call(x, t, cond, s, kw):
        return model(x, t, cond, **kw) if s is None else model(x, t, cond, s=s, **kw)

    if bool((scale == 1.0).all()) if torch.is_tensor(scale) else scale == 1.0:
        return call(x, t, cond, s, kw)  # unguided: no null-condition pass
    both = call(
        torch.cat([x, x]),
        torch.cat([t, t]),
        torch.cat([cond, torch.zeros_like(cond)]),
        None if s is None else torch.cat([s, s]),
        {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in kw.items()},
    )
    c, u = both.chunk(2)
    if torch.is_tensor(scale):  # one scale per sample
        scale = scale.to(c).reshape(-1, *([1] * (c.ndim - 1)))
    return u + scale * (c - u)


def time_grid(steps: int, shift: float = 1.0, t_max: float = 1.0) -> Tensor:
    """Times t_max = t_0 > ... > t_steps = 0. ``shift`` > 1 spends more steps at high noise
    (SD3's timestep shift: t' = shift t / (1 + (shift - 1) t))."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)
    t = shift * t / (1 + (shift - 1) * t)
    return t.float()


def _bt(t: Tensor, x: Tensor) -> Tensor:
    """A grid time for every sample; a float64 grid (a DDPM teacher's) stays float64."""
    t = t.to(x.device)
    return (t if t.dtype == torch.float64 else t.to(x.dtype)).expand(x.shape[0])


def _c(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample coefficient broadcast against x, in x's dtype."""
    return _b(v, x).to(x.dtype)


def _linear_time(path: Path, t: Tensor) -> Tensor:
    """u = sigma / (alpha + sigma): the time of ``t`` when the path is written as the linear
    one, y = x / (alpha + sigma), where dy/du = eps - x0 (the identity on the linear path;
    finite at t = 1 on every path)."""
    return path.sigma(t) / (path.alpha(t) + path.sigma(t))


def _linear_step_coords(path: Path, x: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """x at time t in the path's linear coordinates, y = x / (alpha + sigma), and the step
    h = u(s) - u(t) in their time (``_linear_time``), both in x's dtype."""
    y = x / _c(path.alpha(t) + path.sigma(t), x)
    return y, _c(_linear_time(path, s) - _linear_time(path, t), x)


def _from_linear(path: Path, y: Tensor, t: Tensor) -> Tensor:
    return y * _c(path.alpha(t) + path.sigma(t), y)


def sample_euler(den, x, ts, cond, generators=None, callback=None):
    """Euler on the probability-flow ODE, stepped in the path's linear coordinates (dy/du =
    eps - x0, see ``_linear_time``): on the linear path exactly Euler on dx/dt = alpha' x0 +
    sigma' eps; on every path a perfect denoiser lands on x0 (it is the DDIM step)."""
    path = den.path
    for i in range(len(ts) - 1):
        t, s = _bt(ts[i], x), _bt(ts[i + 1], x)
        x0, eps = den(x, t, cond)
        y, h = _linear_step_coords(path, x, t, s)
        x = _from_linear(path, y + h * (eps - x0), s)
        if callback:
            callback(i, x, x0)
    return x


def sample_ddim(den, x, ts, cond, generators=None, callback=None):
    """DDIM (Song et al. 2021): x_s = alpha(s) x0_hat + sigma(s) eps_hat."""
    for i in range(len(ts) - 1):
        t, s = _bt(ts[i], x), _bt(ts[i + 1], x)
        x0, eps = den(x, t, cond)
        x = ddim_step(den.path, x0, eps, s)
        if callback:
            callback(i, x, x0)
    return x


def sample_heun(den, x, ts, cond, generators=None, callback=None):
    """Heun's second-order method (Karras et al. 2022) in the path's linear coordinates (as
    ``sample_euler``); the last step to t = 0 is Euler."""
    path = den.path
    for i in range(len(ts) - 1):
        t, s = _bt(ts[i], x), _bt(ts[i + 1], x)
        x0, eps = den(x, t, cond)
        y, h = _linear_step_coords(path, x, t, s)
        d = eps - x0
        y_e = y + h * d
        if ts[i + 1] > 0:
            x0_2, eps_2 = den(_from_linear(path, y_e, s), s, cond)
            y_e = y + h * 0.5 * (d + (eps_2 - x0_2))
        x = _from_linear(path, y_e, s)
        if callback:
            callback(i, x, x0)
    return x


def sample_dpmpp_2m(den, x, ts, cond, generators=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022) in log-SNR, data prediction; first order on the first
    step (infinite step in lambda from pure noise) and on the last step to t = 0."""
    path = den.path
    x0_prev, h_prev = None, None
    for i in range(len(ts) - 1):
        t = _bt(ts[i], x)
        x0, _ = den(x, t, cond)
        a_s, s_s, s_t = path.alpha(ts[i + 1]), path.sigma(ts[i + 1]), path.sigma(ts[i])
        lam_t, lam_s = path.log_snr(ts[i]), path.log_snr(ts[i + 1])
        h = (lam_s - lam_t).item()
        if ts[i + 1] == 0:
            x = x0  # alpha(0) = 1, sigma(0) = 0
        else:
            d = x0
            if x0_prev is not None and h_prev is not None and torch.isfinite(torch.tensor(h_prev)):
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            em = torch.expm1(torch.tensor(-h)).item() if h != float("inf") else -1.0
            x = (s_s / s_t).item() * x - a_s.item() * em * d
        x0_prev, h_prev = x0, h
        if callback:
            callback(i, x, x0)
    return x


def sample_consistency(den, x, ts, cond, generators=None, callback=None):
    """Multistep consistency sampling (Song et al. 2023): jump to x0, re-noise to the next time
    with fresh per-sample noise; one step is a single jump."""
    for i in range(len(ts) - 1):
        t = _bt(ts[i], x)
        x0, _ = den(x, t, cond)
        if ts[i + 1] > 0:
            z = per_sample_noise(x.shape[1:], generators, x.device, x.dtype)
            x = interpolate(den.path, x0, z, _bt(ts[i + 1], x))
        else:
            x = x0
        if callback:
            callback(i, x, x0)
    return x


def _average_velocity_steps(den, x, ts, cond, second, callback):
    """Steps of a flow-map model: from t to the next time r, move by the model's average
    velocity over [r, t]; ``second(t, r)`` is the model's second time input."""
    for i in range(len(ts) - 1):
        t, r = _bt(ts[i], x), _bt(ts[i + 1], x)
        x0, eps = den(x, t, cond, second(t, r))
        x = x + (ts[i + 1] - ts[i]).item() * velocity(den.path, x0, eps, t)
        if callback:
            callback(i, x, x0)
    return x


def sample_shortcut(den, x, ts, cond, generators=None, callback=None):
    """Shortcut-model sampling (Frans et al. 2024): each step is conditioned on its own size
    d = t - s and moves by d along the predicted average velocity: x_s = x_t - d u(x_t, t, d)."""
    return _average_velocity_steps(den, x, ts, cond, lambda t, r: t - r, callback)


def sample_meanflow(den, x, ts, cond, generators=None, callback=None):
    """MeanFlow sampling (Geng et al. 2025): the model's second time input is the step's end r,
    and x_r = x_t - (t - r) u(x_t, r, t)."""
    return _average_velocity_steps(den, x, ts, cond, lambda t, r: r, callback)


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "ddim": sample_ddim,
    "heun": sample_heun,
    "dpmpp": sample_dpmpp_2m,
    "consistency": sample_consistency,
    "shortcut": sample_shortcut,
    "meanflow": sample_meanflow,
}


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def generators_for(seeds: list[int]) -> list[torch.Generator]:
    """One generator per sample, so every step count starts from the same noise."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def per_sample_noise(
    shape: tuple[int, ...], generators: list[torch.Generator], device=None, dtype=None
) -> Tensor:
    """Standard normal noise [len(generators), *shape], one draw per sample's generator."""
    if not generators:
        raise ValueError("this sampler draws fresh noise: pass one generator per sample")
    z = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators])
    return z.to(device=device, dtype=dtype)


@torch.inference_mode()
def generate(
    model,
    cond: Tensor,
    steps: int,
    seeds: list[int],
    sampler: str = "euler",
    guidance: float = 1.0,
    shift: float = 1.0,
    model_kwargs: dict | None = None,
    decode: bool = True,
) -> tuple[Tensor, int]:
    """Sample views for ``cond`` [B, 3, H, W] from per-object seeds with any sampleable model.

    The model needs ``path_name``, ``prediction``, ``noise_shape()`` and ``decode()`` (teachers
    and students have them). Returns the decoded views [B, V, 3, H, W] (or, with
    ``decode=False``, the samples in model space) and the NFE per sample.
    """
    from samplers.paths import get_path

    if len(seeds) != cond.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {cond.shape[0]} condition images")
    p = next(iter(model.parameters()))
    kw = {  # the model's inputs follow its device
        k: v.to(p.device) if isinstance(v, Tensor) else v for k, v in (model_kwargs or {}).items()
    }
    den = Denoiser(model, get_path(model.path_name), model.prediction, guidance, kw)
    gens = generators_for(seeds)
    x = per_sample_noise(model.noise_shape(), gens, p.device, p.dtype)
    # a teacher's own grid (a diffusers teacher: its scheduler's timesteps); otherwise from
    # where the model's sampling starts: 1 (pure noise) unless it was trained only below that,
    # like a DDPM teacher whose last trained timestep still carries signal
    if hasattr(model, "sampling_times"):
        ts = model.sampling_times(steps, shift)
    else:
        ts = time_grid(steps, shift, float(getattr(model, "start_time", 1.0)))
    x = get_sampler(sampler)(den, x, ts, cond.to(p.device, p.dtype), gens)
    return (model.decode(x) if decode else x), den.nfe
