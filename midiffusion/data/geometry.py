"""Geometry: from any source volume to axial slices on the square model grid, affine kept.

The recipe's steps "reorient to RAS, resample isotropic, crop/pad to a square field of view,
resize to the model grid" are all affine maps, so they are composed into one map from target
voxels to source voxels and applied with a single interpolation (``resample``): no error piles
up from repeated resampling, and the output affine is exact by construction.

The target grid (``plan_grid``) is axis-aligned RAS: voxel (i, j, k) sits at world
``origin + (i * px, j * px, k * dz)`` mm, so axis 0 runs to the patient's Right, axis 1 to
Anterior, axis 2 to Superior. The square in-plane field of view is chosen once per volume from
the brain mask's bounding box, so every slice of a volume, and every set, shows the brain at a
similar scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Grid:
    """An axis-aligned RAS target grid: ``shape`` voxels placed by ``affine``."""

    affine: np.ndarray  # 4x4, voxel -> world mm
    shape: tuple[int, int, int]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in voxel_sizes(self.affine))  # type: ignore[return-value]


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """mm per voxel along each array axis (the column norms: right for oblique affines too)."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Reorient to the closest RAS voxel order (an exact flip/permute, no interpolation).

    Returns the data as float32, 3D (a trailing singleton 4th axis is dropped), and its affine.
    """
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    img3 = nib.Nifti1Image(data, img.affine)
    ras = nib.as_closest_canonical(img3)
    return np.asanyarray(ras.dataobj).astype(np.float32), ras.affine.copy()


def world_bbox(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-space (mm) min and max corners of the voxel centres where ``mask`` is set."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("the brain mask is empty")
    # The bounding box of the corner voxels is enough for an affine map.
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array(
        [[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]
    )
    world = nib.affines.apply_affine(affine, corners)
    return world.min(0), world.max(0)


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    grid: Grid,
    order: int = 1,
    antialias: bool = True,
) -> np.ndarray:
    """Sample ``data`` (with voxel->world ``affine``) on ``grid``; zero outside the source.

    With ``antialias``, a Gaussian pre-filter (sigma = (r - 1) / 2 source voxels, r the in-plane
    downsampling factor along that source axis) keeps fine texture from aliasing into the
    coarser model grid. It acts in-plane only: axial slices are sampled, not averaged.
    """
    m = np.linalg.inv(affine) @ grid.affine  # target voxel -> source voxel
    src = np.asarray(data, dtype=np.float32)
    if antialias:
        ratio = np.abs(m[:3, :2]).max(axis=1)  # source voxels per in-plane target step
        sigma = np.maximum(ratio - 1.0, 0.0) / 2.0
        if np.any(sigma > 0):
            src = ndi.gaussian_filter(src, sigma=sigma, mode="constant", cval=0.0)
    out = ndi.affine_transform(
        src,
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=grid.shape,
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    return out.astype(np.float32)


def resample_mask(mask: np.ndarray, affine: np.ndarray, grid: Grid) -> np.ndarray:
    """A binary mask on ``grid``: linear interpolation thresholded at 0.5 (smoother than NN)."""
    frac = resample(mask.astype(np.float32), affine, grid, order=1, antialias=False)
    return (frac >= 0.5).astype(np.uint8)


def square_fov(mask: np.ndarray, affine: np.ndarray, margin: float) -> tuple[float, float, float]:
    """Centre (x, y) and side (mm) of the square axial FOV around the mask's bounding box."""
    lo, hi = world_bbox(mask, affine)
    side = float(max(hi[0] - lo[0], hi[1] - lo[1])) * (1.0 + margin)
    return float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2), side


