"""Single-slice scoring: each slice translated alone, against the identity and the inversion."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from midiffusion.evaluation.directions import Direction
from midiffusion.evaluation.single_slices import markdown, rescaled, score_direction
from midiffusion.pipeline.translate import Translator

SIZE = 160


def _direction(slices: int = 3) -> Direction:
    """T2-like sources and T1-like truths of a two-tissue ellipse with a dark core, 160 x 160."""
    yy, xx = (np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2) / (SIZE / 2)
    src, tru, msk = [], [], []
    for k in range(slices):
        r = 0.7 + 0.05 * k
        inside = (xx / r) ** 2 + (yy / (0.9 * r)) ** 2 < 1
        core = (xx / (r / 3)) ** 2 + (yy / (r / 4)) ** 2 < 1
        tissue = 0.6 + 0.2 * (xx > 0.1)
        tru.append(np.where(inside, np.where(core, 0.2, tissue), 0))
        src.append(np.where(inside, np.where(core, 0.9, 1.2 - tissue), 0) * 300)
        msk.append(inside)
    return Direction(
        name="synthetic T2w->T1",
        set_name="synthetic",
        slice_index=np.arange(slices),
        source=np.stack(src).astype(np.float32),
        mask=np.stack(msk),
        truth=np.stack(tru).astype(np.float32),
        pixel_mm2=1.2**2,
    )


def test_rescaled_puts_the_mask_on_its_own_percentile() -> None:
    d = _direction(1)
    out = rescaled(d.source[0], d.mask[0])
    assert d.mask[0].sum() > 5_000
    assert out.max() == pytest.approx(1.0) and not out[~d.mask[0]].any()
    assert np.array_equal(rescaled(d.source[0] * 7, d.mask[0]), out)


def test_a_perfect_translation_beats_both_and_the_identity_only_ties() -> None:
    d = _direction()
    truths = {float(s.sum()): t for s, t in zip(d.source, d.truth, strict=True)}

    def perfect(image: nib.Nifti1Image, _seed: int) -> nib.Nifti1Image:
        return nib.Nifti1Image(truths[float(np.asarray(image.dataobj).sum())], image.affine)

    best = score_direction(d, perfect, seed=0)
    assert best.slices == 3 and best.ssim == pytest.approx(1.0) and best.psnr == float("inf")
    assert best.margin > 0.3  # inverted T2-like contrast is close but not the truth

    same = score_direction(d, lambda image, _seed: image, seed=0)
    assert same.ssim == pytest.approx(same.ssim_identity) and same.margin <= 0
    assert "**no**" in markdown([same], "x", "s") and "| yes |" in markdown([best], "x", "s")


def test_the_model_translates_each_slice_alone(tiny_model_store) -> None:
    v = tiny_model_store.verified("tiny")
    translator = Translator.load(v.card, v.weights_path)
    shapes = []

    def translate(image: nib.Nifti1Image, seed: int) -> nib.Nifti1Image:
        shapes.append(image.shape)
        return translator.translate(image, seed=seed, steps=2)

    scores = score_direction(_direction(2), translate, seed=1)
    assert shapes == [(SIZE, SIZE)] * 2
    assert np.isfinite([scores.ssim, scores.psnr, scores.ssim_identity]).all()
    assert -1 <= scores.ssim <= 1 and scores.ssim != pytest.approx(scores.ssim_identity)
