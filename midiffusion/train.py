"""Target-only training of the LMI-conditioned score model.

Every step: draw target slices y0 (flipped left-right at random), a noise level, and noise; build
the VE state ``x = y0 + sigma * eps``; compute the condition with the model's own
``ConditioningSpec`` (the very function the sampler calls: cross-LMI of y0 against the state as
LMI sees it, and the self-LMI of y0, banked once per slice since flips commute with LMI); drop the
condition for ``cond_dropout`` of the batch; regress epsilon.

Differences from the published recipe (algorithm.md 2.3, 7.8), on purpose: data in [-1,1]; no blur
augmentation; no time-delay trick (sampling has none either); per-pixel mean instead of a sum;
EMA 0.999 (fits 10-20k steps); condition dropout for guidance and the SDEdit baseline.

Checkpoints are one safetensors file (weights, EMA, Adam state, RNG states; the step and config in
its metadata), replaced atomically, so a killed run resumes exactly where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from midiffusion.diffusion.conditioning import ConditioningSpec
from midiffusion.diffusion.schedules import DDPMSchedule, ve_to_vp
from midiffusion.lmi import LMISettings
from midiffusion.model.unet import UNet, UNetConfig, count_parameters
from midiffusion.pipeline.devices import DEVICE_HELP, resolve_device
from midiffusion.pipeline.intensity import foreground_mean
from midiffusion.pipeline.precision import (
    PRECISION_HELP,
    PRECISIONS,
    network_autocast,
    resolve_precision,
)
from midiffusion.training import augment

CHECKPOINT = "checkpoint.safetensors"
LOSS_LOG = "loss.csv"


@dataclass
class TrainConfig:
    network: dict = field(default_factory=lambda: UNetConfig(base_channels=40).to_dict())
    schedule: dict = field(default_factory=lambda: DDPMSchedule().to_dict())
    # explicit LMI settings (not "the mode's default"), so the card replays exactly these
    conditioning: dict = field(
        default_factory=lambda: ConditioningSpec(lmi=LMISettings(bandwidth="auto")).to_dict()
    )
    grid_size: int = 128
    batch_size: int = 4
    # train on random crop x crop windows of the slices (0: whole slices). The network is fully
    # convolutional, so crops make an iteration cheaper while sampling stays at the full grid.
    crop: int = 0
    lr: float = 2e-4
    # from this step on the learning rate falls along a half cosine to lr_min at `iterations`
    # (0: constant). Annealing the end of a constant-rate run settles the weights' noise.
    lr_decay_from: int = 0
    lr_min: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    cond_dropout: float = 0.1
    # fraction of each batch whose slices are rotated, scaled and warped (augment.spatial)
    spatial_aug: float = 0.0
    # fraction of each batch conditioned on a randomly re-contrasted copy of the target instead
    # of the target itself (augment.recontrast): the prior learns LMI maps of other contrasts
    recontrast: float = 0.0
    iterations: int = 20000
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0

    @classmethod
    def load(cls, path_or_preset: str) -> TrainConfig:
        if path_or_preset in PRESETS:
            return cls(**PRESETS[path_or_preset])
        path = Path(path_or_preset)
        if not path.is_file():
            raise ValueError(
                f"config {path_or_preset!r} is neither a preset ({', '.join(PRESETS)}) "
                "nor a JSON file"
            )
        data = json.loads(path.read_text())
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)} in {path}")
        return cls(**data)


PRESETS: dict[str, dict] = {
    # the shipped T1 model: ~3.5M parameters, conditioned on randomised contrasts
    "t1w": {"cond_dropout": 0.2, "spatial_aug": 0.5, "recontrast": 0.8},
    # the published pipeline's conditioning: faithful LMI (NMI) on the raw VP state, data in
    # [0,1]; needed for the benchmark's "faithful" method (1000-step DDPM at sampling)
    "t1w-faithful": {
        "conditioning": ConditioningSpec(
            lmi=LMISettings(mode="faithful", normalized=True), state="raw_vp", data_range=(0.0, 1.0)
        ).to_dict(),
    },
    # a few-second model for tests and smoke runs
    "tiny": {
        "network": UNetConfig(
            base_channels=8,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(),
            grid_size=32,
            dropout=0.0,
        ).to_dict(),
        "grid_size": 32,
        "batch_size": 4,
        "iterations": 20,
        "checkpoint_every": 5,
        "log_every": 1,
        "lr": 1e-3,
    },
}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def load_training_slices(data_dir: Path, grid: int) -> tuple[np.ndarray, dict]:
    """All axial slices (N, G, G) in [0,1] of the NIfTI volumes in ``data_dir`` (masks skipped),
    plus the set's manifest when it has one."""
    files = sorted(
        p
        for p in Path(data_dir).iterdir()
        if p.name.endswith((".nii", ".nii.gz")) and "mask" not in p.name
    )
    if not files:
        raise ValueError(
            f"{data_dir}: no NIfTI volumes found (expected a built set, e.g. t1-train)"
        )
    slices = []
    for f in files:
        vol = np.asarray(nib.load(str(f)).dataobj, dtype=np.float32)
        if vol.ndim != 3 or vol.shape[:2] != (grid, grid):
            raise ValueError(f"{f}: shape {vol.shape}, expected ({grid}, {grid}, n) slices")
        slices.append(np.moveaxis(vol, 2, 0))
    data = np.clip(np.concatenate(slices), 0, 1)
    manifest_path = Path(data_dir) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest = {
        "directory": str(data_dir),
        "files": [f.name for f in files],
        "per_file": {f.name: len(s) for f, s in zip(files, slices, strict=True)},
        "slices": len(data),
        "manifest": manifest,
    }
    return data, manifest


