"""Input kinds: a network told whether it sees a stripped brain or a whole head, from training
(each volume's kind, judged as inference judges one) to translation (the volume's kind)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from midiffusion.cli.train import init_from_store
from midiffusion.model.unet import INPUT_KINDS, UNet, UNetConfig, kind_index
from midiffusion.pipeline.translate import Translator
from midiffusion.training.config import TrainConfig
from midiffusion.training.data import load_training_slices
from midiffusion.training.trainer import Trainer

GRID = 32


def _with_kinds(config: TrainConfig, dropout: float = 0.0) -> TrainConfig:
    config.network = {**config.network, "kinds": len(INPUT_KINDS)}
    config.kind_dropout = dropout
    return config


def _ellipse_volume(path, pixel_mm: float, slices: int = 6) -> None:
    """Tissue filling most of a 32 x 32 grid: 5 cm^2 at 1 mm pixels, 259 cm^2 at 7 mm."""
    yy, xx = np.mgrid[:GRID, :GRID]
    d2 = ((yy - GRID / 2) / 14) ** 2 + ((xx - GRID / 2) / 12) ** 2
    vol = np.stack([(0.8 - 0.4 * (d2 < 0.3)) * (d2 < 1) for _ in range(slices)], -1)
    affine = np.diag([pixel_mm, pixel_mm, 1.0, 1.0])
    image = nib.Nifti1Image(vol.astype(np.float32), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


@pytest.fixture()
def brains_and_heads(tmp_path):
    _ellipse_volume(tmp_path / "brain.nii.gz", 1.0)
    _ellipse_volume(tmp_path / "head.nii.gz", 7.0, slices=4)
    return tmp_path


def test_kind_names_are_checked():
    assert [kind_index(k) for k in (None, *INPUT_KINDS)] == [0, 1, 2]
    with pytest.raises(ValueError, match="'skull'; accepted: brain, head"):
        kind_index("skull")
    with pytest.raises(ValueError, match="at most 2"):
        UNet(UNetConfig(base_channels=8, channel_mults=(1,), kinds=3))


def test_training_data_records_each_volumes_kind(brains_and_heads):
    data, manifest = load_training_slices(brains_and_heads, GRID)
    assert manifest["kind_per_file"] == {"brain.nii.gz": "brain", "head.nii.gz": "head"}
    trainer = Trainer(
        _with_kinds(TrainConfig.load("tiny")), data, brains_and_heads / "run", manifest
    )
    # the files in order: 6 brain slices, then 4 head slices
    assert trainer.kinds.tolist() == [1] * 6 + [2] * 4
    # a network told kinds cannot train on data whose kinds are unknown
    with pytest.raises(ValueError, match="names none"):
        Trainer(_with_kinds(TrainConfig.load("tiny")), data, brains_and_heads / "other")


def test_a_network_that_gains_kinds_starts_as_the_one_it_warms_from(
    brains_and_heads, tiny_model_store, monkeypatch
):
    monkeypatch.setenv("MIDIFF_MODEL_DIR", str(tiny_model_store.root))
    data, manifest = load_training_slices(brains_and_heads, GRID)
    trainer = Trainer(
        _with_kinds(TrainConfig.load("tiny")), data, brains_and_heads / "run", manifest
    )
    init_from_store(trainer, "tiny:1")
    card, weights = _card_and_weights(tiny_model_store)
    stored = UNet(UNetConfig.from_dict(card.network.model_dump())).eval()
    stored.load_state_dict(load_file(str(weights)))
    x, t = torch.randn(3, 1, GRID, GRID), torch.tensor([10.0, 500.0, 900.0])
    cond = torch.rand(3, 2, GRID, GRID)
    trainer.net.eval()
    with torch.no_grad():
        before = stored(x, t, cond)
        for kind in (None, torch.tensor([0, 1, 2])):
            assert torch.equal(trainer.net(x, t, cond, None, kind), before)
    # training on both kinds teaches the embedding to tell them apart
    trainer.fit(trainer.step + 15, progress=False)
    rows = trainer.net.kind_emb.weight.detach()
    assert rows[1].abs().sum() > 0 and rows[2].abs().sum() > 0
    assert not torch.equal(rows[1], rows[2])
    trainer.net.eval()
    with torch.no_grad():
        told = [trainer.net(x, t, cond, None, torch.full((3,), k)) for k in (1, 2)]
    assert not torch.equal(*told)


def _card_and_weights(store):
    verified = store.verified("tiny")
    return verified.card, verified.weights_path


def _translator_told_kinds(store) -> Translator:
    """The tiny model with an input-kind embedding whose rows differ (as after training)."""
    card, weights = _card_and_weights(store)
    state = load_file(str(weights))
    network = card.network.model_copy(update={"kinds": len(INPUT_KINDS)})
    card = card.model_copy(update={"network": network})
    net = UNet(UNetConfig.from_dict(network.model_dump()))
    state["kind_emb.weight"] = torch.randn(len(INPUT_KINDS) + 1, net.kind_emb.embedding_dim)
    net.load_state_dict(state)
    return Translator(net, card)


def test_translation_tells_the_network_the_volumes_kind(tiny_model_store, tmp_path):
    t = _translator_told_kinds(tiny_model_store)
    src = np.asarray(nib.load(_head_or_brain(tmp_path, 1.0)).dataobj)[None, :, :, 0]
    run = {"steps": 2, "seed": 0}
    told = {k: t.translate_slices(src, kind=k, **run) for k in (None, *INPUT_KINDS)}
    assert not np.allclose(told["brain"], told["head"])
    assert not np.allclose(told[None], told["brain"])

    seen: list[list[int]] = []
    net = t.net

    class Recorder(torch.nn.Module):  # what the real network is told; its real output
        def forward(self, x, step, cond, mask=None, kind=None):
            seen.append(kind.tolist())
            return net(x, step, cond, mask, kind)

    t.net = Recorder()
    for pixel_mm, kind in ((1.0, "brain"), (7.0, "head")):
        seen.clear()
        t.translate(nib.load(_head_or_brain(tmp_path, pixel_mm)), steps=2)
        assert seen and {k for call in seen for k in call} == {kind_index(kind)}
    # said by the caller, the kind is not judged: a brain-sized section from the top of a head
    seen.clear()
    t.translate(nib.load(_head_or_brain(tmp_path, 1.0)), steps=2, kind="head")
    assert {k for call in seen for k in call} == {kind_index("head")}
    with pytest.raises(ValueError, match="'skull'; accepted: brain, head"):
        t.translate(nib.load(_head_or_brain(tmp_path, 1.0)), steps=2, kind="skull")


def _head_or_brain(directory, pixel_mm: float) -> str:
    path = directory / f"input_{pixel_mm:g}mm.nii.gz"
    _ellipse_volume(path, pixel_mm, slices=2)
    return str(path)


def test_the_kind_embedding_learns_at_its_own_scheduled_rate(brains_and_heads):
    data, manifest = load_training_slices(brains_and_heads, GRID)
    config = _with_kinds(TrainConfig.load("tiny"))
    config.kind_lr, config.lr_decay_from, config.lr_min = 20 * config.lr, 2, 0.0
    trainer = Trainer(config, data, brains_and_heads / "run", manifest)
    kind_params = {id(p) for p in trainer.net.kind_emb.parameters()}
    rest, kind = trainer.opt.param_groups
    assert {id(p) for p in kind["params"]} == kind_params
    assert not kind_params & {id(p) for p in rest["params"]}
    for _ in range(5):  # into the cosine decay: both rates fall together
        trainer.train_step()
        assert kind["lr"] == pytest.approx(20 * rest["lr"])
    assert 0 < rest["lr"] < config.lr


def test_sampler_distillation_refuses_a_network_told_kinds(brains_and_heads):
    data, manifest = load_training_slices(brains_and_heads, GRID)
    config = _with_kinds(TrainConfig.load("tiny"))
    config.teacher, config.distill_guidance, config.distill_states = "t1w:16", 2.0, "sampler"
    teacher = UNet(UNetConfig.from_dict({**config.network, "kinds": 0}))
    with pytest.raises(ValueError, match="does not tell input kinds"):
        Trainer(config, data, brains_and_heads / "run", manifest, teacher=teacher)
