"""Through-plane figures of a translated volume: is it one volume, or a stack of slices?

A slice-by-slice translation can be good in every axial slice and still striped when a reader
reformats it sagittally or coronally. Two figures, from an evenly spaced stack of axial slices
and its ground truth (both (n, H, W), ``n`` the slice axis):

* ``reformat_ssim``: the SSIM of the sagittal and of the coronal reformats to the truth's, each
  inside the mask, averaged over the planes that hold at least ``min_pixels`` of it;
* ``gradient_energy_ratio``: the mean squared difference between neighbouring slices inside the
  mask, divided by the truth's. 1: the output changes along the slice axis as much as anatomy
  does; above 1: striping; below 1: slices smoothed into each other;
* ``level_jitter_ratio``: how much each slice's mean level inside the mask departs from the mean
  of its two neighbours' (rms, relative to the mean level), divided by the truth's. The gradient
  energy is dominated by texture; this one sees the stripes a reader sees in a reformat, slices
  a little brighter or darker than their neighbours. 1: like anatomy; above 1: level stripes.
"""

from __future__ import annotations

import numpy as np

from midiffusion.evaluation.metrics import ssim


def reformat_ssim(
    output: np.ndarray, truth: np.ndarray, mask: np.ndarray, min_pixels: int = 64
) -> dict[str, float | None]:
    """Mean SSIM of the sagittal (axis 1 fixed) and coronal (axis 2 fixed) reformats."""
    out: dict[str, float | None] = {}
    for name, axis in (("sagittal", 1), ("coronal", 2)):
        scores = [
            ssim(np.take(output, i, axis), np.take(truth, i, axis), np.take(mask, i, axis))
            for i in range(output.shape[axis])
            if np.take(mask, i, axis).sum() >= min_pixels
        ]
        out[name] = float(np.mean(scores)) if scores else None
    return out


def gradient_energy_ratio(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float | None:
    """Through-plane gradient energy of ``output`` relative to ``truth`` (see module)."""
    both = mask[1:] & mask[:-1]
    if len(mask) < 2 or not both.any():
        return None
    energy = float((np.diff(output, axis=0)[both] ** 2).mean())
    reference = float((np.diff(truth, axis=0)[both] ** 2).mean())
    return energy / reference if reference > 0 else None


def level_jitter(volume: np.ndarray, mask: np.ndarray, min_pixels: int = 64) -> float | None:
    """rms of each slice's mean level minus its neighbours' mean, over the mean level."""
    keep = mask.reshape(len(mask), -1).sum(1) >= min_pixels
    levels = np.array([volume[k][mask[k]].mean() for k in np.nonzero(keep)[0]])
    if len(levels) < 3 or not levels.mean() > 0:
        return None
    second = levels[1:-1] - 0.5 * (levels[:-2] + levels[2:])
    return float(np.sqrt((second**2).mean()) / levels.mean())


def level_jitter_ratio(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float | None:
    """``level_jitter`` of ``output`` relative to ``truth``'s (see module)."""
    ours, reference = level_jitter(output, mask), level_jitter(truth, mask)
    return ours / reference if ours is not None and reference else None


def through_plane(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """Both figures for one direction's evaluated stack."""
    mask = np.asarray(mask, bool)
    return {
        "reformat_ssim": reformat_ssim(output, truth, mask),
        "gradient_energy_ratio": gradient_energy_ratio(output, truth, mask),
        "level_jitter_ratio": level_jitter_ratio(output, truth, mask),
    }
