"""The overall grey level of a translated volume, anchored to the target domain's.

LMI guidance is invariant to intensities by design, so nothing in the source fixes how bright the
translation is as a whole: that is left to the prior, and the prior draws it once per volume,
because every slice shares the sampler's noise. Measured with t1w v6 on eight T2w slices: the mean
inside the brain was 0.77, 0.82 and 0.87 at seeds 0, 1 and 2 (truth 0.75), and PSNR followed it
(20.0, 18.4, 16.2 dB). The estimate with the least squared error of a quantity the data cannot
inform is its prior mean, so the anchor shifts the volume's foreground until its mean equals the
mean foreground intensity of the model's training slices (recorded in the card at publishing).

The mean of a single slice varies with its level (the training slices' means spread with a
standard deviation of 0.07), so a shift to the volume-wide anchor is a rough estimate for a slice
or a slab. It is still a much better one than the sampled level: translated one by one as 2D
inputs, 8 slices per direction of the tuning head (head-tune, t1w v12, seed 0) gained 1.3-2.1 dB
PSNR with the anchor, and SSIM (inside the head) rose from 0.417 to 0.462 (PDw) and from 0.462 to
0.483 (FLAIR) with T2w level at 0.501. So every input is anchored unless the caller says not to.

A whole head's mean (scalp, fat and skull in the foreground) is not a brain's, so a card holds
one anchor per kind (``anchor_mean`` for skull-stripped brains, ``anchor_mean_head`` for heads)
and the volume's kind is read from its size: the largest axial section of a stripped brain is
157-206 cm^2 in every set here, of a whole head 237-303 cm^2 (``HEAD_AREA_CM2`` splits them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from model_store.card import SamplingSection

# a foreground whose largest axial section exceeds this is a whole head, not a stripped brain
HEAD_AREA_CM2 = 220.0


def is_whole_head(mask: np.ndarray, pixel_mm2: float) -> bool:
    """Whether a volume's (n, H, W) foreground ``mask`` is a whole head (see module docstring)."""
    mask = np.asarray(mask, bool)
    largest = float(mask.reshape(len(mask), -1).sum(axis=1).max()) if mask.size else 0.0
    return largest * pixel_mm2 / 100.0 > HEAD_AREA_CM2


def input_kind(mask: np.ndarray, pixel_mm2: float) -> str:
    """A volume's kind, "head" or "brain": what a network with input kinds is told
    (``midiffusion.model.unet``), and which anchor and lookup weight of the card apply."""
    return "head" if is_whole_head(mask, pixel_mm2) else "brain"


def anchor_for(sampling: SamplingSection, kind: str) -> float | None:
    """The card's anchor for a volume of this kind; None where the card has none for it."""
    return sampling.anchor_mean_head if kind == "head" else sampling.anchor_mean


def foreground_mean(slices01: np.ndarray) -> float:
    """Mean intensity of the foreground (> 0) pixels of skull-stripped training slices."""
    values = np.asarray(slices01, np.float32)
    values = values[values > 0]
    if values.size == 0:
        raise ValueError("no foreground (> 0) pixels to take an intensity anchor from")
    return float(values.mean())


def anchor_mean(slices01: np.ndarray, mask: np.ndarray, target_mean: float) -> np.ndarray:
    """Shift ``slices01`` (one volume) so that its mean inside ``mask`` is ``target_mean``.

    One shift for the whole volume keeps the slices' contrast and their relation to each other.
    Values stay in [0, 1], so the shift is found by bisection: clipping at 0 or 1 takes back part
    of a plain difference of means. The background stays zero.
    """
    slices01, mask = np.asarray(slices01, np.float32), np.asarray(mask, bool)
    if slices01.shape != mask.shape:
        raise ValueError(f"slices {slices01.shape} and mask {mask.shape} differ in shape")
    if not 0.0 < target_mean < 1.0:
        raise ValueError(f"anchor mean {target_mean} is outside (0, 1), the images' range")
    if not mask.any():
        return slices01.copy()
    values = slices01[mask].astype(np.float64)
    lo, hi = -1.0, 1.0  # shifts that take every value to 0 and to 1
    for _ in range(40):  # 2 / 2**40: far below one grey level
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(values + mid, 0, 1).mean() < target_mean else (lo, mid)
    shift = (lo + hi) / 2
    return np.where(mask, np.clip(slices01 + shift, 0.0, 1.0), 0.0).astype(np.float32)