def slice_grid(
    mask: np.ndarray,
    affine: np.ndarray,
    size: int,
    margin: float,
    slice_axis: int = 2,
    min_side: float = 0.0,
) -> Grid:
    """The model grid for translating a volume slice by slice, in the volume's own slices.

    Grid voxel (i, j, k) lies in the input's k-th slice along ``slice_axis``; in-plane, the
    square field of view of :func:`square_fov` (the mask's bounding box, larger side x
    (1 + ``margin``), but at least ``min_side`` mm, centred on the box) is sampled by ``size`` x
    ``size`` pixels, grid axis 0 along the first remaining array axis. Built on the voxel axes
    rather than the world's, so a single slice or an oblique acquisition is cut in its own
    plane; for an axis-aligned RAS volume it is the same in-plane grid as :func:`plan_grid`'s (a
    test holds both to that).
    """
    plane = [a for a in range(3) if a != slice_axis]
    idx = np.nonzero(np.asarray(mask).any(axis=slice_axis))
    if len(idx[0]) == 0:
        raise ValueError("the mask is empty")
    lo = np.array([i.min() for i in idx], dtype=np.float64)
    hi = np.array([i.max() for i in idx], dtype=np.float64)
    zooms = voxel_sizes(affine)[plane]
    side = max(float(((hi - lo) * zooms).max()) * (1.0 + margin), min_side)
    step = side / size / zooms  # input voxels per grid pixel, along each in-plane axis
    to_voxel = np.zeros((4, 4))
    to_voxel[3, 3] = to_voxel[slice_axis, 2] = 1.0
    for g, axis in enumerate(plane):
        to_voxel[axis, g] = step[g]
        to_voxel[axis, 3] = (lo[g] + hi[g]) / 2 - (size / 2 - 0.5) * step[g]
    return Grid(affine=np.asarray(affine) @ to_voxel, shape=(size, size, mask.shape[slice_axis]))


def _grid(cx: float, cy: float, side: float, size: int, z0: float, dz: float, n: int) -> Grid:
    px = side / size
    affine = np.diag([px, px, dz, 1.0])
    affine[:3, 3] = [cx - side / 2 + px / 2, cy - side / 2 + px / 2, z0]  # voxel centres
    return Grid(affine=affine, shape=(size, size, n))


def plan_grid(
    mask: np.ndarray,
    affine: np.ndarray,
    size: int,
    margin: float,
    min_area_frac: float,
    slice_mm: float | None = None,
    n_slices: int | None = None,
) -> Grid:
    """The target grid for one volume.

    In-plane: the square FOV of ``square_fov`` sampled by ``size`` x ``size`` pixels. Along z:
    the slab from the first to the last axial plane whose brain area is at least
    ``min_area_frac`` of the largest plane's, sampled every ``slice_mm`` mm, or by ``n_slices``
    evenly spaced planes (exactly one of the two).
    """
    if (slice_mm is None) == (n_slices is None):
        raise ValueError("give exactly one of slice_mm and n_slices")
    cx, cy, side = square_fov(mask, affine, margin)
    lo, hi = world_bbox(mask, affine)
    # Brain area per plane, measured on the target in-plane grid at 0.5 mm steps in z.
    probe_dz = 0.5
    n_probe = int(np.floor((hi[2] - lo[2]) / probe_dz)) + 1
    probe = _grid(cx, cy, side, size, float(lo[2]), probe_dz, n_probe)
    area = resample_mask(mask, affine, probe).sum(axis=(0, 1)).astype(np.float64)
    keep = np.flatnonzero(area >= min_area_frac * area.max())
    z_first = float(lo[2] + keep[0] * probe_dz)
    z_last = float(lo[2] + keep[-1] * probe_dz)
    if n_slices is not None:
        if n_slices < 2:
            raise ValueError("n_slices must be at least 2")
        dz = (z_last - z_first) / (n_slices - 1)
        return _grid(cx, cy, side, size, z_first, dz, n_slices)
    assert slice_mm is not None
    n = int(np.floor((z_last - z_first) / slice_mm + 1e-6)) + 1
    z0 = (z_first + z_last) / 2 - (n - 1) * slice_mm / 2  # centre the slab
    return _grid(cx, cy, side, size, z0, slice_mm, n)
