"""Target-only training of the LMI-conditioned score model.

Every step: draw target slices y0 (flipped left-right at random), a noise level, and noise; build
the VE state ``x = y0 + sigma * eps``; compute the condition with the model's own
``ConditioningSpec`` (the very function the sampler calls: cross-LMI of y0 against the state as
LMI sees it, and the self-LMI of y0, banked once per slice since flips commute with LMI); drop the
condition for ``cond_dropout`` of the batch; regress epsilon, or, when the config names a
teacher, the teacher's guided prediction (``midiffusion.training.distill``), on those states or
on the states the teacher's own sampler visits (``distill_states``).

Differences from the published recipe, on purpose: data in [-1,1]; no blur
augmentation; no time-delay trick (sampling has none either); per-pixel mean instead of a sum;
EMA 0.999 (fits 10-20k steps); condition dropout for guidance and the SDEdit baseline.

Checkpoints: ``midiffusion.training.checkpoint``.
"""

from __future__ import annotations

import csv
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from midiffusion.diffusion.conditioning import ConditioningSpec
from midiffusion.diffusion.schedules import DDPMSchedule, ve_to_vp
from midiffusion.model.unet import UNet, UNetConfig, kind_index
from midiffusion.pipeline.precision import network_autocast, resolve_precision
from midiffusion.training import augment, checkpoint
from midiffusion.training.config import TrainConfig
from midiffusion.training.distill import (
    distill_timesteps,
    guided_targets,
    mixed_targets,
    sampler_states,
)

LOSS_LOG = "loss.csv"


