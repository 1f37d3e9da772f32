"""Brain masks derived from images: skull-stripped MR and head CT phantoms."""

from __future__ import annotations

import numpy as np

from midiffusion.data.masks import ct_brain_mask, largest_component, mask_from_stripped


def _ball(shape, centre, radius) -> np.ndarray:
    g = np.indices(shape).astype(float)
    d = np.sqrt(sum((g[i] - centre[i]) ** 2 for i in range(3)))
    return d <= radius


def test_mask_from_stripped_fills_ventricles_and_drops_specks() -> None:
    shape = (40, 40, 30)
    brain = _ball(shape, (20, 20, 15), 12)
    ventricle = _ball(shape, (20, 20, 15), 4)
    image = np.where(brain & ~ventricle, 0.8, 0.0)
    image[2, 2, 2] = 0.5  # a speck left by the stripping
    mask = mask_from_stripped(image)
    assert mask[20, 20, 15]  # the zeroed ventricle is inside the brain
    assert not mask[2, 2, 2]
    assert mask.sum() == brain.sum()


def test_largest_component_of_empty_is_empty() -> None:
    assert not largest_component(np.zeros((4, 4, 4), bool)).any()


def test_ct_brain_mask_on_a_phantom_with_a_skull_defect() -> None:
    shape = (80, 80, 24)
    hu = np.full(shape, -1000.0)
    head = _ball(shape, (40, 40, 12), 34)
    inner = _ball(shape, (40, 40, 12), 28)
    brain = _ball(shape, (40, 40, 12), 25)
    hu[head] = 40.0  # scalp: soft tissue outside the skull
    hu[inner & ~brain] = 1000.0  # skull
    hu[brain] = 30.0
    hu[_ball(shape, (40, 40, 12), 5)] = 8.0  # ventricle (CSF)
    hu[38:43, 10:20, :] = 40.0  # a defect through the skull on one side (burr hole / flap)
    hu[5:9, 70:74, 10:14] = 1000.0  # head rest: bone-bright, not connected to the skull
    mask = ct_brain_mask(hu)
    # A one-voxel rim next to the bone is given up on purpose (partial-volume bone).
    assert (mask & brain).sum() / brain.sum() > 0.88
    assert (mask & ~inner).sum() == 0  # nothing outside the skull
    scalp = head & ~inner
    assert (mask & scalp).sum() < 0.02 * scalp.sum()  # the defect does not let the scalp in
    assert mask[40, 40, 12]  # the ventricle is inside
