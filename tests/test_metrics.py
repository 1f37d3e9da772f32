"""Metrics: known values on constructed images."""

from __future__ import annotations

import numpy as np
import pytest

from midiffusion.evaluation.metrics import (
    mse,
    nmi,
    psnr,
    slice_metrics,
    ssim,
    ssim_to_each,
    summarise,
)


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    base = 0.5 + 0.3 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    return np.clip(base + 0.02 * rng.standard_normal(base.shape), 0, 1)


def test_identical_images(image):
    assert ssim(image, image) == pytest.approx(1.0)
    assert mse(image, image) == 0 and psnr(image, image) == float("inf")
    assert nmi(image, image) == pytest.approx(1.0)


def test_known_psnr_and_inverted_contrast(image):
    shifted = image + 0.1  # MSE 0.01 -> PSNR 20 dB at peak 1
    assert psnr(image, shifted) == pytest.approx(20.0)
    inverted = 1 - image
    assert ssim(image, inverted) < 0  # structure with flipped sign
    assert nmi(image, inverted) == pytest.approx(1.0, abs=1e-9)  # a bijection keeps all info
    assert ssim(image, shifted) < 1


def test_noise_is_dissimilar_and_mask_restricts(image):
    noise = np.random.default_rng(1).random(image.shape)
    assert abs(ssim(image, noise)) < 0.1 and nmi(image, noise) < 0.15
    mask = np.zeros_like(image, bool)
    mask[:, :32] = True
    half = image.copy()
    half[:, 32:] = noise[:, 32:]
    assert mse(image, half, mask) == 0


def test_slice_metrics_and_summary(image):
    rows = [
        slice_metrics(image, image, image + 0.1, None),
        slice_metrics(1 - image, image, None, None),
    ]
    assert set(rows[0]) == {"ssim_src", "nmi_src", "ssim_tar", "psnr", "mse", "nmi_tar"}
    assert set(rows[1]) == {"ssim_src", "nmi_src"}
    s = summarise(rows[:1] * 3)
    assert s["psnr"] == {"mean": pytest.approx(20.0), "std": pytest.approx(0.0), "n": 3}


def test_ssim_to_each_matches_ssim_and_honours_per_pair_masks(image):
    bank = np.stack([image, 1 - image, np.roll(image, 3, axis=1)])
    expected = [ssim(image, b) for b in bank]
    np.testing.assert_allclose(ssim_to_each(image, bank), expected)
    masks = np.zeros(bank.shape, bool)
    masks[0, :10], masks[2, 5:20, 5:20] = True, True  # the second pair's mask is empty
    got = ssim_to_each(image, bank, masks)
    assert got[0] == pytest.approx(ssim(image, bank[0], masks[0]))
    assert got[1] == 0.0 and got[2] == pytest.approx(ssim(image, bank[2], masks[2]))