def _crop(batch: torch.Tensor, corners: list[list[int]], size: int) -> torch.Tensor:
    """``size`` x ``size`` windows of (N, C, H, W) ``batch``, one top-left corner per image."""
    return torch.stack(
        [im[:, i : i + size, j : j + size] for im, (i, j) in zip(batch, corners, strict=True)]
    )


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def _save_checkpoint(path: Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"meta": json.dumps(meta)}
    )
    os.replace(tmp, path)


def _read_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["meta"])


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        data: np.ndarray,
        out_dir: Path,
        data_manifest: dict | None = None,
        device: str = "cpu",
        precision: str = "auto",
    ) -> None:
        self.config, self.out_dir, self.device = config, Path(out_dir), torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        stride = 2 ** (len(config.network["channel_mults"]) - 1)
        if config.crop and not (
            stride <= config.crop <= config.grid_size and config.crop % stride == 0
        ):
            raise ValueError(
                f"crop {config.crop}: use 0 (whole slices) or a multiple of {stride} "
                f"(the network's downsampling) up to the grid size {config.grid_size}"
            )
        self.data_manifest = data_manifest or {}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)  # model initialisation
        self.net = UNet(UNetConfig.from_dict(config.network)).to(self.device)
        self.ema = UNet(UNetConfig.from_dict(config.network)).to(self.device).eval()
        self.ema.load_state_dict(self.net.state_dict())
        self.ema.requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.schedule = DDPMSchedule.from_dict(config.schedule)
        self.spec = ConditioningSpec.from_dict(config.conditioning)
        self.sigmas = self.schedule.sigmas.float()
        self.compute_seconds = 0.0  # training wall time over every run in this folder
        self.gen = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.data = torch.from_numpy(data).unsqueeze(1)
        # without augmentation the self-LMI of every training slice is computed once (flips
        # commute with LMI); augmented slices and sources need theirs each step
        self.self_maps: torch.Tensor | None = None
        if not (config.spatial_aug or config.recontrast):
            with torch.no_grad():
                self.self_maps = torch.cat(
                    [self.spec.self_map(chunk) for chunk in self.data.split(64)]
                )

    # --- one step ---------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target slices, their conditioning source, the source's self-LMI)."""
        cfg = self.config
        n = cfg.batch_size
        idx = torch.randint(len(self.data), (n,), generator=self.gen)
        flip = torch.rand(n, generator=self.gen) < 0.5
        y = self.data[idx].clone()
        # mirror about the midline: axis -2 runs right-left (sets.py); axis -1 is anterior, and a
        # front-back flip would teach the prior brains that do not exist
        y[flip] = y[flip].flip(-2)
        if self.self_maps is not None:  # no augmentation: the banked self-LMI (flips commute)
            src, s = y, self.self_maps[idx].clone()
            s[flip] = s[flip].flip(-2)
        else:
            warp = torch.rand(n, generator=self.gen) < cfg.spatial_aug
            if warp.any():
                y[warp] = augment.spatial(y[warp], self.gen).clamp(0, 1)
            src = y.clone()
            other = torch.rand(n, generator=self.gen) < cfg.recontrast
            if other.any():
                src[other] = augment.recontrast(y[other], self.gen)
            with torch.no_grad():
                s = self.spec.self_map(src.to(self.device)).cpu()
        if cfg.crop:
            corners = torch.randint(cfg.grid_size - cfg.crop + 1, (n, 2), generator=self.gen)
            y, src, s = (_crop(v, corners.tolist(), cfg.crop) for v in (y, src, s))
        return y, src, s

    def _timesteps(self) -> torch.Tensor:
        """Antithetic draw, as published: t and T-1-t in equal numbers."""
        n, T = self.config.batch_size, self.schedule.num_timesteps
        t = torch.randint(T, (n // 2 + 1,), generator=self.gen)
        return torch.cat([t, T - 1 - t])[:n]

    def learning_rate(self, step: int) -> float:
        cfg = self.config
        if not cfg.lr_decay_from or step <= cfg.lr_decay_from:
            return cfg.lr
        done = min(1.0, (step - cfg.lr_decay_from) / max(1, cfg.iterations - cfg.lr_decay_from))
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * done))

    def train_step(self) -> float:
        cfg = self.config
        for group in self.opt.param_groups:
            group["lr"] = self.learning_rate(self.step)
        y01, src01, self_map = self._batch()
        t = self._timesteps()
        eps = torch.randn(y01.shape, generator=self.gen)
        keep = torch.rand(cfg.batch_size, generator=self.gen) >= cfg.cond_dropout
        sigma = self.sigmas[t]
        y01, src01, self_map, eps, sigma, keep, t = (
            v.to(self.device) for v in (y01, src01, self_map, eps, sigma, keep, t)
        )
        x_ve = self.spec.to_model(y01) + sigma.view(-1, 1, 1, 1) * eps
        with torch.no_grad():
            cond = self.spec.condition(src01, x_ve, sigma, self_map)
        x_vp = ve_to_vp(x_ve, sigma.view(-1, 1, 1, 1))
        with network_autocast(self.precision, self.device):
            pred = self.net(x_vp, t.float(), cond, keep)
        loss = F.mse_loss(pred.float(), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step += 1
        self._update_ema()
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
            e.lerp_(p, 1 - decay)
        for e, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            e.copy_(b)

    # --- checkpoints --------------------------------------------------------------------------
    def save(self) -> Path:
        state: dict[str, torch.Tensor] = {}
        for k, v in self.net.state_dict().items():
            state[f"model.{k}"] = v.cpu()
        for k, v in self.ema.state_dict().items():
            state[f"ema.{k}"] = v.cpu()
        opt_state = self.opt.state_dict()
        for i, s in opt_state["state"].items():
            for k, v in s.items():
                state[f"opt.{i}.{k}"] = torch.as_tensor(v).cpu()
        state["rng.data"] = self.gen.get_state()
        state["rng.torch"] = torch.get_rng_state()
        meta = {
            "step": self.step,
            "config": asdict(self.config),
            "param_groups": opt_state["param_groups"],
            "data": self.data_manifest,
            "compute": self.compute(),
        }
        path = self.out_dir / CHECKPOINT
        _save_checkpoint(path, state, meta)
        return path

    def resume(self) -> bool:
        path = self.out_dir / CHECKPOINT
        if not path.is_file():
            return False
        meta = _read_meta(path)
        if meta["config"] != asdict(self.config):
            raise ValueError(f"{path} was written with another config; use a new --out folder")
        state = load_file(str(path))
        self.net.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        self.ema.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ema.")})
        opt_state: dict = {"state": {}, "param_groups": meta["param_groups"]}
        for k, v in state.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                opt_state["state"].setdefault(int(i), {})[name] = v
        self.opt.load_state_dict(opt_state)
        self.gen.set_state(state["rng.data"])
        torch.set_rng_state(state["rng.torch"])
        self.step = int(meta["step"])
        self.compute_seconds = float(meta.get("compute", {}).get("seconds", 0.0))
        return True

    def compute(self) -> dict:
        """What the run has used so far: recorded in checkpoints and then in the model card."""
        return {
            "seconds": round(self.compute_seconds, 1),
            "device": str(self.device),
            "precision": self.precision,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, iterations: int | None = None, progress: bool = True) -> None:
        total = iterations or self.config.iterations
        log_path = self.out_dir / LOSS_LOG
        _truncate_log(log_path, self.step)
        start = clock = time.monotonic()
        bar = tqdm(
            total=total, initial=self.step, disable=not progress, desc="train", dynamic_ncols=True
        )
        recent: list[float] = []
        with open(log_path, "a", newline="") as log:
            writer = csv.writer(log)
            if log.tell() == 0:
                writer.writerow(["step", "loss", "seconds"])
            while self.step < total:
                self.net.train()
                recent.append(self.train_step())
                bar.update(1)
                if self.step % self.config.log_every == 0:
                    mean = sum(recent) / len(recent)
                    writer.writerow([self.step, f"{mean:.6f}", f"{time.monotonic() - start:.1f}"])
                    log.flush()
                    bar.set_postfix(loss=f"{mean:.4f}")
                    recent.clear()
                if self.step % self.config.checkpoint_every == 0 or self.step == total:
                    now = time.monotonic()
                    self.compute_seconds += now - clock
                    clock = now
                    self.save()
        bar.close()
        plot_loss(log_path, self.out_dir / "loss.png")


def init_from_store(trainer: Trainer, ref: str) -> None:
    """Warm start: the stored EMA weights become both the weights and the EMA; the step count and
    the compute used continue from the card's, so the next card counts the whole history. Adam's
    moments start fresh."""
    from model_store import ModelStore

    name, _, version = ref.partition(":")
    verified = ModelStore().verified(name, int(version) if version else None)
    card = verified.card
    if card.network != trainer.config.network:
        raise ValueError(f"{name} v{card.version} has another network than this config")
    if card.conditioning != trainer.config.conditioning:
        raise ValueError(f"{name} v{card.version} was trained with other conditioning")
    state = load_file(str(verified.weights_path))
    trainer.net.load_state_dict(state)
    trainer.ema.load_state_dict(state)
    trainer.step = int(card.training.get("iterations", 0))
    trainer.compute_seconds = float(card.training.get("compute", {}).get("seconds", 0.0))
    print(f"initialised from {name} v{card.version} at step {trainer.step}")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past the checkpoint's step (written after it by a killed run)."""
    if not path.is_file():
        return
    rows = list(csv.reader(path.open()))
    kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step] if rows else []
    path.write_text("".join(",".join(r) + "\n" for r in kept))


