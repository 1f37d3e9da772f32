"""The LMI-guided denoiser: wraps the epsilon network as ``D(x_ve, sigma) -> x0_hat``.

Every call recomputes the cross-LMI between the source and the current state (the paper's
guidance), reuses the cached self-LMI of the source, and optionally applies classifier-free
guidance on the condition: ``eps = eps_uncond + w * (eps_cond - eps_uncond)`` (not in the paper;
the network is trained with condition dropout, see ``midiffusion.model.unet``). ``guidance = 1``
is the plain conditional model, ``guidance = 0`` ignores the source (the unconditional prior).
``guidance_sigma_min`` limits guidance to the noise levels at or above it; below, the step is one
plain conditional pass. Guidance sharpens what the condition says while the image takes shape;
on the last, low-noise steps it mostly exaggerates contrast (measured on the tuning data: brain
PSNR falls when the final step is guided, and rises back when it is not; the model card).

``clip``: clamp the denoised estimate to the data range, as DDPM's ``clip_denoised``. Early in
sampling an epsilon error of d becomes an x0 error of sigma * d (sigma up to 157), and without
the clamp a deterministic sampler carries that overshoot to a saturated result. The published
sampler does not clip (its update is written in epsilon form), so faithful mode turns it off.

``kind``: the input kind a network with kinds is told (``midiffusion.model.unet.kind_index``;
0: not told), the same for every item and for both predictions of guidance.

``precision``: a resolved precision of ``midiffusion.pipeline.precision``; only the network call
is autocast.
"""

from __future__ import annotations

import torch

from midiffusion.diffusion.conditioning import ConditioningSpec
from midiffusion.diffusion.schedules import DDPMSchedule, ve_to_vp
from midiffusion.lmi import SourceLMI
from midiffusion.model.unet import UNet
from midiffusion.pipeline.precision import network_autocast


def classifier_free(eps_c: torch.Tensor, eps_u: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance of weight ``guidance`` from the conditional and unconditional
    predictions (1: the conditional one)."""
    return eps_u + guidance * (eps_c - eps_u)


def with_and_without_condition(
    net: UNet,
    x_vp: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    precision: str,
    kind: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's predictions with the condition and without it, in one batched call, in
    float32. The unconditional prediction sees the state and the timestep alone (the network
    zeroes a dropped condition), so it runs once per distinct pair: at the first step every
    slice of a draw starts from the same noise, so a volume needs one item per draw, not one per
    slice."""
    b = x_vp.shape[0]
    keys = torch.cat([x_vp.flatten(1), t.reshape(-1, 1).to(x_vp.dtype)], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    if len(unique) == b:
        states, steps, inverse = x_vp, t, None
    else:
        states, steps = unique[:, :-1].reshape(-1, *x_vp.shape[1:]), unique[:, -1].to(t.dtype)
    u = len(states)
    mask = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(u, dtype=torch.bool)])
    with network_autocast(precision, x_vp.device):
        out = net(
            torch.cat([x_vp, states]),
            torch.cat([t, steps]),
            torch.cat([cond, cond.new_zeros(u, *cond.shape[1:])]),
            mask.to(x_vp.device),
            kinds(kind, b + u, x_vp.device),
        ).float()
    eps_c, eps_u = out[:b], out[b:]
    return eps_c, eps_u if inverse is None else eps_u[inverse]


def kinds(kind: int, n: int, device: torch.device) -> torch.Tensor:
    """``kind`` for each of ``n`` batch items, as the network takes it."""
    return torch.full((n,), kind, dtype=torch.long, device=device)


class LMIGuidedDenoiser:
    def __init__(
        self,
        net: UNet,
        schedule: DDPMSchedule,
        spec: ConditioningSpec,
        source01: torch.Tensor | None,
        guidance: float = 1.0,
        clip: bool = True,
        precision: str = "fp32",
        guidance_sigma_min: float = 0.0,
        kind: int = 0,
    ) -> None:
        self.net, self.schedule, self.spec, self.guidance = net, schedule, spec, float(guidance)
        self.kind = kind
        self.guidance_sigma_min = float(guidance_sigma_min)
        self.clip, self.precision = clip, precision
        self.source_lmi: SourceLMI | None = None
        self.self_map: torch.Tensor | None = None
        if source01 is not None:  # reused at every step: the source's half of LMI, its self-map
            self.source_lmi = spec.source_lmi(source01)
            self.self_map = self.source_lmi(source01).similarity

    def eps(self, x_ve: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = self.schedule.sigma_to_t(sigma.detach().cpu()).to(x_ve.device, x_ve.dtype)
        x_vp = ve_to_vp(x_ve, sigma.reshape(-1, 1, 1, 1))
        b = x_ve.shape[0]
        if self.source_lmi is None or self.guidance == 0:
            zeros = x_ve.new_zeros(b, 2, *x_ve.shape[2:])
            return self._net(x_vp, t, zeros, torch.zeros(b, dtype=torch.bool, device=x_ve.device))
        cond = self.spec.condition(self.source_lmi, x_ve, sigma, self.self_map)
        # every item of a sampler's batch is at the same noise level
        if self.guidance == 1 or float(sigma.reshape(-1)[0]) < self.guidance_sigma_min:
            return self._net(x_vp, t, cond)
        eps_c, eps_u = with_and_without_condition(
            self.net, x_vp, t, cond, self.precision, self.kind
        )
        return classifier_free(eps_c, eps_u, self.guidance)

    def _net(
        self,
        x_vp: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with network_autocast(self.precision, x_vp.device):
            kind = kinds(self.kind, len(x_vp), x_vp.device)
            return self.net(x_vp, t, cond, cond_mask, kind).float()

    def __call__(self, x_ve: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        denoised = x_ve - sigma.reshape(-1, 1, 1, 1) * self.eps(x_ve, sigma)
        if self.clip:
            denoised = denoised.clamp(*self.spec.data_range)
        return denoised
