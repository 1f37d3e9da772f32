"""Geometry on small synthetic volumes: affine kept, left stays left, FOV and slice choice."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from midiffusion.data.geometry import (
    Grid,
    canonical,
    plan_grid,
    resample,
    resample_mask,
    square_fov,
    world_bbox,
)
from midiffusion.data.intensity import flatten_axial_bias, scale_to_unit, window


def _ellipsoid(shape, affine, centre_mm, radii_mm) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(affine, ijk)
    r = (((xyz - centre_mm) / radii_mm) ** 2).sum(1)
    return (r <= 1).reshape(shape)


def _centroid_mm(vol: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(vol > 0.5 * vol.max()).mean(0)
    return nib.affines.apply_affine(affine, idx)


# A "head" in LPS-like voxel order (x flipped, y flipped), 2 mm voxels, with a marker blob on
# the patient's LEFT (world x < 0 in RAS), anterior and superior.
LAS_AFFINE = np.array(
    [[-2.0, 0, 0, 60.0], [0, -2.0, 0, 70.0], [0, 0, 2.0, -50.0], [0, 0, 0, 1]], dtype=float
)
SHAPE = (60, 70, 50)
MARKER = np.array([-30.0, 20.0, 10.0])


@pytest.fixture()
def head() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    brain = _ellipsoid(SHAPE, LAS_AFFINE, np.array([0.0, 0.0, 0.0]), np.array([45, 55, 40]))
    marker = _ellipsoid(SHAPE, LAS_AFFINE, MARKER, np.array([6.0, 6.0, 6.0]))
    image = brain * 0.5 + marker * 1.0
    return image.astype(np.float32), brain, LAS_AFFINE


def test_canonical_is_exact_ras_reorientation(head) -> None:
    image, _, affine = head
    data, ras_affine = canonical(nib.Nifti1Image(image, affine))
    assert nib.aff2axcodes(ras_affine) == ("R", "A", "S")
    np.testing.assert_allclose(_centroid_mm(data == 1.5, ras_affine), MARKER, atol=1.0)
    assert sorted(data.ravel().tolist()) == sorted(image.ravel().tolist())  # no interpolation


def test_left_stays_left_through_the_whole_grid(head) -> None:
    image, brain, affine = head
    grid = plan_grid(brain, affine, size=64, margin=0.1, min_area_frac=0.15, slice_mm=2.0)
    out = resample(image, affine, grid)
    assert nib.aff2axcodes(grid.affine) == ("R", "A", "S")
    marker_mm = _centroid_mm(out * (out > 1.2), grid.affine)
    np.testing.assert_allclose(marker_mm, MARKER, atol=1.5)
    # In the array: the patient's left is the low end of axis 0 (x increases to the right).
    k = int(np.rint(np.linalg.solve(grid.affine, [*MARKER, 1])[2]))
    marker_cols = np.argwhere(out[:, :, k] > 1.2)[:, 0]
    assert marker_cols.mean() < 32


def test_resample_keeps_world_positions_under_an_oblique_affine() -> None:
    # Rotate the source 20 degrees about z: the resampled blob must land at the same world spot.
    theta = np.deg2rad(20)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot * 1.5
    affine[:3, 3] = [-40, -50, -30]
    shape = (60, 60, 40)
    centre = nib.affines.apply_affine(affine, [35, 20, 20])
    blob = _ellipsoid(shape, affine, centre, np.array([5.0, 5.0, 5.0])).astype(np.float32)
    grid = Grid(affine=np.diag([1.0, 1.0, 1.0, 1.0]) @ _translate(centre - 16), shape=(32, 32, 32))
    out = resample(blob, affine, grid, antialias=False)
    np.testing.assert_allclose(_centroid_mm(out, grid.affine), centre, atol=0.6)


def _translate(offset: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = offset
    return t


def test_square_fov_is_the_larger_side_plus_margin_centred(head) -> None:
    _, brain, affine = head
    lo, hi = world_bbox(brain, affine)
    cx, cy, side = square_fov(brain, affine, margin=0.1)
    assert side == pytest.approx(1.1 * max(hi[0] - lo[0], hi[1] - lo[1]))
    assert (cx, cy) == pytest.approx(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2))
    grid = plan_grid(brain, affine, size=64, margin=0.1, min_area_frac=0.15, slice_mm=2.0)
    px = grid.spacing[0]
    assert px == pytest.approx(side / 64) and grid.spacing[1] == pytest.approx(px)
    # The FOV centre is the centre of the pixel grid.
    centre_mm = nib.affines.apply_affine(grid.affine, [31.5, 31.5, 0])[:2]
    np.testing.assert_allclose(centre_mm, [cx, cy], atol=1e-9)


def test_slices_cover_the_brain_and_pass_the_area_threshold(head) -> None:
    _, brain, affine = head
    grid = plan_grid(brain, affine, size=64, margin=0.1, min_area_frac=0.15, slice_mm=2.0)
    mask = resample_mask(brain, affine, grid)
    area = mask.sum((0, 1))
    assert area.min() >= 0.15 * area.max() * 0.9  # tolerance: probe vs output sampling
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    # Evenly spaced mode gives exactly n slices over the same slab.
    even = plan_grid(brain, affine, size=32, margin=0.1, min_area_frac=0.15, n_slices=8)
    assert even.shape == (32, 32, 8)
    z = nib.affines.apply_affine(even.affine, [[0, 0, k] for k in range(8)])[:, 2]
    np.testing.assert_allclose(np.diff(z), np.diff(z)[0])
    with pytest.raises(ValueError, match="exactly one"):
        plan_grid(brain, affine, size=32, margin=0.1, min_area_frac=0.15)


def test_scale_to_unit_uses_the_percentile_inside_the_mask() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 200, (20, 20, 5)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[5:15, 5:15] = 1
    out = scale_to_unit(image, mask, 99.5)
    ref = np.percentile(image[mask > 0], 99.5)
    np.testing.assert_allclose(out[mask > 0], np.clip(image[mask > 0] / ref, 0, 1), rtol=1e-6)
    assert out[mask == 0].max() == 0 and out.max() == 1.0 and out.dtype == np.float32
    with pytest.raises(ValueError, match="empty"):
        scale_to_unit(image, np.zeros_like(mask))


def test_flatten_axial_bias_removes_a_drift_and_keeps_in_plane_anatomy() -> None:
    rng = np.random.default_rng(1)
    anatomy = rng.uniform(0.3, 0.9, (24, 24, 1)) * np.ones((1, 1, 30))
    mask = np.zeros(anatomy.shape, np.uint8)
    mask[4:20, 4:20] = 1
    drift = np.linspace(0.35, 0.9, 30) ** 0.5  # darker towards the base, as in ROBEX
    out = flatten_axial_bias((anatomy * drift).astype(np.float32), mask, level=0.8, window=5)
    inside = mask[..., 0] > 0
    bright = [np.percentile(out[..., k][inside], 90) for k in range(30)]
    np.testing.assert_allclose(bright, 0.8, atol=0.02)  # one level in every slice
    # within a slice, the contrast between pixels is untouched
    np.testing.assert_allclose(out[..., 3][inside] / out[..., 25][inside], 1.0, atol=0.03)
    assert out[mask == 0].max() == 0 and out.max() <= 1.0 and out.dtype == np.float32
    with pytest.raises(ValueError, match="too few brain slices"):
        flatten_axial_bias(anatomy[..., :3], mask[..., :3], level=0.8, window=5)


def test_ct_window() -> None:
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0])
    np.testing.assert_allclose(window(hu, level=40, width=80), [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        window(hu, 40, 0)
