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


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """A display window: ``level - width/2`` -> 0, ``level + width/2`` -> 1, clipped."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return np.clip((hu - (level - width / 2)) / width, 0.0, 1.0).astype(np.float32)