def plot_loss(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_path.open()))
    if not rows:
        return
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss (per log interval)")
    k = max(1, len(loss) // 25)
    if k > 1:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"moving mean ({k})")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("epsilon MSE")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
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
    parser.add_argument("--out", required=True, type=Path, help="run folder (resumed if present)")
    parser.add_argument("--iterations", type=int, help="stop at this step (default: the config's)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
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
    config = TrainConfig.load(args.config)
    data, manifest = load_training_slices(args.data, config.grid_size)
    trainer = Trainer(config, data, args.out, manifest, device=device, precision=args.precision)
    resumed = trainer.resume()
    if not resumed and args.init_from:
        init_from_store(trainer, args.init_from)
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


# --------------------------------------------------------------------------------------------
# export: a run's EMA weights + a model card, ready for the model store
# --------------------------------------------------------------------------------------------
HEAD_SUFFIX = "_head"  # t1-train's whole-head volumes: <subject>_head.nii.gz


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
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; train first")
    meta = _read_meta(path)
    config = TrainConfig(**meta["config"])
    if anchor:
        sampling = {**sampling, **_training_anchors(meta, config.grid_size)}
    ema = {k[4:]: v for k, v in load_file(str(path)).items() if k.startswith("ema.")}
    tmp = out_weights.with_name(f".{out_weights.name}.tmp")
    save_file(ema, str(tmp))
    os.replace(tmp, out_weights)
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
