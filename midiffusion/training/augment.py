"""Training-time augmentation: new anatomy shapes and new contrasts from a few T1 subjects.

Two kinds, both on (B, 1, H, W) batches in [0, 1], both driven by the trainer's generator so a
resumed run draws exactly what an uninterrupted one would:

* ``spatial``: a random rotation, scaling and smooth elastic warp of the target slice itself
  (the prior learns more head shapes than the training subjects have).
* ``recontrast``: a randomly re-contrasted copy of the target, used only as the *conditioning
  source*. At test time the source is a T2w, PD, FLAIR or CT image, never the T1 target, so the
  network must not learn maps that only a T1 produces. Each copy gets its own random intensity
  mapping of the tissues (non-monotone: any tissue order), a multiplicative bias field, blur,
  a loss of resolution and noise, the domain randomisation that makes SynthSR contrast-agnostic,
  applied to the condition. Background (0) stays background, as in every MR and windowed CT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _smooth_field(n: int, size: int, coarse: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) smooth random field in about [-1, 1]: coarse noise, bicubic upsampled."""
    base = torch.rand(n, 1, coarse, coarse, generator=gen) * 2 - 1
    return F.interpolate(base, size=(size, size), mode="bicubic", align_corners=True)


def spatial(
    y: torch.Tensor,
    gen: torch.Generator,
    max_degrees: float = 10.0,
    max_scale: float = 0.1,
    elastic_px: float = 2.0,
) -> torch.Tensor:
    """Rotate (+-``max_degrees``), scale (1 +- ``max_scale``) and warp elastically (up to
    ``elastic_px`` pixels, smooth over a quarter of the slice) each slice of ``y``."""
    n, _, h, w = y.shape
    angle = _uniform(n, -max_degrees, max_degrees, gen) * math.pi / 180
    scale = 1 + _uniform(n, -max_scale, max_scale, gen)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)],
        1,
    )
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    amp = elastic_px * 2 / max(h, w)  # pixels -> normalised coordinates
    warp = torch.cat([_smooth_field(n, h, 5, gen), _smooth_field(n, h, 5, gen)], 1)
    grid = grid + amp * warp.permute(0, 2, 3, 1)[:, :, :w]
    return F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _random_curve(y: torch.Tensor, gen: torch.Generator, knots: int = 6) -> torch.Tensor:
    """A random piecewise-linear intensity map per slice, 0 -> 0, any order of the tissues."""
    n = y.shape[0]
    values = torch.rand(n, knots, generator=gen)
    values = values / values.amax(dim=1, keepdim=True).clamp_min(1e-3)
    values = torch.cat([torch.zeros(n, 1), values], 1)  # the background knot stays dark
    pos = y.clamp(0, 1) * knots
    lo = pos.floor().long().clamp(max=knots - 1)
    frac = pos - lo
    flat_lo = torch.gather(values, 1, lo.reshape(n, -1)).view_as(y)
    flat_hi = torch.gather(values, 1, (lo + 1).reshape(n, -1)).view_as(y)
    return flat_lo + frac * (flat_hi - flat_lo)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-slice Gaussian blur (sigma in pixels, 0 leaves a slice unchanged)."""
    radius = 4
    r = torch.arange(-radius, radius + 1, dtype=x.dtype)
    out = torch.empty_like(x)
    for i, s in enumerate(sigma.tolist()):
        if s < 0.05:
            out[i] = x[i]
            continue
        k = torch.exp(-(r**2) / (2 * s * s))
        k = k / k.sum()
        xi = x[i : i + 1]
        xi = F.conv2d(F.pad(xi, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        xi = F.conv2d(F.pad(xi, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
        out[i] = xi[0]
    return out


def recontrast(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random new contrast of each slice of ``y`` (in [0, 1]), rescaled to [0, 1].

    The result is what a scanner with other tissue parameters, coil and resolution could have
    produced from the same anatomy; the foreground (``y > 0``) is kept, the background stays 0.
    """
    n, _, h, w = y.shape
    fg = (y > 0.02).float()
    x = _random_curve(y, gen)
    # multiplicative bias field, 1 +- up to 0.3
    x = x * (1 + _uniform(n, 0, 0.3, gen).view(n, 1, 1, 1) * _smooth_field(n, h, 4, gen))
    x = _blur(x, _uniform(n, 0, 1.2, gen))
    # loss of resolution: down by 1-3x, back up (an acquisition at thicker in-plane pixels)
    factor = _uniform(n, 1, 3, gen)
    for i, f in enumerate(factor.tolist()):
        if f > 1.2:
            small = F.interpolate(x[i : i + 1], scale_factor=1 / f, mode="area")
            x[i : i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    noise = _uniform(n, 0, 0.04, gen).view(n, 1, 1, 1)
    # magnitude images: noise in the background too, Rician-like
    x = (x * fg + noise * torch.randn(x.shape, generator=gen)).abs()
    # the inference normalisation: the foreground's 99.5th percentile maps to 1
    ref = torch.stack(
        [
            torch.quantile(xi[m > 0], 0.995) if m.any() else xi.new_tensor(1.0)
            for xi, m in zip(x, fg, strict=True)
        ]
    )
    return (x / ref.clamp_min(1e-3).view(n, 1, 1, 1)).clamp(0, 1)