def _crop(batch: torch.Tensor, corners: list[list[int]], size: int) -> torch.Tensor:
    """``size`` x ``size`` windows of (N, C, H, W) ``batch``, one top-left corner per image."""
    return torch.stack(
        [im[:, i : i + size, j : j + size] for im, (i, j) in zip(batch, corners, strict=True)]
    )


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        data: np.ndarray,
        out_dir: Path,
        data_manifest: dict | None = None,
        device: str = "cpu",
        precision: str = "auto",
        teacher: UNet | None = None,
    ) -> None:
        """``teacher``: the frozen network of ``config.teacher``, needed when the config
        distils guidance (``midiffusion.training.distill``)."""
        self.config, self.out_dir, self.device = config, Path(out_dir), torch.device(device)
        if bool(config.teacher) != (teacher is not None):
            raise ValueError(
                f"the config's teacher is {config.teacher!r}: pass its network exactly when the "
                "config names one"
            )
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.device).eval().requires_grad_(False)
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
        self.opt = torch.optim.Adam(_param_groups(self.net, config), lr=config.lr)
        self.schedule = DDPMSchedule.from_dict(config.schedule)
        self.spec = ConditioningSpec.from_dict(config.conditioning)
        self.sigmas = self.schedule.sigmas.float()
        self.compute_seconds = 0.0  # training wall time over every run in this folder
        self.gen = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.data = torch.from_numpy(data).unsqueeze(1)
        self.kinds = None  # each slice's input kind, for a network told kinds
        if self.net.kind_emb is not None:
            if teacher is not None and config.distill_states == "sampler":
                raise ValueError("distilling along the teacher's sampler does not tell input kinds")
            self.kinds = _slice_kinds(self.data_manifest, len(data))
        # without augmentation the self-LMI of every training slice is computed once (flips
        # commute with LMI); augmented slices and sources need theirs each step
        self.self_maps: torch.Tensor | None = None
        if not (config.spatial_aug or config.recontrast):
            with torch.no_grad():
                self.self_maps = torch.cat(
                    [self.spec.self_map(chunk) for chunk in self.data.split(64)]
                )

    # --- one step ---------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, ...]:
        """(target slices, their conditioning source, the source's self-LMI, their input kinds
        or None for a network without kinds)."""
        cfg = self.config
        n = cfg.batch_size
        idx = torch.randint(len(self.data), (n,), generator=self.gen)
        kind = None
        if self.kinds is not None:
            told = torch.rand(n, generator=self.gen) >= cfg.kind_dropout
            kind = self.kinds[idx] * told
        flip = torch.rand(n, generator=self.gen) < 0.5
        y = self.data[idx].clone()
        # mirror about the midline: axis -2 runs right-left (data/sets.py); axis -1 is anterior,
        # and a front-back flip would teach the prior brains that do not exist
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
        return y, src, s, kind

    def _timesteps(self) -> torch.Tensor:
        """Antithetic draw, as published: t and T-1-t in equal numbers; a distilling run draws
        its own (``distill.distill_timesteps``)."""
        cfg = self.config
        if self.teacher is not None:
            return distill_timesteps(
                self.schedule,
                cfg.batch_size,
                cfg.distill_sigma_min,
                cfg.distill_window_share,
                self.gen,
            )
        n, T = cfg.batch_size, self.schedule.num_timesteps
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
            # a checkpoint from before the groups had their own rates has no lr_scale
            group["lr"] = self.learning_rate(self.step) * group.get("lr_scale", 1.0)
        if self.teacher is not None and cfg.distill_states == "sampler":
            x_vp, t, cond, keep, target, kind = self._sampler_batch()
        else:
            x_vp, t, cond, keep, target, kind = self._noised_batch()
        with network_autocast(self.precision, self.device):
            pred = self.net(x_vp, t.float(), cond, keep, kind)
        loss = F.mse_loss(pred.float(), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step += 1
        self._update_ema()
        return loss.item()

    def _noised_batch(self) -> tuple[torch.Tensor, ...]:
        """(x_vp, t, cond, keep, target, kind): training slices noised to drawn levels; the
        target is the noise, or a distilling run's teacher's prediction there."""
        cfg = self.config
        y01, src01, self_map, kind = self._batch()
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
        target = eps
        if self.teacher is not None:
            target = guided_targets(
                self.teacher,
                x_vp,
                t,
                cond,
                keep,
                sigma,
                cfg.distill_guidance,
                cfg.distill_sigma_min,
                self.precision,
            )
        return x_vp, t, cond, keep, target, kind

    def _sampler_batch(self) -> tuple[torch.Tensor, ...]:
        """(x_vp, t, cond, keep, target, kind): the states the teacher's sampler visits for a
        batch of sources (``distill.sampler_states``), with the teacher's targets there."""
        cfg = self.config
        assert self.teacher is not None
        _, src01, self_map, _ = self._batch()
        x_vp, t, cond, sigma, eps_c, eps_u = sampler_states(
            self.teacher,
            self.schedule,
            self.spec,
            src01.to(self.device),
            self_map.to(self.device),
            cfg.distill_steps,
            cfg.distill_guidance,
            cfg.distill_sigma_min,
            self.precision,
            self.gen,
        )
        keep = (torch.rand(len(x_vp), generator=self.gen) >= cfg.cond_dropout).to(self.device)
        target = mixed_targets(
            eps_c, eps_u, keep, sigma, cfg.distill_guidance, cfg.distill_sigma_min
        )
        return x_vp, t, cond, keep, target, None

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
            e.lerp_(p, 1 - decay)
        for e, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            e.copy_(b)

    # --- checkpoints (midiffusion.training.checkpoint) ------------------------------------------
    def save(self) -> Path:
        return checkpoint.save(self)

    def resume(self) -> bool:
        return checkpoint.resume(self)

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
        if not (self.out_dir / checkpoint.CHECKPOINT).exists():
            self.save()  # a warm start asked for no iterations: its weights, as a run to publish
        plot_loss(log_path, self.out_dir / "loss.png")


def _param_groups(net: UNet, config: TrainConfig) -> list[dict]:
    """Adam's parameter groups, each with its share of the scheduled rate: the input-kind
    embedding at ``kind_lr`` (it starts at zero in a warm start and has far to go), the rest at
    ``lr``."""
    kind = [] if net.kind_emb is None else list(net.kind_emb.parameters())
    rest = [p for p in net.parameters() if all(p is not k for k in kind)]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if kind:
        groups.append({"params": kind, "lr_scale": (config.kind_lr or config.lr) / config.lr})
    return groups


def _slice_kinds(manifest: dict, slices: int) -> torch.Tensor:
    """Each training slice's input kind index (``kind_index``), from the data manifest's files
    in order, their slice counts and their kinds (``training.data.load_training_slices``)."""
    if "kind_per_file" not in manifest:
        raise ValueError(
            "this network is told input kinds, but the training data's manifest names none "
            "(load the data with midiffusion.training.data.load_training_slices)"
        )
    kinds = [
        kind_index(manifest["kind_per_file"][f])
        for f in manifest["files"]
        for _ in range(manifest["per_file"][f])
    ]
    if len(kinds) != slices:
        raise ValueError(f"the manifest counts {len(kinds)} slices, the data holds {slices}")
    return torch.tensor(kinds)


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
