"""Brain masks derived from the images themselves where a source ships none."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes_axial(mask: np.ndarray) -> np.ndarray:
    """Fill holes in 3D, then in each axial (z) slice: the ventricles are enclosed in-plane."""
    out = ndi.binary_fill_holes(mask)
    for k in range(out.shape[2]):
        out[:, :, k] = ndi.binary_fill_holes(out[:, :, k])
    return out


def mask_from_stripped(image: np.ndarray) -> np.ndarray:
    """Mask of an already skull-stripped volume: > 0, largest connected part, holes filled.

    The largest component drops specks the stripping left behind; filling keeps dark CSF that
    the stripping zeroed inside the brain.
    """
    return fill_holes_axial(largest_component(image > 0))
