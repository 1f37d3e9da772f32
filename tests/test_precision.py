"""Network precision: auto picks bf16 only on bf16 hardware; bf16 runs, stays close, is seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midiffusion.pipeline.precision import native_bf16, network_autocast, resolve_precision
from midiffusion.pipeline.translate import Translator
from midiffusion.training.config import TrainConfig
from midiffusion.training.data import load_training_slices
from midiffusion.training.trainer import Trainer

CPU = torch.device("cpu")


def test_auto_follows_the_hardware_and_explicit_choices_pass_through():
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16(CPU) else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="accepted: auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


def test_bf16_autocast_really_lowers_the_network_precision():
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(8, 64)
    with network_autocast("bf16", CPU):
        assert lin(x).dtype == torch.bfloat16
    with network_autocast("fp32", CPU):
        assert lin(x).dtype == torch.float32


@pytest.fixture(scope="module")
def translators(tiny_model_store) -> dict[str, Translator]:
    v = tiny_model_store.verified("tiny")
    return {p: Translator.load(v.card, v.weights_path, precision=p) for p in ("fp32", "bf16")}


def test_bf16_translation_is_close_to_fp32_and_reproducible(translators):
    src = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    fp32 = translators["fp32"].translate_slices(src, seed=3)
    bf16 = translators["bf16"].translate_slices(src, seed=3)
    assert bf16.dtype == np.float32
    assert not np.array_equal(bf16, fp32)  # the network really ran in bfloat16
    assert np.abs(bf16 - fp32).mean() < 0.02  # ... and lands next to the float32 result
    np.testing.assert_array_equal(bf16, translators["bf16"].translate_slices(src, seed=3))


def test_bf16_training_learns_and_is_recorded(tiny_training_set, tmp_path):
    config = TrainConfig.load("tiny")
    data = load_training_slices(tiny_training_set, config.grid_size)[0]
    trainer = Trainer(config, data, tmp_path, precision="bf16")
    losses = [trainer.train_step() for _ in range(40)]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    assert trainer.compute()["precision"] == "bf16"
