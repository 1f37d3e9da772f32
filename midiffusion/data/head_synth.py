"""``head-synth``: the whole-head evaluation set (X -> T1), on a head nobody trained on.

Subject: pydeface's mean head (a T1 with scalp, skull, face and neck; never in ``t1-train``).
Ground truth: that T1 itself. Sources: T2w, PDw and FLAIR synthesised by the signal equations of
``contrast`` from tissue probabilities estimated on the T1, scalp and skull included:

* the brain: the largest part of the head that is bright (above 0.45 of its 99th percentile) and
  deep (over 16 mm from the scalp surface), grown back by 6 voxels, holes filled;
* inside it, CSF, GM and WM; outside it, bone (with the sinuses' air), muscle and fat, and CSF
  where a dark voxel lies within 3 voxels of the brain (the subarachnoid space). Each voxel
  takes the two classes whose mean T1 intensities bracket it, linearly (partial volumes); the
  class means come from a 1D k-means of the T1 in that region.

Then, as in ``mni-synth``, a seeded bias field and Rician noise per source, all on a head-sized
model grid (48 evenly spaced axial slices), scaled so the 99.5th percentile in the head is 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from midiffusion.data.geometry import canonical, plan_grid, resample, resample_mask
from midiffusion.data.intensity import scale_to_unit
from midiffusion.data.masks import fill_holes_axial, head_mask, largest_component
from midiffusion.data.mni_synth import MODALITY, synthesise
from midiffusion.data.nifti import load_nifti
from midiffusion.data.recipe import Recipe
from midiffusion.data.sources import source_by_name, source_file
from midiffusion.data.volumes import BuiltSet, Volume

SOURCE = "pydeface-mean"


def brain_of_head(t1: np.ndarray, head: np.ndarray) -> np.ndarray:
    """A brain mask from a T1 head: bright, deep, one piece (module docstring)."""
    x = t1 / float(np.percentile(t1[head], 99))
    depth = ndi.distance_transform_edt(head)
    core = largest_component(ndi.binary_erosion((x > 0.45) & (depth > 16), iterations=3))
    return fill_holes_axial(ndi.binary_dilation(core, iterations=6) & (x > 0.35) & head)


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> np.ndarray:
    """Sorted centres of a 1D k-means, started at evenly spaced percentiles."""
    centres = np.percentile(values, np.linspace(10, 90, k))
    for _ in range(iterations):
        label = np.abs(values[:, None] - centres[None, :]).argmin(1)
        centres = np.array(
            [values[label == j].mean() if (label == j).any() else centres[j] for j in range(k)]
        )
    return np.sort(centres)


def memberships(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(k, ...) partial-volume fractions: linear between the two bracketing class means."""
    k = len(centres)
    pos = np.interp(x, centres, np.arange(k))
    out = np.zeros((k, *x.shape), dtype=np.float32)
    lo = np.floor(pos).astype(int).clip(0, k - 1)
    frac = (pos - lo).astype(np.float32)
    hi = (lo + 1).clip(0, k - 1)
    for j in range(k):
        out[j] += (lo == j) * (1 - frac) + (hi == j) * frac * (hi != lo)
    return out


def tissue_probabilities(
    t1: np.ndarray, head: np.ndarray, brain: np.ndarray
) -> dict[str, np.ndarray]:
    """csf, gm, wm inside ``brain``; bone, muscle, fat (and CSF next to the brain) elsewhere."""
    inner = memberships(t1, kmeans_1d(t1[brain], 3))
    outer = memberships(t1, kmeans_1d(t1[head & ~brain], 3))
    near = ndi.binary_dilation(brain, iterations=3) & ~brain & head
    out_of_brain = (head & ~brain).astype(np.float32)
    probs = {
        "csf": inner[0] * brain + outer[0] * near,
        "gm": inner[1] * brain,
        "wm": inner[2] * brain,
        "bone": outer[0] * out_of_brain * ~near,
        "muscle": outer[1] * out_of_brain,
        "fat": outer[2] * out_of_brain,
    }
    return {k: v.astype(np.float32) for k, v in probs.items()}


def on_grid(
    root: Path,
    recipe: Recipe,
    size: int | None = None,
    slice_mm: float | None = None,
    n_slices: int | None = None,
    subject: tuple[str, str] = (SOURCE, "t1"),
    seed: int = 100,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A whole head (default: the held-out one) on a head-sized ``size`` grid (default: the
    recipe's) with ``slice_mm`` spacing or ``n_slices`` planes: t1 (the truth), t2w, pdw, flair
    in [0, 1], and the uint8 head and brain masks; and the grid's affine.

    ``subject``: (source name, file key) of the T1 head; ``seed``: the first source's noise
    seed (the next sources take the following ones)."""
    src = source_by_name(subject[0])
    t1, affine = canonical(load_nifti(source_file(root, src, subject[1]), src.name))
    head = head_mask(t1)
    brain = brain_of_head(t1, head)
    grid = plan_grid(
        head,
        affine,
        size or recipe.grid,
        recipe.fov_margin,
        recipe.min_area_frac,
        slice_mm=slice_mm,
        n_slices=n_slices,
    )
    mask = resample_mask(head, affine, grid)
    probs = tissue_probabilities(t1, head, brain)
    probs_g = {k: resample(v, affine, grid) * mask for k, v in probs.items()}
    out = {"t1": scale_to_unit(resample(t1, affine, grid), mask, recipe.percentile)}
    for index, name in enumerate(("t2w", "pdw", "flair")):
        out[name] = synthesise(probs_g, mask, name, seed + index, recipe)
    out["mask"] = mask
    out["brain"] = resample_mask(brain, affine, grid)
    return out, grid.affine


def head_volumes(vols: dict[str, np.ndarray], affine: np.ndarray, source: str) -> list[Volume]:
    """The set's volumes from :func:`on_grid`'s arrays: images t1, t2w, pdw, flair; masks."""
    modality = {"t1": "T1w", **MODALITY, "mask": "mask", "brain": "mask"}
    return [
        Volume(
            key,
            "mask" if key in ("mask", "brain") else "image",
            modality[key],
            data,
            affine,
            source,
        )
        for key, data in vols.items()
    ]


def build(root: Path, recipe: Recipe, log: Callable[[str], None] = print) -> BuiltSet:
    vols, affine = on_grid(root, recipe, n_slices=recipe.synth_slices)
    mask = vols["mask"]
    log(f"  head-synth: {mask.shape[2]} slices of {mask.shape[0]}x{mask.shape[1]}, whole head")
    notes = [
        "held-out head (pydeface mean head, never in t1-train); t1 is the ground truth",
        "t2w, pdw, flair synthesised from tissue classes estimated on the T1 (head_synth.py)",
        "mask is the whole head; brain is the estimated brain inside it",
    ]
    return BuiltSet("evaluation", head_volumes(vols, affine, SOURCE), [SOURCE], notes)
