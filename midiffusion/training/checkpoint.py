"""Checkpoints: one safetensors file per run (weights, EMA, Adam state, RNG states; the step,
config, data and compute in its metadata), replaced atomically, so a killed run resumes exactly
where it stopped. Also the warm start from a stored model's weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from midiffusion.diffusion.conditioning import ConditioningSpec
from midiffusion.model.unet import UNet, UNetConfig
from model_store.files import atomic_path

if TYPE_CHECKING:
    from midiffusion.training.config import TrainConfig
    from midiffusion.training.trainer import Trainer
    from model_store.card import ModelCard

CHECKPOINT = "checkpoint.safetensors"


def write(path: Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {k: v.contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})


def read_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["meta"])


def read_ema(path: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint, keyed as the network's state dict."""
    return {k[4:]: v for k, v in load_file(str(path)).items() if k.startswith("ema.")}


def save(trainer: Trainer) -> Path:
    state: dict[str, torch.Tensor] = {}
    for k, v in trainer.net.state_dict().items():
        state[f"model.{k}"] = v.cpu()
    for k, v in trainer.ema.state_dict().items():
        state[f"ema.{k}"] = v.cpu()
    opt_state = trainer.opt.state_dict()
    for i, s in opt_state["state"].items():
        for k, v in s.items():
            state[f"opt.{i}.{k}"] = torch.as_tensor(v).cpu()
    state["rng.data"] = trainer.gen.get_state()
    state["rng.torch"] = torch.get_rng_state()
    meta = {
        "step": trainer.step,
        "config": asdict(trainer.config),
        "param_groups": opt_state["param_groups"],
        "data": trainer.data_manifest,
        "compute": trainer.compute(),
    }
    path = trainer.out_dir / CHECKPOINT
    write(path, state, meta)
    return path


def resume(trainer: Trainer) -> bool:
    """Load the run folder's checkpoint into ``trainer``; False when there is none."""
    path = trainer.out_dir / CHECKPOINT
    if not path.is_file():
        return False
    meta = read_meta(path)
    if meta["config"] != asdict(trainer.config):
        raise ValueError(f"{path} was written with another config; use a new --out folder")
    state = load_file(str(path))
    trainer.net.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    trainer.ema.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ema.")})
    opt_state: dict = {"state": {}, "param_groups": meta["param_groups"]}
    for k, v in state.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            opt_state["state"].setdefault(int(i), {})[name] = v
    trainer.opt.load_state_dict(opt_state)
    trainer.gen.set_state(state["rng.data"])
    torch.set_rng_state(state["rng.torch"])
    trainer.step = int(meta["step"])
    trainer.compute_seconds = float(meta.get("compute", {}).get("seconds", 0.0))
    return True


def _check_compatible(config: TrainConfig, card: ModelCard, new_kinds: bool = False) -> None:
    """Refuse a stored model whose network or conditioning differ from the run's; with
    ``new_kinds``, a network without input kinds may start one that has them."""
    network = UNetConfig.from_dict(card.network.model_dump())
    wanted = UNetConfig.from_dict(config.network)
    if new_kinds and network.kinds == 0:
        wanted = replace(wanted, kinds=0)
    if network != wanted:
        raise ValueError(f"{card.name} v{card.version} has another network than this config")
    conditioning = ConditioningSpec.from_dict(card.conditioning.model_dump())
    if conditioning != ConditioningSpec.from_dict(config.conditioning):
        raise ValueError(f"{card.name} v{card.version} was trained with other conditioning")


def load_network(config: TrainConfig, card: ModelCard, weights: Path) -> UNet:
    """A stored model's network (verified weights), checked against the run's config."""
    _check_compatible(config, card)
    net = UNet(UNetConfig.from_dict(config.network))
    net.load_state_dict(load_file(str(weights)), strict=True)
    return net


def warm_start(trainer: Trainer, card: ModelCard, weights: Path) -> None:
    """Start from a stored model (its card and verified weights): the EMA weights become both the
    weights and the EMA; the step count and the compute used continue from the card's, so the
    next card counts the whole history. Adam's moments start fresh. A network that gains input
    kinds keeps its new embedding at zero, so it starts as the stored one."""
    _check_compatible(trainer.config, card, new_kinds=True)
    state = load_file(str(weights))
    if trainer.net.kind_emb is not None and "kind_emb.weight" not in state:
        state["kind_emb.weight"] = torch.zeros_like(trainer.net.kind_emb.weight)
    trainer.net.load_state_dict(state)
    trainer.ema.load_state_dict(state)
    trainer.step = int(card.training.get("iterations", 0))
    trainer.compute_seconds = float(card.training.get("compute", {}).get("seconds", 0.0))
