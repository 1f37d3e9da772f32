"""Samplers: short pure functions over a denoiser and a list of noise levels (k-diffusion style).

``denoiser(x, sigma) -> x0_hat`` works in the VE view (``x = x0 + sigma * eps``, see
``schedules.py``); ``sigmas`` run from the largest level down to a final 0. The LMI guidance lives
inside the denoiser (it recomputes the cross-LMI from ``x`` at every call), so adding a sampler
never touches the model or the conditioning.

``callback(i, total, x, denoised)`` runs after every step: translation uses it for progress and
raises from it to cancel. Stochastic samplers draw their step noise from ``noise(x)`` (standard
normal, shaped like ``x``); by default from ``generator``. Translation passes one noise image
shared by every slice of a volume, so stochastic sampling keeps neighbouring slices consistent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
Noise = Callable[[torch.Tensor], torch.Tensor]


def _default_noise(generator: torch.Generator | None) -> Noise:
    def noise(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)

    return noise


def _sigma_batch(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.to(x.dtype).expand(x.shape[0])


def _euler_step(
    x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor
) -> torch.Tensor:
    """One Euler step of the probability-flow ODE from ``sigma`` to ``sigma_to`` (VE form)."""
    return x + (x - denoised) / sigma * (sigma_to - sigma).to(x.dtype)


def shared_noise(seed: int, draw: int, sign: float = 1.0) -> Noise:
    """Step noise for stochastic samplers: one image per step, the same for every item of a batch
    (the slices of a volume), from a generator seeded by ``(seed, draw)``, times ``sign``. Call it
    once per batch and every batch gets the same sequence, so slices stay consistent across
    batches too."""
    gen = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])
    )

    def noise(x: torch.Tensor) -> torch.Tensor:
        one = torch.randn((1, *x.shape[1:]), generator=gen, dtype=x.dtype)
        return (one * sign).to(x.device).expand_as(x)

    return noise


def noise_source(draw: int, antithetic: bool) -> tuple[int, float]:
    """Whose noise a draw runs on, and with which sign. Antithetic draws pair up, (0, 1),
    (2, 3), ...: the second of a pair runs on the first one's initial and step noise negated.
    A pair's mean then cancels whatever part of a sample is odd in the noise. Because every
    slice shares its draw's noise, that part includes the volume-wide luck of the draw (how
    much contrast a whole volume gets), which plain averaging of a few draws leaves in."""
    if antithetic and draw % 2:
        return draw - 1, -1.0
    return draw, 1.0


def shared_noise_for_draws(seed: int, draws: Sequence[int], antithetic: bool = False) -> Noise:
    """``shared_noise`` for a batch that stacks several draws: ``len(draws)`` equal groups of
    rows, draw-major. Each group gets exactly the noise its draw would get in a batch of its own,
    so folding draws into one batch changes the speed, not the result."""
    per_draw = [shared_noise(seed, *noise_source(d, antithetic)) for d in draws]

    def noise(x: torch.Tensor) -> torch.Tensor:
        groups = x.chunk(len(per_draw))
        return torch.cat([f(g) for f, g in zip(per_draw, groups, strict=True)])

    return noise


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise: Noise | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0), i.e. Euler steps on the probability-flow ODE in VE form."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = denoiser(x, _sigma_batch(sigmas[i], x))
        x = _euler_step(x, denoised, sigmas[i], sigmas[i + 1])
        if callback is not None:
            callback(i, total, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise: Noise | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep in log-sigma, deterministic."""
    total = len(sigmas) - 1
    old_denoised = None
    h_last = None
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _sigma_batch(s, x))
        if s_next == 0:
            x = denoised
        else:
            h = (s / s_next).log()  # step in t = -log(sigma)
            d = denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s_next / s).to(x.dtype) * x - torch.expm1(-h).to(x.dtype) * d
            h_last = h
        old_denoised = denoised
        if callback is not None:
            callback(i, total, x, denoised)
    return x


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise: Noise | None = None,
) -> torch.Tensor:
    """Ancestral DDPM as published: posterior mean, "fixed large" variance beta_t, and noise at
    the last step too (with the posterior variance of the step before, 5.45e-5 at T = 1000).

    Computed in VP variables from the sigmas: abar = 1 / (1 + sigma^2).
    """
    noise = noise or _default_noise(generator)
    total = len(sigmas) - 1
    abar = 1 / (1 + sigmas.to(torch.float64) ** 2)  # last entry (sigma 0) gives abar = 1
    for i in range(total):
        a_t, a_prev = abar[i], abar[i + 1]
        alpha = a_t / a_prev
        beta = 1 - alpha
        if i + 1 < total or i == 0:
            var = beta
        else:  # final step, as published: the posterior variance of the step before
            beta_prev = 1 - abar[i - 1] / a_t
            var = beta_prev * (1 - a_t) / (1 - abar[i - 1])
        denoised = denoiser(x, _sigma_batch(sigmas[i], x))
        x_vp = x * a_t.sqrt().to(x.dtype)
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * denoised + (
            alpha.sqrt() * (1 - a_prev) / (1 - a_t)
        ) * x_vp
        x = (mean + var.sqrt().to(x.dtype) * noise(x)) / a_prev.sqrt().to(x.dtype)
        if callback is not None:
            callback(i, total, x, denoised)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise: Noise | None = None,
) -> torch.Tensor:
    """Euler ancestral (k-diffusion's, eta = 1): an Euler step down to ``sigma_down``, then fresh
    noise back up to the next level, ``sigma_down^2 + sigma_up^2 = sigma_next^2``. The last step
    (to sigma 0) adds none.

    Why it is here: the fresh noise corrects errors of an imperfect denoiser that a deterministic
    sampler carries to the end. Measured on ``t1w`` v2, MNI T1 -> T1 at 20 steps: DDIM's white
    matter comes out at 0.59 where the truth is 0.90, Euler ancestral's at 0.87.
    """
    noise = noise or _default_noise(generator)
    total = len(sigmas) - 1
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _sigma_batch(s, x))
        sigma_up = (s_next**2 * (s**2 - s_next**2) / s**2).sqrt()
        sigma_down = (s_next**2 - sigma_up**2).sqrt()
        x = _euler_step(x, denoised, s, sigma_down)  # DDIM's step, to sigma_down
        if s_next > 0:
            x = x + noise(x) * sigma_up.to(x.dtype)
        if callback is not None:
            callback(i, total, x, denoised)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "dpmpp-2m": sample_dpmpp_2m,
    "ddpm": sample_ddpm,
    "euler-a": sample_euler_ancestral,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; accepted: {', '.join(SAMPLERS)}") from None
