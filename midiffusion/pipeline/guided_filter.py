"""The source-guided filter: the translation's local grey levels laid on the source's local edges.

The source lookup (``source_lookup.py``) reads the translation back through the source with one
map per volume, so it cannot give two tissues that share a source intensity different values.
This filter works in small windows instead. In every 3 x 3 window of a slice it fits the
translation as a linear function of the source, ``a * source + b`` (a guided filter, He, Sun and
Tang, ECCV 2010, with the source as the guide), and each pixel takes the mean of the fits of the
windows that hold it. What the translation does along the source's edges stays (any contrast,
inverted ones included, since each window has its own slope); fine texture that the sampler
invented and the source does not show is averaged away.

``eps`` keeps a window whose source is flat from amplifying noise: there the slope goes to 0 and
the window gives the translation's local mean. Windows see only the foreground (``mask``), so
the background never bleeds into the edge of the head. The card sets a weight per kind of input
(``output = w * filtered + (1 - w) * translation``) and ``eps``, chosen on the tuning data (the
model card of the version that adopted it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from model_store.card import SamplingSection

RADIUS = 1  # 3 x 3 windows, the LMI patch size
_WINDOW = (1, 2 * RADIUS + 1, 2 * RADIUS + 1)  # in-plane: each slice on its own


def guided_weight_for(sampling: SamplingSection, kind: str) -> float:
    """The card's guided-filter weight for a volume of this kind ("head" or "brain",
    ``midiffusion.pipeline.intensity.input_kind``)."""
    return sampling.guided_weight_head if kind == "head" else sampling.guided_weight


def _window_mean(values: np.ndarray, mask: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Each pixel's mean of ``values`` over the foreground of its in-plane window."""
    return ndimage.uniform_filter(values * mask, _WINDOW) / count


def source_guided(
    translated01: np.ndarray, source01: np.ndarray, mask: np.ndarray, eps: float
) -> np.ndarray:
    """The guided filter of ``translated01`` with ``source01`` as its guide, slice by slice.

    All three are (n, H, W) slices (or one (H, W) slice); values in [0, 1] come back clipped to
    [0, 1], and 0 outside ``mask``."""
    if translated01.shape != source01.shape or translated01.shape != mask.shape:
        raise ValueError(
            f"translation {translated01.shape}, source {source01.shape} and mask {mask.shape} "
            "differ in shape"
        )
    if eps <= 0:
        raise ValueError(f"the guided filter's eps must be positive, got {eps}")
    flat = translated01.ndim == 2
    p, guide, m = (
        np.asarray(a, np.float64)[None] if flat else np.asarray(a, np.float64)
        for a in (translated01, source01, np.asarray(mask, bool))
    )
    count = np.maximum(ndimage.uniform_filter(m, _WINDOW), 1e-12)  # the window's foreground share
    mean_g, mean_p = _window_mean(guide, m, count), _window_mean(p, m, count)
    var_g = _window_mean(guide * guide, m, count) - mean_g**2
    slope = (_window_mean(guide * p, m, count) - mean_g * mean_p) / (np.maximum(var_g, 0) + eps)
    offset = mean_p - slope * mean_g
    out = _window_mean(slope, m, count) * guide + _window_mean(offset, m, count)
    out = np.where(m > 0, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)
    return out[0] if flat else out


def apply_guided_filter(
    translated01: np.ndarray, source01: np.ndarray, mask: np.ndarray, weight: float, eps: float
) -> np.ndarray:
    """``weight * filtered + (1 - weight) * translation`` inside ``mask``, 0 outside, the
    filtered image being :func:`source_guided`'s; the translation itself (masked) where
    ``weight`` is 0."""
    mask = np.asarray(mask, bool)
    translated01 = np.where(mask, translated01, 0.0).astype(np.float32)
    if weight <= 0 or not mask.any():
        return translated01
    filtered = source_guided(translated01, source01, mask, eps)
    return np.where(mask, weight * filtered + (1 - weight) * translated01, 0.0).astype(np.float32)
