"""``midiffusion train --data DIR --out RUN``: train a target-modality score model (resumable)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from midiffusion.model.unet import UNet, count_parameters
from midiffusion.pipeline.devices import DEVICE_HELP, resolve_device
from midiffusion.pipeline.precision import PRECISION_HELP, PRECISIONS
from midiffusion.training import checkpoint
from midiffusion.training.checkpoint import CHECKPOINT
from midiffusion.training.config import PRESETS, TrainConfig
from midiffusion.training.data import load_training_slices
from midiffusion.training.trainer import Trainer
from model_store import ModelIntegrityError, ModelNotFoundError, ModelStore, VerifiedModel


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        help="folder of training volumes (e.g. the built t1-train set)",
    )
    parser.add_argument(
        "--config",
        default="t1w",
        help=f"a preset ({', '.join(PRESETS)}) or a JSON file of TrainConfig",
    )
    parser.add_argument(
        "-o", "--out", required=True, type=Path, help="run folder (resumed if present)"
    )
    parser.add_argument("--iterations", type=int, help="stop at this step (default: the config's)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=PRECISION_HELP,
    )
    parser.add_argument(
        "--init-from",
        metavar="MODEL[:VERSION]",
        help="start a new run from a stored model's weights (ignored when --out has a checkpoint)",
    )


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: --{exc}", file=sys.stderr)
        return 2
    try:
        config = TrainConfig.load(args.config)
        data, manifest = load_training_slices(args.data, config.grid_size)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    try:
        teacher = load_teacher(config) if config.teacher else None
    except (ValueError, ModelNotFoundError, ModelIntegrityError) as exc:
        print(f"error: teacher {config.teacher!r}: {exc}", file=sys.stderr)
        return 1
    trainer = Trainer(
        config, data, args.out, manifest, device=device, precision=args.precision, teacher=teacher
    )
    resumed = trainer.resume()
    # a distilling student starts as its teacher unless told otherwise
    init_from = args.init_from or config.teacher
    if not resumed and init_from:
        init_from_store(trainer, init_from)
    print(
        f"{'resumed at step ' + str(trainer.step) if resumed else 'new run'}: "
        f"{len(data)} slices, {count_parameters(trainer.net):,} parameters, "
        f"device {trainer.device}, out {args.out}"
    )
    (args.out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    trainer.fit(args.iterations)
    params = count_parameters(trainer.net)
    print(json.dumps({"iterations": trainer.step, "parameters": params, **trainer.compute()}))
    print(f"checkpoint: {args.out / CHECKPOINT}; loss curve: {args.out / 'loss.png'}")
    return 0


def _stored(ref: str) -> VerifiedModel:
    """The verified stored model ``NAME[:VERSION]``."""
    name, _, version = ref.partition(":")
    return ModelStore().verified(name, int(version) if version else None)


def init_from_store(trainer: Trainer, ref: str) -> None:
    """Warm start from ``NAME[:VERSION]`` of the model store (``checkpoint.warm_start``)."""
    verified = _stored(ref)
    checkpoint.warm_start(trainer, verified.card, verified.weights_path)
    print(f"initialised from {ref} (v{verified.card.version}) at step {trainer.step}")


def load_teacher(config: TrainConfig) -> UNet:
    """The frozen network a distilling config names (``checkpoint.load_network``)."""
    verified = _stored(config.teacher)
    return checkpoint.load_network(config, verified.card, verified.weights_path)
