"""Intensity normalisation: robust percentile scaling for MR, windowing for CT."""

from __future__ import annotations

import numpy as np


def scale_to_unit(image: np.ndarray, mask: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Scale so the ``percentile`` inside ``mask`` is 1.0, clip to [0, 1], zero outside the mask.

    A high percentile rather than the maximum: a few bright voxels (vessels, noise, interpolation
    overshoot) must not decide the scale of a whole volume.
    """
    inside = image[mask > 0]
    if inside.size == 0:
        raise ValueError("cannot scale intensities: the brain mask is empty")
    ref = float(np.percentile(inside, percentile))
    if not ref > 0:
        raise ValueError(f"cannot scale intensities: the {percentile}th percentile is {ref}")
    out = np.clip(image / ref, 0.0, 1.0)
    out[mask == 0] = 0.0
    return out.astype(np.float32)


def flatten_axial_bias(
    image: np.ndarray,
    mask: np.ndarray,
    level: float | None,
    window: int = 9,
    q: float = 90.0,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Divide out a slow intensity drift along the last (axial) axis.

    Some scans fall off towards the ends of the coil: the ROBEX reference head's bright-tissue
    level (the ``q``th percentile of each slice's brain) runs from 0.35 at the base to 0.91 mid-
    brain. That level, smoothed by a running median over ``window`` slices so single slices keep
    their anatomy, is divided out; every slice's bright tissue then sits at ``level`` (None: the
    median level, which keeps the volume's overall scale). The
    result is clipped to [0, 1] and zero outside ``keep`` (default: the mask), like
    :func:`scale_to_unit`; a whole head is corrected by the drift measured in its brain.
    """
    area = (mask > 0).sum(axis=(0, 1))
    z = np.flatnonzero(area >= 0.1 * area.max())
    if len(z) < window:
        raise ValueError(f"too few brain slices ({len(z)}) for an axial drift window of {window}")
    bright = np.array([np.percentile(image[..., k][mask[..., k] > 0], q) for k in z])
    padded = np.pad(bright, window // 2, mode="edge")
    smooth = np.array([np.median(padded[i : i + window]) for i in range(len(bright))])
    if not smooth.min() > 0:
        raise ValueError("cannot flatten an axial drift: a slice's bright-tissue level is 0")
    # slices outside the fitted range take the nearest fitted level
    per_slice = np.interp(np.arange(image.shape[-1]), z, smooth)
    level = float(np.median(smooth)) if level is None else level
    out = np.clip(image * (level / per_slice), 0.0, 1.0)
    out[(mask if keep is None else keep) == 0] = 0.0
    return out.astype(np.float32)


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """A display window: ``level - width/2`` -> 0, ``level + width/2`` -> 1, clipped."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return np.clip((hu - (level - width / 2)) / width, 0.0, 1.0).astype(np.float32)
