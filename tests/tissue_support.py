"""Synthetic slices of three tissues, for the tests of what reads a translation back through its
source (the lookup and the guided filter)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

SIZE = 160  # a realistic slice: tens of thousands of foreground pixels


def tissues(
    slices: int, rng: np.random.Generator, slice_sigma: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(slices, SIZE, SIZE) labels 1..3 inside an ellipse (0 outside): blobs of three tissues,
    smoothed by ``slice_sigma`` across slices (0: each slice on its own)."""
    yy, xx = (np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2) / (SIZE / 2)
    inside = (xx / 0.85) ** 2 + (yy / 0.9) ** 2 < 1
    field = ndimage.gaussian_filter(rng.normal(size=(slices, SIZE, SIZE)), (slice_sigma, 6, 6))
    cuts = np.quantile(field, [1 / 3, 2 / 3])
    labels = 1 + (field > cuts[0]).astype(int) + (field > cuts[1]).astype(int)
    return np.where(inside, labels, 0), np.broadcast_to(inside, labels.shape)


def two_tissue_slice() -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """A SIZE x SIZE NIfTI slice: an ellipse whose left half is brighter than its right; with the
    ellipse's and its left half's masks."""
    yy, xx = (np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2) / (SIZE / 2)
    inside = (xx / 0.8) ** 2 + (yy / 0.85) ** 2 < 1
    left = inside & (xx < 0)
    image = nib.Nifti1Image((inside * (50 + 40 * (xx < 0))).astype(np.float32), np.eye(4))
    return image, inside, left
