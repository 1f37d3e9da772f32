"""What a training run is: :class:`TrainConfig`, and the named presets ``--config`` accepts.

The network, schedule and conditioning are recorded as the plain dicts their classes write
(``to_dict()``), so a run's config is JSON and the model card replays exactly these settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from midiffusion.diffusion.conditioning import ConditioningSpec
from midiffusion.diffusion.schedules import DDPMSchedule
from midiffusion.lmi import LMISettings
from midiffusion.model.unet import UNetConfig
from midiffusion.training.distill import DISTILL_STATES


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
    # a network with input kinds (UNetConfig.kinds) is told each slice's kind except for this
    # fraction of a batch, so it also serves callers that do not know the kind
    kind_dropout: float = 0.0
    # the embedding's learning rate (0: lr), scheduled as lr is; a warm start adds it at zero
    kind_lr: float = 0.0
    # guidance distillation (midiffusion.training.distill): the network learns to give in one
    # pass what ``teacher`` (a stored model, "name:version") gives with classifier-free guidance
    # of weight ``distill_guidance`` at noise levels sigma >= ``distill_sigma_min`` (0: off)
    teacher: str = ""
    distill_guidance: float = 0.0
    distill_sigma_min: float = 0.0
    # the share of a distilling batch drawn inside the guidance window (the rest uniformly):
    # below it the target is the teacher's plain prediction, which a student that starts as
    # its teacher already gives
    distill_window_share: float = 0.75
    # where a distilling batch's states come from (distill.DISTILL_STATES): "forward", training
    # slices noised to random levels; "sampler", every state the teacher's guided
    # ``distill_steps``-step sampler visits, so a batch holds batch_size x distill_steps items
    distill_states: str = "forward"
    distill_steps: int = 4
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

    def __post_init__(self) -> None:
        if self.distill_guidance and not self.teacher:
            raise ValueError("distill_guidance needs a teacher (a stored model, name:version)")
        if self.teacher and self.distill_guidance <= 0:
            raise ValueError("a teacher needs distill_guidance > 0 (the guidance it distils)")
        if self.distill_states not in DISTILL_STATES:
            raise ValueError(
                f"distill_states {self.distill_states!r}; accepted: {', '.join(DISTILL_STATES)}"
            )
        if self.distill_states == "sampler" and (not self.teacher or self.crop):
            raise ValueError(
                "distill_states 'sampler' needs a teacher and whole slices (crop 0): the "
                "teacher samples them"
            )
        if self.distill_steps < 1:
            raise ValueError(f"distill_steps must be at least 1, got {self.distill_steps}")


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
