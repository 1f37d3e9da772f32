"""The source lookup: a translation's tissue intensities read back through the source.

The sampled translation knows which T1 intensity goes with each tissue, but draws its fine
structure from the prior; the source holds the patient's own edges. The lookup keeps both:

1. For every source intensity s, the mean of the translation over the foreground pixels whose
   source intensity is near s (a Nadaraya-Watson kernel regression of translation on source, one
   per volume), put back at every pixel of intensity s. This is a function of the source, so it
   has the source's edges exactly and the translation's contrast (any mapping, non-monotone ones
   included, since each intensity gets its own mean).
2. Those means, remapped to the translation's own distribution of grey levels (the value at
   quantile q of the means becomes the translation's value at quantile q). A mean of tissues
   that share a source intensity is duller than either, so step 1 alone narrows the grey levels
   (a bright T1 fat comes out grey); step 2 gives them back, keeping the order and the edges.

It is one map for the whole volume, so neighbouring slices agree. What a function of the source
cannot hold is what the source does not show: where two tissues share a source intensity (grey
and white matter in a PD-weighted brain), they get one value. The card therefore sets a weight
per kind of input, as for the anchor (``midiffusion/pipeline/intensity.py``):
``output = w * lookup + (1 - w) * translation``, chosen on the tuning data (the model card of
the version that adopted it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from model_store.card import SamplingSection

BINS = 1024  # source intensities are binned this finely before the kernel (1/1024 << bandwidth)


def lookup_weight_for(sampling: SamplingSection, kind: str) -> float:
    """The card's lookup weight for a volume of this kind ("head" or "brain",
    ``midiffusion.pipeline.intensity.input_kind``)."""
    return sampling.lookup_weight_head if kind == "head" else sampling.lookup_weight


def source_lookup(
    source01: np.ndarray, translated01: np.ndarray, mask: np.ndarray, bandwidth: float
) -> np.ndarray:
    """The mean of ``translated01`` per source intensity, read at every pixel of ``source01``.

    All three are one volume's (n, H, W) slices (or one slice) with values in [0, 1]; the mean
    runs over ``mask`` with a Gaussian kernel of ``bandwidth`` on the source intensity. Outside
    ``mask`` the result is 0."""
    source01, mask = np.asarray(source01, np.float64), np.asarray(mask, bool)
    if source01.shape != translated01.shape or source01.shape != mask.shape:
        raise ValueError(
            f"source {source01.shape}, translation {translated01.shape} and mask {mask.shape} "
            "differ in shape"
        )
    if bandwidth <= 0:
        raise ValueError(f"the lookup bandwidth must be positive, got {bandwidth}")
    if not mask.any():
        return np.zeros_like(source01, np.float32)
    values = np.clip(source01[mask], 0.0, 1.0)
    bins = np.minimum((values * BINS).astype(np.int64), BINS - 1)
    count = np.bincount(bins, minlength=BINS).astype(np.float64)
    total = np.bincount(bins, weights=translated01[mask], minlength=BINS)
    sigma_bins = bandwidth * BINS
    count = ndimage.gaussian_filter1d(count, sigma_bins, mode="constant", truncate=4.0)
    total = ndimage.gaussian_filter1d(total, sigma_bins, mode="constant", truncate=4.0)
    # intensities far from every foreground value keep a tiny count: their mean is still defined
    mean = total / np.maximum(count, 1e-12)
    centres = (np.arange(BINS) + 0.5) / BINS
    out = np.zeros_like(source01, np.float32)
    out[mask] = np.interp(values, centres, mean)
    return out


def matched_to(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` remapped to the distribution of ``reference`` (both 1D): the value at quantile
    q of ``values`` becomes ``reference``'s value at quantile q. Equal values stay equal (ties
    take their middle rank), so a map of the source stays a map of the source."""
    if len(values) < 2:  # one pixel: no distribution to speak of
        return np.full(len(values), float(np.mean(reference)))
    ordered = np.sort(values)
    first = np.searchsorted(ordered, values, "left")
    last = np.searchsorted(ordered, values, "right") - 1
    quantile = (first + last) / 2 / (len(values) - 1)
    levels = np.sort(reference)
    return np.interp(quantile, np.linspace(0.0, 1.0, len(levels)), levels)


def apply_lookup(
    translated01: np.ndarray,
    source01: np.ndarray,
    mask: np.ndarray,
    weight: float,
    bandwidth: float,
) -> np.ndarray:
    """``weight * lookup + (1 - weight) * translation`` inside ``mask``, 0 outside, the lookup
    being :func:`source_lookup` on the translation's own grey levels (:func:`matched_to`); the
    translation itself (masked) where ``weight`` is 0."""
    mask = np.asarray(mask, bool)
    translated01 = np.where(mask, translated01, 0.0).astype(np.float32)
    if weight <= 0 or not mask.any():
        return translated01
    means = source_lookup(source01, translated01, mask, bandwidth)
    looked_up = np.zeros_like(translated01)
    looked_up[mask] = matched_to(means[mask], translated01[mask])
    return np.where(mask, weight * looked_up + (1 - weight) * translated01, 0.0).astype(np.float32)
