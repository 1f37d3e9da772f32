"""``ct-real``: the InVesalius example head CT as a source with no ground truth.

``Cranium.inv3`` (invesalius-examples) holds one int16 matrix in HU, stored (z, y, x) with
spacing (x, y, z) = 0.957 x 0.957 x 1.5 mm. Its orientation is not recorded; from the anatomy,
z runs inferior -> superior (slice 0 is at the maxilla, the last above the vertex) and y runs
posterior -> anterior (InVesalius flips DICOM rows; the head rest lies at y = 0). x is taken to
run to the patient's left, as DICOM columns do; left and right cannot be checked from the image.

The brain mask is derived from HU (``masks.ct_brain_mask``); the image is shown in a brain
window (level 40, width 80 HU -> [0, 1]) and zeroed outside the mask.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from midiffusion.data.geometry import canonical, plan_grid, resample, resample_mask
from midiffusion.data.intensity import window
from midiffusion.data.inv3 import read_inv3
from midiffusion.data.masks import ct_brain_mask
from midiffusion.data.recipe import Recipe
from midiffusion.data.sources import source_by_name, source_file
from midiffusion.data.volumes import BuiltSet, Volume

SOURCE = "invesalius-cranium"


def load_ct(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU volume reoriented to RAS (float32) and its affine."""
    src = source_by_name(SOURCE)
    inv = read_inv3(source_file(root, src, "ct"), src.name)
    if inv.modality and inv.modality != "CT":
        raise ValueError(f"{src.files['ct']} is {inv.modality}, expected CT")
    sx, sy, sz = inv.spacing_xyz
    hu_xyz = np.transpose(inv.data, (2, 1, 0))
    affine = np.diag([-sx, sy, sz, 1.0])  # x -> patient left, y -> anterior, z -> superior
    return canonical(nib.Nifti1Image(hu_xyz, affine))


def build(root: Path, recipe: Recipe, log: Callable[[str], None] = print) -> BuiltSet:
    hu, affine = load_ct(root)
    mask = ct_brain_mask(hu)
    grid = plan_grid(
        mask,
        affine,
        recipe.grid,
        recipe.fov_margin,
        recipe.min_area_frac,
        slice_mm=recipe.ct_slice_mm,
    )
    mask_g = resample_mask(mask, affine, grid)
    ct = window(resample(hu, affine, grid), recipe.ct_window_level, recipe.ct_window_width)
    ct[mask_g == 0] = 0.0
    log(f"  ct-real: {ct.shape[2]} slices of {ct.shape[0]}x{ct.shape[1]}")
    volumes = [
        Volume("ct", "image", "CT", ct, grid.affine, SOURCE),
        Volume("mask", "mask", "mask", mask_g, grid.affine, SOURCE),
    ]
    notes = [
        f"brain window level {recipe.ct_window_level} width {recipe.ct_window_width} HU",
        "brain mask derived from HU (skull hull, 0..80 HU, largest part); no ground truth",
        "left-right assumed from the DICOM column convention (not recorded in the .inv3)",
    ]
    return BuiltSet("evaluation", volumes, [SOURCE], notes)
