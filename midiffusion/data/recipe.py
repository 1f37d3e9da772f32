"""The versioned build recipe: every number that shapes a built set lives here.

Bump ``RECIPE_VERSION`` whenever a change here (or in the code that applies it) changes the
bytes of a built set; the version and the full parameter dict are written into each set's
``manifest.json``, and a set whose manifest differs from the current recipe is rebuilt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

RECIPE_VERSION = 3

SET_NAMES = ("t1-train", "mni-synth", "ct-real", "head-synth", "head-synth-256", "head-tune")


@dataclass(frozen=True)
class Recipe:
    """Parameters shared by all sets, then per-set parameters (prefixed by set)."""

    grid: int = 128  # in-plane size of the model grid (square)
    fov_margin: float = 0.10  # square FOV = larger side of the axial brain bbox x (1 + margin)
    min_area_frac: float = 0.15  # keep axial slices whose brain area >= frac x max slice area
    percentile: float = 99.5  # intensity scaling: this percentile inside the brain mask -> 1.0
    # t1-train: slices every `train_slice_mm` mm along the head axis (z), all that pass the
    # area threshold.
    train_slice_mm: float = 1.0
    # t1-train: running-median window (slices) of the axial intensity drift divided out of
    # sources that have one (ROBEX), so the T1 prior learns one brightness convention (recipe v1
    # left ROBEX's bright tissue anywhere from 0.35 to 0.9).
    train_axial_bias_window: int = 9
    # ... and the level their bright tissue (90th percentile of a slice's brain) is set to: what
    # percentile scaling gives Colin27's white-matter slices (0.93-0.97)
    train_bright_level: float = 0.95
    # mni-synth: this many evenly spaced axial slices between the first and last slice that
    # pass the area threshold.
    synth_slices: int = 48
    synth_seed: int = 20240601
    bias_amplitude: float = 0.12  # multiplicative bias field spans 1 +- this
    noise_frac: float = 0.02  # Rician noise sigma as a fraction of the image maximum
    # ct-real: brain window (HU) and slice spacing (native 1.5 mm).
    ct_window_level: float = 40.0
    ct_window_width: float = 80.0
    ct_slice_mm: float = 1.5

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)
