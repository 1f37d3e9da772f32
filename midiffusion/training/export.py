"""Export: a run's EMA weights plus a model card, ready for the model store (``models publish``).

The card records how the model samples, including the intensity anchors: the training slices'
mean foreground intensity per kind (``midiffusion/pipeline/intensity.py``).
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from midiffusion.data.t1_train import HEAD_SUFFIX
from midiffusion.diffusion.conditioning import ConditioningSpec
from midiffusion.pipeline.intensity import foreground_mean
from midiffusion.training import checkpoint
from midiffusion.training.config import TrainConfig
from midiffusion.training.data import load_training_slices
from midiffusion.training.trainer import LOSS_LOG
from model_store.files import atomic_path


def _training_anchors(meta: dict, grid: int) -> dict[str, float]:
    """The training slices' mean foreground intensity: ``anchor_mean`` over the skull-stripped
    brains, and ``anchor_mean_head`` over the whole heads where the set has any."""
    data = meta.get("data", {})
    directory = Path(data.get("directory", ""))
    if not directory.is_dir():
        raise FileNotFoundError(
            f"the run's training data {str(directory)!r} is gone; it is read again for the "
            "intensity anchor: rebuild it (midiffusion data build) or publish without the anchor"
        )
    slices, found = load_training_slices(directory, grid)
    if found["files"] != data.get("files"):
        raise ValueError(
            f"{directory} now holds {found['files']}, but the run trained on {data.get('files')}"
        )
    heads = [HEAD_SUFFIX in name for name in found["files"] for _ in range(found["per_file"][name])]
    heads_arr = np.array(heads, dtype=bool)
    anchors = {"anchor_mean": round(foreground_mean(slices[~heads_arr]), 4)}
    if heads_arr.any():
        anchors["anchor_mean_head"] = round(foreground_mean(slices[heads_arr]), 4)
    return anchors


def export_model(
    run_dir: Path,
    *,
    name: str,
    target_modality: str,
    out_weights: Path,
    sampling: dict,
    data_licences: list[str] | None = None,
    notes: str = "",
    anchor: bool = True,
) -> dict:
    """Write the EMA weights of ``run_dir``'s checkpoint to ``out_weights``; return the card
    (without version and sha256, which the store fills in).

    ``anchor``: record the training slices' mean foreground intensity as the sampling's
    ``anchor_mean`` (brains) and ``anchor_mean_head`` (whole heads;
    ``midiffusion/pipeline/intensity.py``); this reads the run's training data again."""
    path = Path(run_dir) / checkpoint.CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; train first")
    meta = checkpoint.read_meta(path)
    config = TrainConfig(**meta["config"])
    if anchor:
        sampling = {**sampling, **_training_anchors(meta, config.grid_size)}
    ema = checkpoint.read_ema(path)
    with atomic_path(out_weights) as tmp:
        save_file(ema, str(tmp))
    log = Path(run_dir) / LOSS_LOG
    rows = list(csv.DictReader(log.open())) if log.is_file() else []
    tail = [float(r["loss"]) for r in rows[-50:]]
    return {
        "name": name,
        "target_modality": target_modality,
        "grid_size": config.grid_size,
        "data_range": list(ConditioningSpec.from_dict(config.conditioning).data_range),
        "parameters": int(sum(v.numel() for v in ema.values())),
        "network": config.network,
        "schedule": config.schedule,
        "conditioning": config.conditioning,
        "sampling": sampling,
        "training": {
            "iterations": int(meta["step"]),
            "config": asdict(config),
            "data": meta.get("data", {}),
            "final_loss_mean_last_50_logs": round(sum(tail) / len(tail), 6) if tail else None,
            "compute": meta.get("compute", {}),
        },
        "data_licences": data_licences or [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "notes": notes,
    }
