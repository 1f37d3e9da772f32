"""Noise schedules and samplers: conversions round-trip, and samplers solve what they claim."""

from __future__ import annotations

import pytest
import torch

from midiffusion.diffusion.samplers import (
    SAMPLERS,
    get_sampler,
    noise_source,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler_ancestral,
    shared_noise,
    shared_noise_for_draws,
)
from midiffusion.diffusion.schedules import DDPMSchedule, ve_to_vp, vp_to_ve
from model_store import SAMPLER_NAMES


def test_published_schedule_values():
    s = DDPMSchedule()
    # the published schedule: abar_999 = 4.04e-5; VE sigma range [0.0100, 157.4]
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=1e-2)
    assert s.sigmas[0].item() == pytest.approx(0.0100, rel=1e-3)
    assert s.sigmas[-1].item() == pytest.approx(157.4, rel=1e-3)


def test_sigma_t_round_trip_and_vp_ve():
    s = DDPMSchedule()
    t = torch.tensor([0.0, 0.5, 10.25, 500.0, 998.9, 999.0], dtype=torch.float64)
    assert torch.allclose(s.sigma_to_t(s.t_to_sigma(t)), t, atol=1e-6)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    sigma = torch.tensor(3.0, dtype=torch.float64)
    assert torch.allclose(ve_to_vp(vp_to_ve(x, sigma), sigma), x)
    # VP state of x0 + sigma*eps has unit-variance scaling: sqrt(abar) x0 + sqrt(1-abar) eps
    abar = s.alphas_cumprod[400]
    assert torch.allclose(ve_to_vp(torch.tensor(1.0), s.sigmas[400]), abar.sqrt())


def test_sampling_sigmas_shape_and_bad_steps():
    s = DDPMSchedule()
    sig = s.sampling_sigmas(20)
    assert len(sig) == 21 and sig[-1] == 0 and sig[0] == s.sigmas[-1]
    assert torch.all(sig[:-1][1:] < sig[:-1][:-1])
    assert torch.equal(s.sampling_sigmas(1000)[:-1], s.sigmas.flip(0))
    with pytest.raises(ValueError, match="steps must be between"):
        s.sampling_sigmas(0)


