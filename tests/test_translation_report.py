"""translate_with_report: the same output as translate(), plus the spread between the averaged
draws (as a map in the input's geometry), the quality figures and the out-of-training share."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from midiffusion.pipeline.quality import DrawSpread, lmi_similarity, translation_quality
from midiffusion.pipeline.translate import Translator, outside_training_fraction, plan_slices


def _head(shape: tuple[int, int, int]) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 1.4) ** 2 < 1
    return (inside * (60 + 40 * (x < 0))).astype(np.float32)


@pytest.fixture(scope="module")
def paired(tiny_model_store) -> Translator:
    """The tiny model with the serving model's way of sampling: antithetic pairs of draws."""
    v = tiny_model_store.verified("tiny")
    card = v.card.model_copy(
        update={"sampling": v.card.sampling.model_copy(update={"samples": 2, "antithetic": True})}
    )
    return Translator.load(card, v.weights_path, precision="fp32")


LPS = np.array([[-1.0, 0, 0, 90], [0, -1.2, 0, 100], [0, 0, 2.0, -50], [0, 0, 0, 1]])


def test_the_report_leaves_the_translation_bit_identical(paired: Translator) -> None:
    img = nib.Nifti1Image(_head((40, 48, 5)), LPS)
    plain = paired.translate(img, steps=3, seed=4)
    report = paired.translate_with_report(img, steps=3, seed=4)
    assert np.array_equal(np.asarray(report.image.dataobj), np.asarray(plain.dataobj))
    assert report.samples == 2 and report.slices == 5
    assert report.sample_seconds > 0 and report.other_seconds > 0


def test_the_uncertainty_map_is_the_draws_spread_in_the_input_geometry(paired: Translator) -> None:
    img = nib.Nifti1Image(_head((40, 48, 5)), LPS)
    report = paired.translate_with_report(img, steps=3, seed=4)
    spread = report.uncertainty
    assert spread.shape == img.shape
    assert np.array_equal(spread.affine, report.image.affine)  # the result's own geometry
    np.testing.assert_allclose(spread.affine, img.affine, atol=1e-6)  # (the header is float32)
    data = np.asarray(spread.dataobj)
    assert spread.get_data_dtype() == np.float32
    inside = img.get_fdata() > 0
    assert not data[~inside].any()  # background stays background
    assert data[inside].max() > 0.01  # two draws of a barely trained model disagree
    quality = report.quality
    figures = {"nmi_source", "lmi_source", "sample_spread", "outside_training_fraction"}
    assert set(quality) == figures
    assert 0 < quality["sample_spread"] < 1  # two draws in [0, 1]: at most 1/sqrt(2)
    assert 0 < quality["nmi_source"] <= 1 and 0 < quality["lmi_source"] <= 1
    assert quality["outside_training_fraction"] == 0.0


def test_one_draw_has_no_spread(tiny_model_store) -> None:
    v = tiny_model_store.verified("tiny")
    single = Translator.load(v.card, v.weights_path, precision="fp32")
    assert single.sampling.samples == 1
    report = single.translate_with_report(nib.Nifti1Image(_head((32, 32, 3)), np.eye(4)), steps=2)
    assert report.quality["sample_spread"] is None
    assert not np.asarray(report.uncertainty.dataobj).any()


def test_draw_spread_matches_numpy_whatever_the_batching(paired: Translator) -> None:
    src = np.stack([_head((32, 32, 1))[:, :, 0] / 100.0] * 3).astype(np.float32)
    seen: list[tuple[int, np.ndarray]] = []
    spread = DrawSpread()

    def sink(first: int, draws: np.ndarray) -> None:
        seen.append((first, draws.copy()))
        spread.add(first, draws)

    steps: list[float] = []
    mean = paired.translate_slices(
        src, steps=3, seed=1, samples=4, batch_size=2, on_draws=sink, step_seconds=steps.append
    )
    # the sinks change nothing, and every step of every batch was timed
    again = paired.translate_slices(src, steps=3, seed=1, samples=4, batch_size=2)
    assert np.array_equal(mean, again)
    assert len(steps) == 3 * sum(4 // k for k in (1, 2)) and min(steps) > 0
    draws = np.zeros((4, 3, 32, 32))
    count = np.zeros(3, int)
    for first, batch in seen:
        for d in batch:
            draws[count[first], first : first + d.shape[0]] = d
            count[first : first + d.shape[0]] += 1
    np.testing.assert_allclose(draws.mean(0), mean, atol=1e-6)
    np.testing.assert_allclose(spread.std(), draws.std(0, ddof=1), atol=1e-5)


def test_draw_spread_refuses_a_single_draw() -> None:
    spread = DrawSpread()
    with pytest.raises(ValueError, match="no draws"):
        spread.std()
    spread.add(0, np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="at least two draws"):
        spread.std()


def test_quality_figures_rank_a_faithful_output_above_noise() -> None:
    rng = np.random.default_rng(0)
    source = np.stack([_head((48, 48, 1))[:, :, 0] / 100.0] * 2).astype(np.float32)
    mask = source > 0
    inverted = np.where(mask, 1.0 - source, 0.0).astype(np.float32)  # another contrast
    noise = np.where(mask, rng.random(source.shape), 0.0).astype(np.float32)
    good = translation_quality(inverted, source, mask, None)
    bad = translation_quality(noise, source, mask, np.full(source.shape, 0.2, np.float32))
    assert good["nmi_source"] > bad["nmi_source"] + 0.3
    assert good["lmi_source"] > bad["lmi_source"]
    assert lmi_similarity(inverted, source, mask) == good["lmi_source"]
    assert good["sample_spread"] is None and bad["sample_spread"] == pytest.approx(0.2)
    empty = translation_quality(noise, source, np.zeros_like(mask), None)
    assert set(empty.values()) == {None}


def test_outside_training_fraction_follows_the_input_warnings(paired: Translator) -> None:
    def fraction(data: np.ndarray, affine: np.ndarray) -> float:
        img = nib.Nifti1Image(data, affine)
        plan, _, mask = plan_slices(img, data, paired.grid)
        return outside_training_fraction(
            plan, plan.to_grid(mask.astype(np.float32)) > 0.5, paired.card
        )

    assert fraction(_head((40, 48, 5)), np.eye(4)) == 0.0
    coarse = np.diag([4.0, 4.0, 1.0, 1.0])  # 4 mm in-plane voxels: every slice is outside
    assert fraction(_head((40, 48, 5)), coarse) == 1.0
    coronal = _head((40, 48, 1)).reshape(40, 1, 48)  # one coronal slice
    assert fraction(coronal, np.eye(4)) == 1.0
    # two head-sized sections (more than 220 cm^2) and two brain-sized ones, 1 mm voxels
    yy, xx = np.mgrid[:200, :240]
    d2 = ((yy - 100) / 95.0) ** 2 + ((xx - 120) / 115.0) ** 2
    big, small = (d2 < 1) * 80.0, (d2 < 0.3) * 80.0
    mixed = np.stack([big, big, small, small], axis=2).astype(np.float32)
    assert fraction(mixed, np.eye(4)) == 0.5
