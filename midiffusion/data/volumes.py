"""What a set builder produces: volumes on the model grid, with their role and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Volume:
    """One output volume: ``data`` of shape (grid, grid, n_slices) placed by ``affine``."""

    key: str  # file stem in the set directory, e.g. "colin27" or "colin27_mask"
    role: str  # "image" or "mask"
    modality: str  # "T1w", "T2w", "PDw", "FLAIR", "CT" or "mask"
    data: np.ndarray
    affine: np.ndarray
    source: str  # name of the data source it came from


@dataclass
class BuiltSet:
    """Everything a builder hands back: volumes, the sources used and notes for the manifest."""

    kind: str  # "training", "evaluation" or "tuning"
    volumes: list[Volume]
    sources: list[str]
    notes: list[str] = field(default_factory=list)