def _gaussian_denoiser(mu: float, s0: float):
    """Exact denoiser for data ~ N(mu, s0^2): E[x0 | x] in closed form."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        return (s0**2 * x + s2 * mu) / (s0**2 + s2)

    return denoise


@pytest.mark.parametrize("sampler", [sample_ddim, sample_dpmpp_2m])
def test_deterministic_samplers_transport_noise_to_the_data_distribution(sampler):
    # for Gaussian data the probability-flow ODE maps N(0, sigma_max^2) to N(mu, s0^2)
    mu, s0 = 0.3, 0.2
    sigmas = DDPMSchedule().sampling_sigmas(200).float()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, 1, 1, generator=gen) * sigmas[0]
    out = sampler(_gaussian_denoiser(mu, s0), x, sigmas)
    assert out.mean().item() == pytest.approx(mu, abs=0.02)
    assert out.std().item() == pytest.approx(s0, rel=0.06)


def test_ddpm_ancestral_samples_the_data_distribution():
    mu, s0 = -0.2, 0.3
    sigmas = DDPMSchedule().sampling_sigmas(1000).float()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 1, 1, 1, generator=gen) * sigmas[0]
    out = sample_ddpm(_gaussian_denoiser(mu, s0), x, sigmas, generator=gen)
    assert out.mean().item() == pytest.approx(mu, abs=0.03)
    assert out.std().item() == pytest.approx(s0, rel=0.08)


def test_euler_ancestral_samples_the_data_distribution_and_ends_on_the_denoised():
    # first order: the spread converges to s0 as steps grow (0.17 at 20 steps, 0.246 at 1000)
    mu, s0 = 0.1, 0.25
    sigmas = DDPMSchedule().sampling_sigmas(1000).float()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4000, 1, 1, 1, generator=gen) * sigmas[0]
    last: list[torch.Tensor] = []
    out = sample_euler_ancestral(
        _gaussian_denoiser(mu, s0),
        x,
        sigmas,
        callback=lambda i, n, x, d: last.append(d),
        generator=gen,
    )
    assert out.mean().item() == pytest.approx(mu, abs=0.02)
    assert out.std().item() == pytest.approx(s0, rel=0.06)
    assert torch.allclose(out, last[-1])  # no noise added on the step to sigma 0


def test_stochastic_samplers_draw_their_noise_from_the_noise_callable():
    sigmas = DDPMSchedule().sampling_sigmas(5).float()
    x = torch.zeros(3, 1, 2, 2)
    for sampler in (sample_ddpm, sample_euler_ancestral):
        zero = sampler(_gaussian_denoiser(0, 1), x, sigmas, noise=torch.zeros_like)
        ddim = sample_ddim(_gaussian_denoiser(0, 1), x, sigmas)
        assert torch.equal(zero, torch.zeros_like(x)) and torch.equal(ddim, zero)
        shapes: list[tuple[int, ...]] = []
        ones = _recording_ones(shapes)
        assert sampler(_gaussian_denoiser(0, 1), x, sigmas, noise=ones).abs().sum() > 0
        assert shapes and set(shapes) == {(3, 1, 2, 2)}


def test_shared_noise_is_one_image_per_step_repeated_per_batch():
    x = torch.zeros(3, 1, 4, 4)
    first, again, other = shared_noise(0, 0), shared_noise(0, 0), shared_noise(0, 1)
    a1, a2 = first(x), first(x)
    assert all(torch.equal(a1[0], a1[k]) for k in (1, 2))  # every slice the same
    assert not torch.equal(a1, a2)  # a new image each step
    assert torch.equal(again(x[:1])[0], a1[0])  # a later batch replays the sequence
    assert not torch.equal(other(x), a1)  # another draw, another sequence


def test_shared_noise_for_draws_gives_each_group_its_draws_noise():
    x = torch.zeros(4, 1, 4, 4)  # draws 2 and 5, two slices each
    stacked, two, five = shared_noise_for_draws(0, [2, 5]), shared_noise(0, 2), shared_noise(0, 5)
    for _ in range(2):  # two steps
        got = stacked(x)
        assert torch.equal(got[:2], two(x[:2])) and torch.equal(got[2:], five(x[2:]))


def test_antithetic_draws_run_in_pairs_on_opposite_noise():
    assert [noise_source(d, True) for d in range(5)] == [
        (0, 1.0),
        (0, -1.0),
        (2, 1.0),
        (2, -1.0),
        (4, 1.0),
    ]
    assert [noise_source(d, False) for d in range(3)] == [(0, 1.0), (1, 1.0), (2, 1.0)]
    x = torch.zeros(6, 1, 4, 4)  # draws 0, 1 and 2, two slices each
    anti, plain = shared_noise_for_draws(0, [0, 1, 2], True), shared_noise_for_draws(0, [0, 1, 2])
    for _ in range(3):  # every step: draw 1 is draw 0 negated, draws 0 and 2 as without pairing
        got, ref = anti(x), plain(x)
        assert torch.equal(got[2:4], -got[:2]) and got[:2].abs().sum() > 0
        assert torch.equal(got[:2], ref[:2]) and torch.equal(got[4:], ref[4:])


def _recording_ones(shapes: list[tuple[int, ...]]):
    def ones(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return torch.ones_like(x)

    return ones


def test_samplers_call_back_every_step_and_unknown_name():
    calls = []
    sigmas = DDPMSchedule().sampling_sigmas(5).float()
    sample_ddim(
        _gaussian_denoiser(0, 1),
        torch.zeros(1, 1, 2, 2),
        sigmas,
        callback=lambda i, n, x, d: calls.append((i, n)),
    )
    assert calls == [(i, 5) for i in range(5)]
    assert tuple(SAMPLERS) == SAMPLER_NAMES  # the torch-free list the command lines offer
    with pytest.raises(ValueError, match="accepted: ddim"):
        get_sampler("euler-maruyama")
