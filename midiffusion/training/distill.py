"""Guidance distillation: one network pass that gives what classifier-free guidance gives in two.

Guided sampling runs the network twice per guided step, with the condition and without it, and
mixes the two predictions (``midiffusion.diffusion.denoiser.classifier_free``). A student trained
to reproduce that mixture directly, on the same states and conditions a training step draws,
samples with plain conditional passes: the same steps for about half the passes (Meng et al.,
"On distillation of guided diffusion models", CVPR 2023, without their guidance-weight input,
since the card fixes one weight).

The teacher is a stored model, frozen and in eval mode; the student starts as a copy of it.
Where the states come from (``TrainConfig.distill_states``):

- ``forward``: training slices noised to random levels, with ``window_share`` of the batch
  inside the guidance window, because only there does the target differ from what the student
  already does;
- ``sampler``: every state the teacher's own guided sampler visits from fresh noise
  (:func:`sampler_states`). A few-step sampler meets states that forward noising never draws
  (its x0 estimates are blurred and its noise is the sampler's), and a student trained on
  forward-noised slices alone lost 0.006-0.013 SSIM on brains (``t1w`` v15's card).

The targets, per item of a batch:

- condition kept, sigma >= ``sigma_min``: the guided prediction of weight ``guidance``;
- condition kept, lower noise: the teacher's plain conditional prediction (the card's guidance
  window: the last steps are not guided);
- condition dropped: the teacher's unconditional prediction, so the student keeps the prior
  that the SDEdit baseline and guidance itself use.
"""

from __future__ import annotations

import torch

from midiffusion.diffusion.conditioning import ConditioningSpec
from midiffusion.diffusion.denoiser import classifier_free, with_and_without_condition
from midiffusion.diffusion.samplers import sample_euler_ancestral
from midiffusion.diffusion.schedules import DDPMSchedule, ve_to_vp
from midiffusion.model.unet import UNet

DISTILL_STATES = ("forward", "sampler")


def distill_timesteps(
    schedule: DDPMSchedule, n: int, sigma_min: float, window_share: float, gen: torch.Generator
) -> torch.Tensor:
    """``n`` timesteps: each inside the guidance window (sigma >= ``sigma_min``) with
    probability ``window_share``, else uniform over the whole schedule."""
    T = schedule.num_timesteps
    low = int(schedule.sigma_to_t(torch.tensor([sigma_min], dtype=torch.float64)).ceil().item())
    low = min(max(low, 0), T - 1)
    anywhere = torch.randint(T, (n,), generator=gen)
    in_window = torch.randint(low, T, (n,), generator=gen)
    return torch.where(torch.rand(n, generator=gen) < window_share, in_window, anywhere)


def mixed_targets(
    eps_c: torch.Tensor,
    eps_u: torch.Tensor,
    keep: torch.Tensor,
    sigma: torch.Tensor,
    guidance: float,
    sigma_min: float,
) -> torch.Tensor:
    """The targets (module docstring) from the teacher's two predictions."""
    guided = classifier_free(eps_c, eps_u, guidance)
    in_window = (sigma >= sigma_min).view(-1, 1, 1, 1)
    return torch.where(keep.view(-1, 1, 1, 1), torch.where(in_window, guided, eps_c), eps_u)


@torch.no_grad()
def guided_targets(
    teacher: UNet,
    x_vp: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    keep: torch.Tensor,
    sigma: torch.Tensor,
    guidance: float,
    sigma_min: float,
    precision: str,
) -> torch.Tensor:
    """The teacher's epsilon targets for a training batch (module docstring)."""
    eps_c, eps_u = with_and_without_condition(teacher, x_vp, t.float(), cond, precision)
    return mixed_targets(eps_c, eps_u, keep, sigma, guidance, sigma_min)


@torch.no_grad()
def sampler_states(
    teacher: UNet,
    schedule: DDPMSchedule,
    spec: ConditioningSpec,
    source01: torch.Tensor,
    self_map: torch.Tensor,
    steps: int,
    guidance: float,
    sigma_min: float,
    precision: str,
    gen: torch.Generator,
) -> tuple[torch.Tensor, ...]:
    """Every state the teacher's guided ``steps``-step Euler-ancestral sampler visits from fresh
    noise for these (n, 1, H, W) sources, as ``Translator.translate_slices`` samples (guidance
    ``guidance`` at sigma >= ``sigma_min``, x0 estimates clipped for clean conditioning), with
    what a student needs there: ``(x_vp, t, cond, sigma, eps_c, eps_u)``, each ``steps * n``
    long, step-major. The unconditional prediction is kept at every step (below the window the
    sampler itself does not need it) as the target of items whose condition is dropped."""
    sigmas = schedule.sampling_sigmas(steps).to(source01.device, torch.float32)
    clip = spec.state == "range_consistent"
    lmi = spec.source_lmi(source01)
    records: list[tuple[torch.Tensor, ...]] = []

    def denoiser(x_ve: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = schedule.sigma_to_t(sigma.cpu()).to(x_ve.device, x_ve.dtype)
        x_vp = ve_to_vp(x_ve, sigma.view(-1, 1, 1, 1))
        cond = spec.condition(lmi, x_ve, sigma, self_map)
        eps_c, eps_u = with_and_without_condition(teacher, x_vp, t, cond, precision)
        guided = float(sigma[0]) >= sigma_min
        eps = classifier_free(eps_c, eps_u, guidance) if guided else eps_c
        records.append((x_vp, t, cond, sigma, eps_c, eps_u))
        denoised = x_ve - sigma.view(-1, 1, 1, 1) * eps
        return denoised.clamp(*spec.data_range) if clip else denoised

    x = torch.randn(source01.shape, generator=gen).to(source01.device) * sigmas[0]
    sample_euler_ancestral(denoiser, x, sigmas, generator=gen)
    return tuple(torch.cat(parts) for parts in zip(*records, strict=True))
