"""Noise schedules, kept apart from networks (as in diffusers).

The published model is a discrete DDPM (variance preserving, VP): linear betas from 1e-4 to 0.02
over T = 1000 steps, with ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. Samplers in
``samplers.py`` work in the equivalent variance-exploding (VE) view used by k-diffusion and by the
paper's score-SDE: ``x_ve = x_t / sqrt(abar_t) = x_0 + sigma_t eps`` with
``sigma_t = sqrt((1 - abar_t) / abar_t)``. This module holds the conversions between the two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class DDPMSchedule:
    """Linear-beta DDPM schedule (the published setting by default)."""

    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError("need 0 < beta_start < beta_end < 1")
        if self.num_timesteps < 2:
            raise ValueError("num_timesteps must be at least 2")

    def to_dict(self) -> dict:
        return {"kind": "ddpm-linear", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DDPMSchedule:
        kind = d.get("kind", "ddpm-linear")
        if kind != "ddpm-linear":
            raise ValueError(f"unknown schedule kind {kind!r}; accepted: 'ddpm-linear'")
        return cls(d["beta_start"], d["beta_end"], d["num_timesteps"])

    # --- per-timestep tables (float64 so conversions round-trip) -------------------------
    @property
    def betas(self) -> torch.Tensor:
        return torch.linspace(
            self.beta_start, self.beta_end, self.num_timesteps, dtype=torch.float64
        )

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    @property
    def sigmas(self) -> torch.Tensor:
        """VE noise level of every discrete timestep, increasing with t."""
        abar = self.alphas_cumprod
        return ((1.0 - abar) / abar).sqrt()

    # --- conversions -----------------------------------------------------------------------
    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for a VE sigma, interpolating log-sigma between discrete steps."""
        log_sigmas = self.sigmas.log()
        log_sigma = sigma.to(torch.float64).clamp_min(1e-12).log()
        idx = torch.searchsorted(log_sigmas, log_sigma).clamp(1, self.num_timesteps - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        frac = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + frac).to(sigma.dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """VE sigma for a (possibly fractional) timestep, interpolating in log-sigma."""
        log_sigmas = self.sigmas.log()
        t = t.to(torch.float64).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        frac = t - lo
        return ((1 - frac) * log_sigmas[lo] + frac * log_sigmas[lo + 1]).exp()

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        """``steps`` noise levels from the largest down, then a final 0 (k-diffusion convention).

        Timesteps are spaced evenly and include T-1 ("trailing" spacing), so the first step
        starts from pure noise whatever the number of steps. ``steps == num_timesteps`` gives
        every discrete level: the published 1000-step chain.
        """
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be between 1 and {self.num_timesteps}, got {steps}")
        stride = self.num_timesteps / steps
        t = (torch.arange(steps, 0, -1, dtype=torch.float64) * stride).round().long() - 1
        return torch.cat([self.sigmas[t], torch.zeros(1, dtype=torch.float64)])


def vp_to_ve(x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_ve = x_vp * sqrt(1 + sigma^2)`` (since ``1 / abar = 1 + sigma^2``)."""
    return x_vp * (1 + sigma**2).sqrt()


def ve_to_vp(x_ve: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x_ve / (1 + sigma**2).sqrt()
