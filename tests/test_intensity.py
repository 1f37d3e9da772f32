"""The intensity anchor: whole volumes shifted to the training data's mean, nothing else changed."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from midiffusion.pipeline.intensity import anchor_mean, foreground_mean
from midiffusion.pipeline.translate import Translator
from midiffusion.training.config import TrainConfig
from midiffusion.training.data import load_training_slices
from midiffusion.training.export import export_model
from midiffusion.training.trainer import Trainer


def _volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((3, 16, 16), bool)
    mask[:, 4:12, 3:13] = True
    return np.where(mask, rng.uniform(0.3, 0.7, mask.shape), 0).astype(np.float32), mask


def test_anchor_moves_the_mean_and_keeps_contrast_and_background():
    x, mask = _volume(np.random.default_rng(0))
    out = anchor_mean(x, mask, 0.6)
    assert out[mask].mean() == pytest.approx(0.6, abs=1e-5)
    # one shift for the whole volume: every difference inside the mask is kept
    np.testing.assert_allclose(out[mask] - x[mask], 0.6 - x[mask].mean(), atol=1e-5)
    assert not out[~mask].any()
    # values pushed past 1 are clipped, and the shift grows until the mean is reached anyway
    high = anchor_mean(x, mask, 0.95)
    assert high.max() == 1.0 and high[mask].mean() == pytest.approx(0.95, abs=1e-5)


def test_anchor_and_foreground_mean_refuse_what_they_cannot_use():
    x, mask = _volume(np.random.default_rng(1))
    with pytest.raises(ValueError, match="differ in shape"):
        anchor_mean(x, mask[:2], 0.5)
    with pytest.raises(ValueError, match="outside"):
        anchor_mean(x, mask, 1.2)
    assert np.array_equal(anchor_mean(x, np.zeros_like(mask), 0.5), x)  # nothing to anchor
    assert foreground_mean(np.array([0.0, 0.2, 0.4, 0.0])) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="foreground"):
        foreground_mean(np.zeros((2, 4, 4)))


def test_publishing_records_the_training_data_mean(tiny_model_store, tiny_training_set):
    card = tiny_model_store.card("tiny")
    data = load_training_slices(tiny_training_set, card.grid_size)[0]
    assert card.sampling.anchor_mean == pytest.approx(foreground_mean(data), abs=1e-4)


def test_publishing_the_anchor_needs_the_training_data(tiny_training_set, tmp_path):
    data_dir = shutil.copytree(tiny_training_set, tmp_path / "data")
    data, manifest = load_training_slices(data_dir, 32)
    Trainer(TrainConfig.load("tiny"), data, tmp_path / "run", manifest).fit(1, progress=False)
    shutil.rmtree(data_dir)
    kwargs = dict(name="t", target_modality="T1w", sampling={})
    with pytest.raises(FileNotFoundError, match="without the anchor"):
        export_model(tmp_path / "run", out_weights=tmp_path / "w.safetensors", **kwargs)
    card = export_model(
        tmp_path / "run", out_weights=tmp_path / "w.safetensors", anchor=False, **kwargs
    )
    assert "anchor_mean" not in card["sampling"]


def test_publishing_records_one_anchor_per_kind(tiny_training_set, tmp_path):
    """A set with whole-head volumes (<subject>_head) gets a head anchor beside the brains'."""
    data_dir = shutil.copytree(tiny_training_set, tmp_path / "data")
    brains = load_training_slices(data_dir, 32)[0]
    head = np.moveaxis(np.clip(brains * 0.5, 0, 1), 0, 2)
    nib.save(nib.Nifti1Image(head, np.eye(4)), data_dir / "subject_head.nii.gz")
    data, manifest = load_training_slices(data_dir, 32)
    Trainer(TrainConfig.load("tiny"), data, tmp_path / "run", manifest).fit(1, progress=False)
    card = export_model(
        tmp_path / "run",
        out_weights=tmp_path / "w.safetensors",
        name="t",
        target_modality="T1w",
        sampling={},
    )
    assert card["sampling"]["anchor_mean"] == pytest.approx(foreground_mean(brains), abs=1e-4)
    assert card["sampling"]["anchor_mean_head"] == pytest.approx(
        foreground_mean(np.moveaxis(head, 2, 0)), abs=1e-4
    )


def _head(slices: int) -> nib.Nifti1Image:
    x, y, z = np.meshgrid(
        np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), np.linspace(-1, 1, slices), indexing="ij"
    )
    inside = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 1.3) ** 2 < 1
    return nib.Nifti1Image((inside * (50 + 40 * (x < 0))).astype(np.float32), np.eye(4))


def _slice(size: int) -> nib.Nifti1Image:
    """A (size, size) 2D slice: an ellipse of two tissues, as `midiffusion translate` gets it."""
    yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2) / (size / 2)
    inside = (xx / 0.8) ** 2 + (yy / 0.85) ** 2 < 1
    return nib.Nifti1Image((inside * (50 + 40 * (xx < 0))).astype(np.float32), np.eye(4))


@pytest.mark.parametrize("image", [_head(24), _head(5), _slice(160)], ids=["volume", "slab", "2d"])
def test_every_input_is_anchored_unless_asked_not_to(tiny_model_store, image):
    v = tiny_model_store.verified("tiny")
    translator = Translator.load(v.card, v.weights_path)
    target = v.card.sampling.anchor_mean
    run = dict(steps=2, seed=3)
    inside = image.get_fdata() > 0
    assert inside.sum() > (5_000 if image.ndim == 2 else 0)

    auto = translator.translate(image, **run).get_fdata()
    raw = translator.translate(image, anchor=False, **run).get_fdata()
    assert auto.shape == raw.shape == image.shape
    # resampling back to the voxels and the mask's edge blur the grid's exact mean a little
    assert auto[inside].mean() == pytest.approx(target, abs=0.03)
    assert abs(raw[inside].mean() - target) > 0.05  # the tiny model's own level is elsewhere
    assert not auto[~inside].any()


def test_a_whole_head_is_told_from_a_stripped_brain_by_its_size() -> None:
    from midiffusion.pipeline.intensity import HEAD_AREA_CM2, anchor_for, input_kind, is_whole_head
    from model_store.card import SamplingSection

    yy, xx = np.mgrid[:128, :128] - 63.5
    pixel_mm2 = 1.5**2  # a 192 mm field of view on the 128 grid

    def ellipse(a_mm: float, b_mm: float) -> np.ndarray:
        return ((xx * 1.5 / a_mm) ** 2 + (yy * 1.5 / b_mm) ** 2 < 1)[None].repeat(3, 0)

    brain, head = ellipse(70, 85), ellipse(80, 100)  # 187 and 251 cm^2
    assert not is_whole_head(brain, pixel_mm2) and is_whole_head(head, pixel_mm2)
    assert np.pi * 80 * 100 / 100 > HEAD_AREA_CM2 > np.pi * 70 * 85 / 100
    brain_kind, head_kind = input_kind(brain, pixel_mm2), input_kind(head, pixel_mm2)
    assert (brain_kind, head_kind) == ("brain", "head")
    card = SamplingSection(anchor_mean=0.7, anchor_mean_head=0.4)
    assert anchor_for(card, brain_kind) == 0.7 and anchor_for(card, head_kind) == 0.4
    only_brains = SamplingSection(anchor_mean=0.7)
    assert anchor_for(only_brains, head_kind) is None  # no head anchor: none
