"""Through-plane figures: a striped stack is told from a continuous volume."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from midiffusion.evaluation.through_plane import gradient_energy_ratio, through_plane


def _volume(n: int = 40, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vol = ndimage.gaussian_filter(rng.random((n, size, size)), (3, 4, 4))
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    z, y, x = np.mgrid[:n, :size, :size]
    mask = ((y - size / 2) ** 2 + (x - size / 2) ** 2) < (0.4 * size) ** 2
    return vol.astype(np.float32), mask & (z >= 0)


def test_the_truth_scores_one_and_stripes_score_worse() -> None:
    truth, mask = _volume()
    same = through_plane(truth, truth, mask)
    assert same["reformat_ssim"]["sagittal"] > 0.999 and same["reformat_ssim"]["coronal"] > 0.999
    assert abs(same["gradient_energy_ratio"] - 1) < 1e-6
    assert abs(same["level_jitter_ratio"] - 1) < 1e-6
    # every slice shifted in brightness by its own amount: fine in-plane, striped through-plane
    offsets = np.random.default_rng(1).normal(0, 0.08, len(truth))[:, None, None]
    striped = np.clip(truth + offsets, 0, 1)
    bad = through_plane(striped, truth, mask)
    assert bad["gradient_energy_ratio"] > 2
    assert bad["level_jitter_ratio"] > 3
    assert bad["reformat_ssim"]["sagittal"] < same["reformat_ssim"]["sagittal"] - 0.05
    # smoothing along the slice axis goes the other way
    smooth = ndimage.uniform_filter1d(truth, 9, axis=0)
    assert gradient_energy_ratio(smooth, truth, mask) < 0.5


def test_level_jitter_sees_stripes_that_texture_hides() -> None:
    """Fine texture noise dominates the gradient energy; a 3 % level offset per slice barely
    moves it, yet it is what a reader sees as stripes in a reformat."""
    truth, mask = _volume()
    rng = np.random.default_rng(2)
    textured = truth + rng.normal(0, 0.05, truth.shape).astype(np.float32)
    levels = 1 + rng.normal(0, 0.03, len(truth))[:, None, None]
    both = through_plane(textured * levels, truth, mask)
    texture_only = through_plane(textured, truth, mask)
    assert both["gradient_energy_ratio"] < 1.1 * texture_only["gradient_energy_ratio"]
    assert both["level_jitter_ratio"] > 3 * texture_only["level_jitter_ratio"]
