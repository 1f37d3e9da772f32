"""Brain masks derived from the images themselves where a source ships none."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError


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


def _fill_convex_hull(mask2d: np.ndarray) -> np.ndarray:
    """The filled convex hull of a 2D mask's pixels (empty if fewer than 3 non-collinear)."""
    pts = np.argwhere(mask2d)
    if len(pts) < 3:
        return np.zeros(mask2d.shape, dtype=bool)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # collinear pixels: no area
        return np.zeros(mask2d.shape, dtype=bool)
    # Inside = on the inner side of every facet's half-plane (normal . p + offset <= 0).
    coords = np.indices(mask2d.shape).reshape(2, -1).astype(np.float64)
    dist = hull.equations[:, :2] @ coords + hull.equations[:, 2:3]
    return (dist <= 1e-9).all(axis=0).reshape(mask2d.shape)


def ct_brain_mask(
    hu: np.ndarray,
    bone_hu: float = 200.0,
    soft_hu: tuple[float, float] = (0.0, 80.0),
    erosion: int = 2,
) -> np.ndarray:
    """Intracranial soft tissue of a head CT (axis 2 = axial slices), from HU alone.

    1. Skull: the largest connected part above ``bone_hu`` (drops the head rest and couch).
    2. Per axial slice, the convex hull of the skull: it bridges gaps in the bone (sutures,
       thin temporal bone, burr holes or a bone flap) that defeat a plain hole filling.
    3. Inside that hull, away from the bone, keep soft tissue (``soft_hu``).
    4. Erode, keep the largest 3D part (cuts the thin links to orbits, sinuses and neck
       muscles through foramina), dilate back inside the candidate, fill holes per slice.
    """
    skull = largest_component(hu > bone_hu)
    hull = np.stack([_fill_convex_hull(skull[:, :, k]) for k in range(hu.shape[2])], axis=2)
    soft = (hu >= soft_hu[0]) & (hu <= soft_hu[1])
    candidate = hull & ~ndi.binary_dilation(skull, iterations=1) & soft
    core = largest_component(ndi.binary_erosion(candidate, iterations=erosion))
    brain = ndi.binary_dilation(core, iterations=erosion) & candidate
    for k in range(brain.shape[2]):
        brain[:, :, k] = ndi.binary_fill_holes(brain[:, :, k])
    return brain


def head_mask(image: np.ndarray, frac: float = 0.08) -> np.ndarray:
    """The whole head of an MR volume (scalp, skull, face, neck): above ``frac`` of the 99th
    percentile, largest connected part, closed, holes filled.

    The skull and the air of the sinuses are dark in every MR contrast, so a plain threshold
    leaves them as holes, or cuts the scalp off the brain: filling first makes the scalp's shell
    one piece with what it encloses; closing bridges the thin dark bone and gaps at the skull
    base, and filling again closes the rest.
    """
    ref = float(np.percentile(image, 99.0))
    if not ref > 0:
        return np.zeros(image.shape, dtype=bool)
    head = largest_component(fill_holes_axial(image > frac * ref))
    head = ndi.binary_closing(head, iterations=3, border_value=0) | head
    return fill_holes_axial(head)
