"""Guidance distillation: one network pass that gives what classifier-free guidance gives in two.

Guided sampling runs the network twice per guided step, with the condition and without it, and
mixes the two predictions (``midiffusion.diffusion.denoiser.classifier_free``). A student trained
to reproduce that mixture directly, on the same states and conditions a training step draws,
samples with plain conditional passes: the same steps for about half the passes (Meng et al.,
"On distillation of guided diffusion models", CVPR 2023, without their guidance-weight input,
since the card fixes one weight).

The teacher is a stored model, frozen and in eval mode; the student starts as a copy of it.
Noise levels are drawn with ``window_share`` of the batch inside the guidance window, because
only there does the target differ from what the student already does. Its targets, per item of
a batch:

- condition kept, sigma >= ``sigma_min``: the guided prediction of weight ``guidance``;
- condition kept, lower noise: the teacher's plain conditional prediction (the card's guidance
  window: the last steps are not guided);
- condition dropped: the teacher's unconditional prediction, so the student keeps the prior
  that the SDEdit baseline and guidance itself use.
"""

from __future__ import annotations

import torch

from midiffusion.diffusion.denoiser import classifier_free, with_and_without_condition
from midiffusion.diffusion.schedules import DDPMSchedule
from midiffusion.model.unet import UNet


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
    guided = classifier_free(eps_c, eps_u, guidance)
    in_window = (sigma >= sigma_min).view(-1, 1, 1, 1)
    return torch.where(keep.view(-1, 1, 1, 1), torch.where(in_window, guided, eps_c), eps_u)
