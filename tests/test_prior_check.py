"""Unconditional samples of a model: the grid, the side-by-side with real slices, the SSIM check."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from midiffusion.cli.main import main
from midiffusion.data.build import write_set
from midiffusion.data.recipe import Recipe
from midiffusion.data.volumes import BuiltSet, Volume
from midiffusion.evaluation.prior_check import (
    SEPARATOR_PX,
    beside,
    nearest_ssim,
    random_slices,
    tile,
    unconditional_samples,
)
from midiffusion.io.imaging import load_png


@pytest.fixture(scope="module")
def tiny(tiny_model_store):
    v = tiny_model_store.verified("tiny")
    return v.card, v.weights_path


def test_samples_tile_into_a_padded_grid(tiny):
    images = unconditional_samples(*tiny, n=5, steps=3, seed=0)
    assert images.shape == (5, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert not np.array_equal(images[0], images[1])  # independent noise per sample
    grid = tile(images)
    assert grid.shape == (2 * 32, 3 * 32)  # 5 samples in 2 rows of 3, one tile padded
    assert np.array_equal(grid[:32, 32:64], np.rot90(images[1]))  # anterior up
    assert not grid[32:, 64:].any()


def test_a_stochastic_sampler_repeats_its_seed(tiny):
    a, b = (unconditional_samples(*tiny, 2, 3, seed=1, sampler="euler-a") for _ in range(2))
    ddim = unconditional_samples(*tiny, 2, 3, seed=1, sampler="ddim")
    assert np.array_equal(a, b) and not np.array_equal(a, ddim)


def test_nearest_ssim_finds_copies_and_mirrors_and_not_noise():
    rng = np.random.default_rng(0)
    training = np.zeros((4, 32, 32), np.float32)
    for k in range(4):  # off-centre blobs, so that a mirror image is a different picture
        training[k, 4 + 3 * k : 12 + 3 * k, 6:20] = 0.8
    mirrored = training[2, ::-1, :]
    noise = rng.random((32, 32))
    scores = nearest_ssim(np.stack([training[1], mirrored, noise]), training)
    assert scores[:2] == pytest.approx([1.0, 1.0])
    assert scores[2] < 0.2


def test_random_real_slices_sit_beside_the_samples():
    slices = np.random.default_rng(1).random((10, 8, 8))
    real = random_slices(slices, 4, seed=3)
    assert len({r.tobytes() for r in real}) == 4  # distinct
    assert all(any(np.array_equal(r, s) for s in slices) for r in real)
    assert len(random_slices(slices, 50, seed=3)) == 10
    fig = beside(np.zeros((4, 8, 8)), real)
    assert fig.shape == (16, 16 + SEPARATOR_PX + 16)
    assert np.array_equal(fig[:, 16 + SEPARATOR_PX :], tile(real))
    with pytest.raises(ValueError, match="grids differ"):
        beside(np.zeros((4, 8, 8)), real[:1])


def test_samples_command_beside_a_training_set(
    tiny_model_store, tiny_training_set, tmp_path, capsys
):
    vol = np.asarray(nib.load(tiny_training_set / "train.nii.gz").dataobj, np.float32)
    affine = np.eye(4)
    root = tmp_path / "data"
    for name, kind, key in (("t1-train", "training", "t1"), ("mni-synth", "evaluation", "t1")):
        out = root / "sets" / name
        out.mkdir(parents=True)
        write_set(
            out, name, BuiltSet(kind, [Volume(key, "image", "T1w", vol, affine, "s")], []), Recipe()
        )
    png = tmp_path / "grid.png"
    args = ["models", "--store", str(tiny_model_store.root), "samples", "tiny", "-n", "4"]
    args += ["--steps", "2", "-o", str(png), "--beside", "t1-train", "--data-dir", str(root)]
    assert main(args) == 0
    assert load_png(png).shape == (64, 64 + SEPARATOR_PX + 64)
    out = capsys.readouterr().out
    assert "beside 4 random t1-train slices" in out
    assert "samples: median" in out and "over 4" in out
    assert "unseen real T1 (MNI152, never trained on): median 1.000" in out  # the same slices


def test_samples_command_names_a_missing_set(tiny_model_store, tmp_path, capsys):
    args = ["models", "--store", str(tiny_model_store.root), "samples", "tiny", "-o"]
    args += [str(tmp_path / "g.png"), "--beside", "t1-train", "--data-dir", str(tmp_path)]
    assert main(args) == 1
    assert "run `midiffusion data build --sets t1-train" in capsys.readouterr().out
    assert not (tmp_path / "g.png").exists()
