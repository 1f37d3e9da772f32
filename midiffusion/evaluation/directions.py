"""What the benchmark translates: its directions (set, source, ground truth) and their slices.

Directions: T2w, PDw and FLAIR -> T1 on ``mni-synth`` (metrics against the MNI152 T1 inside the
brain mask), the same three on ``head-synth`` (a held-out whole head; metrics inside the head)
and CT -> T1 on ``ct-real`` (no ground truth: SSIM and NMI to the source only). The head
directions again on ``head-synth-256``, at about the scan's own resolution (twice the model's
grid: the model translates at its grid, and the result is scored at the set's). The same three MR
directions on ``head-tune`` (a training subject's head) are for choosing settings only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from midiffusion.data.geometry import voxel_sizes

# direction -> (set, source key, ground-truth key or None)
DIRECTIONS: dict[str, tuple[str, str, str | None]] = {
    "T2w->T1": ("mni-synth", "t2w", "t1"),
    "PDw->T1": ("mni-synth", "pdw", "t1"),
    "FLAIR->T1": ("mni-synth", "flair", "t1"),
    "CT->T1": ("ct-real", "ct", None),
    "head T2w->T1": ("head-synth", "t2w", "t1"),
    "head PDw->T1": ("head-synth", "pdw", "t1"),
    "head FLAIR->T1": ("head-synth", "flair", "t1"),
    "head T2w->T1 @256": ("head-synth-256", "t2w", "t1"),
    "head PDw->T1 @256": ("head-synth-256", "pdw", "t1"),
    "head FLAIR->T1 @256": ("head-synth-256", "flair", "t1"),
    "tune T2w->T1": ("head-tune", "t2w", "t1"),
    "tune PDw->T1": ("head-tune", "pdw", "t1"),
    "tune FLAIR->T1": ("head-tune", "flair", "t1"),
}
# the reporting protocols (the default); TUNING is where settings are chosen, never reported
REPORTING = ("mni-synth", "ct-real", "head-synth", "head-synth-256")
TUNING = ("head-tune",)
PROTOCOLS = REPORTING + TUNING


class EvaluationError(RuntimeError):
    """The evaluation cannot run as asked; the message says why."""


@dataclass
class Direction:
    """One direction's evaluated slices, on the model grid, in [0, 1]."""

    name: str
    set_name: str
    slice_index: np.ndarray
    source: np.ndarray
    mask: np.ndarray
    truth: np.ndarray | None
    pixel_mm2: float  # the area of one grid pixel (the anchor tells brains from heads by it)
    model_grid: int | None = None  # the model's grid, where the set's is a multiple of it

    @property
    def factor(self) -> int:
        """How many set pixels one model pixel spans along each axis (1: the model's grid)."""
        return 1 if self.model_grid is None else self.source.shape[-1] // self.model_grid

    def to_model_grid(self, slices: np.ndarray) -> np.ndarray:
        """(n, S, S) set slices to the model's grid: each model pixel the mean of the set pixels
        it covers, as a scan at the model's resolution would record them."""
        f = self.factor
        if f == 1:
            return slices
        n, h, w = slices.shape
        return slices.reshape(n, h // f, f, w // f, f).mean(axis=(2, 4), dtype=np.float32)

    def from_model_grid(self, slices: np.ndarray) -> np.ndarray:
        """(n, G, G) model-grid slices back to the set's grid (linear, pixel centres aligned)."""
        if self.factor == 1:
            return slices
        f = self.factor
        return ndimage.zoom(slices, (1, f, f), order=1, mode="nearest", grid_mode=True)


def select_slices(total: int, wanted: int | None) -> np.ndarray:
    """``wanted`` evenly spaced slice indices out of ``total`` (all when None or too many)."""
    if wanted is None or wanted >= total:
        return np.arange(total)
    if wanted < 1:
        raise EvaluationError(f"--slices must be at least 1, got {wanted}")
    return np.unique(np.linspace(0, total - 1, wanted).round().astype(int))


def _slices(img, idx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(np.asarray(img.dataobj, np.float32), 2, 0)[idx])


def direction_names(protocols: list[str], directions: list[str] | None) -> list[str]:
    """The directions asked for (default: every direction of ``protocols``), checked."""
    wanted = directions or [d for d, v in DIRECTIONS.items() if v[0] in protocols]
    unknown = [d for d in wanted if d not in DIRECTIONS]
    if unknown:
        raise EvaluationError(f"unknown direction(s) {unknown}; accepted: {list(DIRECTIONS)}")
    return wanted


def load_directions(
    names: list[str], slices: int | None, data_root: Path | None, grid: int | None
) -> list[Direction]:
    """The built sets' slices of each direction (``slices`` evenly spaced, default all), checked
    against the model's ``grid``."""
    from midiffusion.data.sets import load_volumes

    volumes: dict[str, dict] = {}
    out = []
    for name in names:
        set_name, src_key, truth_key = DIRECTIONS[name]
        if set_name not in volumes:
            volumes[set_name] = load_volumes(set_name, data_root)
        vols = volumes[set_name]
        shape = vols["mask"].shape
        finer = grid is not None and shape[0] == shape[1] and shape[0] % grid == 0
        if grid is not None and not finer:
            raise EvaluationError(
                f"set {set_name} is built on a {shape[0]}x{shape[1]} grid but the model works "
                f"on {grid}x{grid}; rebuild the set on the model's grid or a multiple of it"
            )
        idx = select_slices(shape[2], slices)
        out.append(
            Direction(
                name=name,
                set_name=set_name,
                slice_index=idx,
                source=np.clip(_slices(vols[src_key], idx), 0, 1),
                mask=_slices(vols["mask"], idx) > 0,
                truth=np.clip(_slices(vols[truth_key], idx), 0, 1) if truth_key else None,
                pixel_mm2=float(np.prod(voxel_sizes(vols["mask"].affine)[:2])),
                model_grid=grid if grid is not None and shape[0] != grid else None,
            )
        )
    return out
