"""Training augmentation: warped targets, re-contrasted conditioning sources, exact resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midiffusion.lmi import local_mutual_information
from midiffusion.training import augment
from midiffusion.training.checkpoint import CHECKPOINT
from midiffusion.training.config import TrainConfig
from midiffusion.training.trainer import Trainer


def _slices(n: int = 6, size: int = 64) -> torch.Tensor:
    """Brain-like slices: a disc of tissue with a dark core and a bright rim, on black."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = torch.sqrt(xx**2 + yy**2)
    img = torch.where(r < 0.8, 0.6, 0.0) + torch.where((r > 0.65) & (r < 0.8), 0.4, 0.0)
    img = torch.where(r < 0.25, 0.2, img)
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(n, 1, size, size, generator=gen) * 0.1
    return ((img + noise) * (r < 0.8)).clamp(0, 1)


def test_recontrast_keeps_anatomy_and_background_and_changes_the_contrast() -> None:
    y = _slices()
    x = augment.recontrast(y, torch.Generator().manual_seed(1))
    assert x.shape == y.shape and x.min() >= 0 and x.max() <= 1
    fg = y > 0.02
    assert x[~fg].mean() < 0.1  # the background stays dark (noise only)
    # a new contrast: not a scaled copy of the target ...
    corr = [np.corrcoef(a[m].numpy(), b[m].numpy())[0, 1] for a, b, m in zip(x, y, fg, strict=True)]
    assert min(corr) < 0.95
    # ... of the same anatomy: LMI still finds the structure shared with the target
    lmi = local_mutual_information(x, y, bandwidth="auto").similarity
    unrelated = local_mutual_information(x, y.roll(20, dims=-1), bandwidth="auto").similarity
    assert lmi[fg].mean() > unrelated[fg].mean()


def test_recontrast_draws_every_tissue_order() -> None:
    """Non-monotone maps: the dark core is sometimes brighter than the rim, sometimes darker."""
    y = _slices(n=64)
    x = augment.recontrast(y, torch.Generator().manual_seed(2))
    size = y.shape[-1]
    core, rim = (size // 2, size // 2), (size // 2, int(size * 0.86))
    brighter = x[:, 0, core[0], core[1]] > x[:, 0, rim[0], rim[1]]
    assert 0 < brighter.sum() < len(brighter)


def test_spatial_moves_anatomy_but_keeps_its_amount() -> None:
    y = _slices()
    w = augment.spatial(y, torch.Generator().manual_seed(3))
    assert w.shape == y.shape
    assert not torch.allclose(w, y)
    area_y, area_w = (y > 0.1).sum((1, 2, 3)).float(), (w > 0.1).sum((1, 2, 3)).float()
    assert ((area_w / area_y - 1).abs() < 0.3).all()  # scaled by at most ~10 % per axis


def test_augmented_batches_condition_on_the_recontrasted_source(tmp_path) -> None:
    data = _slices(n=8, size=32)[:, 0].numpy()
    config = TrainConfig.load("tiny")
    config.recontrast, config.spatial_aug = 1.0, 1.0
    trainer = Trainer(config, data, tmp_path)
    assert trainer.self_maps is None  # augmented slices need their self-LMI each step
    y, src, self_map, _kind = trainer._batch()
    assert y.shape == src.shape == self_map.shape == (config.batch_size, 1, 32, 32)
    assert not torch.allclose(src, y)
    assert torch.allclose(self_map, trainer.spec.self_map(src))
    assert np.isfinite(trainer.train_step())


@pytest.mark.parametrize("recontrast", [0.5])
def test_augmented_kill_and_resume_equals_an_uninterrupted_run(tmp_path, recontrast) -> None:
    data = _slices(n=8, size=32)[:, 0].numpy()
    config = TrainConfig.load("tiny")
    config.recontrast, config.spatial_aug = recontrast, 0.5
    straight = Trainer(config, data, tmp_path / "a")
    straight.fit(8, progress=False)
    first = Trainer(config, data, tmp_path / "b")
    first.fit(4, progress=False)
    assert (tmp_path / "b" / CHECKPOINT).is_file()
    resumed = Trainer(config, data, tmp_path / "b")
    assert resumed.resume()
    resumed.fit(8, progress=False)
    for k, v in straight.ema.state_dict().items():
        assert torch.equal(v, resumed.ema.state_dict()[k]), k
