"""``mni-synth``: the zero-shot evaluation set (X -> T1) built from MNI152.

Ground truth: the ICBM152 2009a T1 (nilearn, stored 0..255). Sources: T2w, PDw and FLAIR
synthesised from its GM and WM probability maps (CSF = brain mask - GM - WM, clipped at 0) with
the signal equations of ``contrast``; then a seeded smooth bias field (``1 +- bias_amplitude``,
a different field per source) and seeded Rician noise with sigma = ``noise_frac`` of the image
maximum. Everything is resampled to the model grid first, so the noise is white on that grid.
Each image is scaled so its 99.5th percentile inside the mask is 1, clipped, zero outside.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from midiffusion.data.artifacts import bias_field, rician_noise
from midiffusion.data.contrast import SEQUENCES, mix
from midiffusion.data.geometry import canonical, plan_grid, resample, resample_mask
from midiffusion.data.intensity import scale_to_unit
from midiffusion.data.masks import mask_from_stripped
from midiffusion.data.nifti import load_nifti
from midiffusion.data.recipe import Recipe
from midiffusion.data.sources import source_by_name, source_file
from midiffusion.data.volumes import BuiltSet, Volume

SOURCE = "mni152"
MODALITY = {"t2w": "T2w", "pdw": "PDw", "flair": "FLAIR"}


def tissue_maps_on_grid(
    root: Path, recipe: Recipe
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(T1 in 0..1, {gm, wm, csf} probabilities, uint8 mask, affine) on the model grid."""
    src = source_by_name(SOURCE)
    vols = {}
    for role in ("t1", "gm", "wm"):
        data, affine = canonical(load_nifti(source_file(root, src, role), src.name))
        vols[role] = (data / 255.0, affine)
    t1, affine = vols["t1"]
    for role in ("gm", "wm"):
        if vols[role][0].shape != t1.shape or not np.allclose(vols[role][1], affine):
            raise ValueError(f"MNI152 {role} map is not on the T1 grid")
    mask = mask_from_stripped(t1)
    grid = plan_grid(
        mask,
        affine,
        recipe.grid,
        recipe.fov_margin,
        recipe.min_area_frac,
        n_slices=recipe.synth_slices,
    )
    mask_g = resample_mask(mask, affine, grid)
    gm = resample(vols["gm"][0] * mask, affine, grid) * mask_g
    wm = resample(vols["wm"][0] * mask, affine, grid) * mask_g
    total = gm + wm
    over = total > 1.0  # interpolation can push the sum a hair above 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask_g - gm - wm, 0.0, 1.0)
    t1_g = resample(t1, affine, grid)
    return t1_g, {"gm": gm, "wm": wm, "csf": csf}, mask_g, grid.affine


def synthesise(
    probs: dict[str, np.ndarray], mask: np.ndarray, name: str, index: int, recipe: Recipe
) -> np.ndarray:
    """One source contrast, with its own seeded bias field and noise, scaled to [0, 1]."""
    rng = np.random.default_rng([recipe.synth_seed, index])
    clean = mix(probs, SEQUENCES[name])
    biased = clean * bias_field(clean.shape, rng, recipe.bias_amplitude)
    sigma = recipe.noise_frac * float(biased.max())
    noisy = rician_noise(biased, sigma, rng)
    return scale_to_unit(noisy, mask, recipe.percentile)


def build(root: Path, recipe: Recipe, log: Callable[[str], None] = print) -> BuiltSet:
    t1, probs, mask, affine = tissue_maps_on_grid(root, recipe)
    volumes = [
        Volume("t1", "image", "T1w", scale_to_unit(t1, mask, recipe.percentile), affine, SOURCE)
    ]
    for index, name in enumerate(SEQUENCES):
        volumes.append(
            Volume(
                name,
                "image",
                MODALITY[name],
                synthesise(probs, mask, name, index, recipe),
                affine,
                SOURCE,
            )
        )
    volumes.append(Volume("mask", "mask", "mask", mask, affine, SOURCE))
    log(
        f"  mni-synth: {mask.shape[2]} slices of {mask.shape[0]}x{mask.shape[1]}, "
        f"t1 + {', '.join(SEQUENCES)}"
    )
    notes = [
        "t1 is the ground truth; t2w, pdw, flair are synthesised sources (contrast.py)",
        f"bias field 1 +- {recipe.bias_amplitude}, Rician sigma {recipe.noise_frac} of max, "
        f"seed {recipe.synth_seed}",
    ]
    return BuiltSet("evaluation", volumes, [SOURCE], notes)
