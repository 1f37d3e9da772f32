"""The benchmark's comparison methods (docs/evaluation.md).

- ``identity``: the source itself, the floor.
- ``histogram_map``: classical zero-shot translation. Inside the mask, every source pixel's rank
  (its quantile among the slice's masked pixels) is replaced by the intensity at the same quantile
  of the target prior, i.e. the pooled histogram of the T1 training slices. ``invert=True`` maps
  rank q to the prior's quantile 1 - q (for sources whose contrast runs the other way, e.g. T2w).
  ``histogram_best`` keeps, per slice, whichever of the two has the higher NMI to the source.
  Both candidates are bijections of the source's ranks, so NMI to the source can barely tell them
  apart: the choice is close to arbitrary, which is why the two are also reported separately.
- ``sdedit``: SDEdit (Meng et al. 2022) with the project's network and the condition dropped
  (guidance 0, the unconditional prior learnt through condition dropout): the source, mapped to
  the model's data range, is noised to timestep ``t0`` and denoised from there by the model
  card's sampler.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from midiffusion.diffusion.samplers import get_sampler, shared_noise
from midiffusion.evaluation.metrics import nmi

PRIOR_QUANTILES = 4096


def identity(source01: np.ndarray) -> np.ndarray:
    return np.asarray(source01, np.float32).copy()


def target_prior(slices01: np.ndarray, levels: int = PRIOR_QUANTILES) -> np.ndarray:
    """The target prior as ``levels`` evenly spaced quantiles of every foreground (> 0) pixel.

    Training sets are skull-stripped with a zero background, so ``> 0`` is their brain mask.
    """
    values = np.asarray(slices01, np.float32)
    values = values[values > 0]
    if values.size == 0:
        raise ValueError("the target prior needs slices with foreground (> 0) pixels")
    return np.quantile(values, (np.arange(levels) + 0.5) / levels).astype(np.float32)


def histogram_map(
    source01: np.ndarray, mask: np.ndarray, prior: np.ndarray, *, invert: bool = False
) -> np.ndarray:
    """Map each slice's masked intensity ranks onto the prior's quantiles; zero outside."""
    source01, mask = np.asarray(source01, np.float32), np.asarray(mask, bool)
    out = np.zeros_like(source01)
    levels = (np.arange(len(prior)) + 0.5) / len(prior)
    for k in range(source01.shape[0]):
        values = source01[k][mask[k]]
        if values.size == 0:
            continue
        # Mid-ranks, so tied pixels (flat regions) map to one output value.
        order = np.sort(values)
        lo = np.searchsorted(order, values, side="left")
        hi = np.searchsorted(order, values, side="right")
        q = (lo + hi) / (2 * values.size)
        out[k][mask[k]] = np.interp(1 - q if invert else q, levels, prior)
    return out


def histogram_best(
    plain: np.ndarray, inverted: np.ndarray, source01: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per slice, the candidate with the higher NMI to the source (ties: not inverted).

    Returns the chosen slices and a boolean array saying which slices took the inverted map.
    """
    chose_inverted = np.array(
        [
            nmi(inverted[k], source01[k], mask[k]) > nmi(plain[k], source01[k], mask[k])
            for k in range(len(source01))
        ],
        dtype=bool,
    )
    return np.where(chose_inverted[:, None, None], inverted, plain), chose_inverted


def sdedit_sigmas(schedule, t0: int, steps: int) -> torch.Tensor:
    """Noise levels for SDEdit from timestep ``t0`` (1-based, of ``num_timesteps``) down to 0.

    The sampler starts at sigma(t0) and then follows the tail of the default ``steps``-step
    schedule below it, so its step sizes are those of the full translation chain and it takes
    about ``steps * t0 / T`` steps.
    """
    if not 1 <= t0 <= schedule.num_timesteps:
        raise ValueError(f"SDEdit t0 must be between 1 and {schedule.num_timesteps}, got {t0}")
    start = schedule.sigmas[t0 - 1]
    full = schedule.sampling_sigmas(steps)
    return torch.cat([start.reshape(1), full[full < start]])


@torch.no_grad()
def sdedit(
    translator,
    source01: np.ndarray,
    *,
    t0: int = 500,
    steps: int | None = None,
    seed: int = 0,
    sampler: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """SDEdit translation of (N, G, G) grid slices in [0,1] with a ``Translator``'s network,
    told the slices' input ``kind`` where it takes one.

    Uses the same seeded initial noise as ``Translator.translate_slices`` (one field shared by
    every slice), scaled to sigma(t0) and added to the source, and the same shared step noise
    when the sampler is stochastic.
    """
    steps = int(steps or translator.sampling.steps)
    sample = get_sampler(sampler or translator.sampling.sampler)
    device = translator.device
    sigmas = sdedit_sigmas(translator.schedule, t0, steps).to(device, torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    grid = source01.shape[-1]
    noise = torch.randn(1, 1, grid, grid, generator=gen).to(device)
    denoiser = translator.denoiser(None, 0.0, kind=kind)

    n = source01.shape[0]
    batch_size = int(batch_size or (32 if device.type == "cuda" else 8))
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    n_steps = len(sigmas) - 1
    out = np.zeros_like(source01, dtype=np.float32)
    for b, idx in enumerate(batches):
        src = torch.from_numpy(np.ascontiguousarray(source01[idx.start : idx.stop, None]))
        x = translator.spec.to_model(src.to(device)) + noise * sigmas[0]

        def callback(i: int, _total: int, _x: torch.Tensor, _d: torch.Tensor, b=b) -> None:
            if progress is not None:
                progress(b * n_steps + i + 1, len(batches) * n_steps)

        x0 = sample(denoiser, x, sigmas, callback=callback, noise=shared_noise(seed, 0))
        out[idx.start : idx.stop] = translator.spec.to_unit(x0)[:, 0].float().cpu().numpy()
    return out
