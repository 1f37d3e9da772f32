"""The model card (``model.json``), typed: what a model is, how it was made and how to run it.

The network, schedule and conditioning sections hold exactly what the science's ``UNetConfig``,
``DDPMSchedule`` and ``ConditioningSpec`` write with ``to_dict()``; the sampling section holds
the one definition of every sampling default. A card that does not fit is refused when it is
published or imported, not when a worker loads it. Torch-free: the gateway reads cards, and the
science imports this module for them.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

# the samplers of ``midiffusion/diffusion/samplers.py`` by name (a test keeps the two equal), for
# the cards and for the command lines that must not import torch to offer them
SamplerName = Literal["ddim", "dpmpp-2m", "ddpm", "euler-a"]
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)

# The smallest slice side, in voxels, that a translation accepts. The science refuses smaller
# slices; the gateway refuses such uploads before they are queued (on the first two array axes,
# a cheap check; the worker checks the slice plane after reorientation). Defined here because
# this torch-free module is the one both of them may import.
MIN_INPLANE = 16


def affine_is_degenerate(affine: Any) -> bool:
    """Whether a voxel-to-world affine cannot place voxels in space: a zero voxel size, or two
    voxel axes mapped onto one line (a near-zero determinant relative to the voxel sizes). The
    gateway refuses such uploads and the worker such images, with the same rule."""
    import numpy as np

    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    sizes = np.sqrt((linear**2).sum(axis=0))
    return bool(sizes.min() <= 0 or abs(np.linalg.det(linear)) <= 1e-6 * float(np.prod(sizes)))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# what a network with input kinds is told it sees, indexed from 1 (0: not told)
INPUT_KINDS = ("brain", "head")


def known_input_kind(kind: str | None) -> str | None:
    """``kind`` itself where it is one of ``INPUT_KINDS`` or None (not said); else a ValueError
    that names the accepted ones."""
    if kind is not None and kind not in INPUT_KINDS:
        raise ValueError(f"input kind {kind!r}; accepted: {', '.join(INPUT_KINDS)}")
    return kind


class NetworkSection(_Section):
    """``midiffusion.model.unet.UNetConfig.to_dict()``."""

    base_channels: int = Field(gt=0)
    channel_mults: tuple[int, ...] = Field(min_length=1)
    num_res_blocks: int = Field(ge=1)
    attention_resolutions: tuple[int, ...]
    grid_size: int = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    cond_channels: int = Field(ge=0)
    kinds: int = Field(default=0, ge=0)  # how many of INPUT_KINDS the network can be told
    extra: dict[str, Any] = Field(default_factory=dict)


class ScheduleSection(_Section):
    """``midiffusion.diffusion.schedules.DDPMSchedule.to_dict()``."""

    kind: Literal["ddpm-linear"] = "ddpm-linear"
    beta_start: float = Field(gt=0, lt=1)
    beta_end: float = Field(gt=0, lt=1)
    num_timesteps: int = Field(ge=2)

    @model_validator(mode="after")
    def _increasing(self) -> ScheduleSection:
        if self.beta_start >= self.beta_end:
            raise ValueError("need beta_start < beta_end")
        return self


class LMISection(_Section):
    """``midiffusion.lmi.LMISettings.to_dict()``; the operator checks the combinations."""

    mode: Literal["clean", "faithful"]
    patch_size: int = Field(gt=0)
    search_radius: int = Field(ge=0)
    bins: int | None
    bandwidth: float | Literal["auto"] | None
    normalized: bool


class ConditioningSection(_Section):
    """``midiffusion.diffusion.conditioning.ConditioningSpec.to_dict()``: the LMI settings and
    how the noisy state is shown to LMI."""

    lmi: LMISection
    state: Literal["range_consistent", "raw_vp"]
    data_range: tuple[float, float]


# Named sampling presets a card may offer beside its defaults (``default``): ``fast`` trades a
# measured amount of quality, stated in its note and in the model card, for speed.
DEFAULT_PRESET = "default"
PresetName = Literal["fast"]
PRESET_NAMES: tuple[str, ...] = (DEFAULT_PRESET, *get_args(PresetName))


class SamplingPreset(_Section):
    """What a preset changes in the card's sampling defaults (None: keeps the default)."""

    sampler: SamplerName | None = None
    steps: int | None = Field(default=None, ge=1)
    guidance: float | None = Field(default=None, ge=0)
    guidance_sigma_min: float | None = Field(default=None, ge=0)
    samples: int | None = Field(default=None, ge=1)
    antithetic: bool | None = None
    note: str = ""  # what it trades, as measured


class SamplingSection(_Section):
    """How the model samples where the caller leaves a setting out. These defaults are the
    project's only ones (``models publish`` writes them unless told otherwise).

    ``guidance_sigma_min``: guidance other than 1 applies only at noise levels sigma >= this;
    below it each step is one plain conditional pass (``midiffusion/diffusion/denoiser.py``).
    ``antithetic``: averaged draws pair up on opposite noises
    (``midiffusion/diffusion/samplers.noise_source``). ``anchor_mean`` / ``anchor_mean_head``:
    the training brains' / whole heads' mean foreground intensity, which whole translated
    volumes of that kind are shifted to (``midiffusion/pipeline/intensity.py``); None: off for
    that kind. ``lookup_weight`` / ``lookup_weight_head``: how much of a brain's / whole head's
    translation is read back through its source, and ``lookup_bandwidth`` the kernel on the
    source intensity (``midiffusion/pipeline/source_lookup.py``); weight 0: off.
    ``guided_weight`` / ``guided_weight_head``: how much of a brain's / whole head's translation
    is then replaced by its guided filter on the source, with ``guided_eps`` the filter's
    regulariser (``midiffusion/pipeline/guided_filter.py``); weight 0: off.
    """

    sampler: SamplerName = "ddim"
    steps: int = Field(default=20, ge=1)
    guidance: float = Field(default=1.0, ge=0)
    guidance_sigma_min: float = Field(default=0.0, ge=0)
    samples: int = Field(default=1, ge=1)
    antithetic: bool = False
    anchor_mean: float | None = Field(default=None, gt=0, lt=1)
    anchor_mean_head: float | None = Field(default=None, gt=0, lt=1)
    lookup_weight: float = Field(default=0.0, ge=0, le=1)
    lookup_weight_head: float = Field(default=0.0, ge=0, le=1)
    lookup_bandwidth: float = Field(default=0.02, gt=0, le=1)
    guided_weight: float = Field(default=0.0, ge=0, le=1)
    guided_weight_head: float = Field(default=0.0, ge=0, le=1)
    guided_eps: float = Field(default=3e-4, gt=0, le=1)
    presets: dict[PresetName, SamplingPreset] = Field(default_factory=dict)

    def guidance_text(self, guidance: float | None = None) -> str:
        """The guidance as reports print it: ``2.0 at sigma >= 3.0``, or ``1.0``; ``guidance``
        overrides this section's weight, the window stays this section's."""
        weight = self.guidance if guidance is None else guidance
        if weight != 1 and self.guidance_sigma_min > 0:
            return f"{weight} at sigma >= {self.guidance_sigma_min}"
        return f"{weight}"

    @property
    def offered_presets(self) -> tuple[str, ...]:
        """``default`` and the names of the presets this card offers."""
        return (DEFAULT_PRESET, *self.presets)

    def preset(self, name: str | None) -> SamplingSection:
        """These defaults with preset ``name`` applied (None or ``default``: unchanged)."""
        if name is None or name == DEFAULT_PRESET:
            return self
        if name not in self.presets:
            offered = ", ".join(self.offered_presets)
            raise ValueError(f"preset {name!r} is not offered by this model; offered: {offered}")
        changes = self.presets[name].model_dump(exclude={"note"}, exclude_none=True)
        return self.model_copy(update=changes)


DEFAULT_SAMPLING = SamplingSection()
# how faithful mode samples whatever its card says: the published 1000-step DDPM chain
FAITHFUL_SAMPLING = SamplingSection(sampler="ddpm", steps=1000, guidance=1.0, samples=1)


class ModelCard(BaseModel):
    """What a model is, how it was made, and how to run it (``model.json``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = Field(ge=1)
    target_modality: str
    grid_size: int = Field(gt=0)
    data_range: tuple[float, float] = (-1.0, 1.0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parameters: int = Field(ge=0)
    network: NetworkSection
    schedule: ScheduleSection
    conditioning: ConditioningSection
    sampling: SamplingSection
    training: dict[str, Any]  # data manifest, steps, compute used, final loss
    data_licences: list[str] = Field(default_factory=list)
    created: str = ""
    notes: str = ""

    @model_validator(mode="after")
    def _steps_fit_the_schedule(self) -> ModelCard:
        if self.sampling.steps > self.schedule.num_timesteps:
            raise ValueError(
                f"sampling.steps {self.sampling.steps} exceeds the schedule's "
                f"{self.schedule.num_timesteps} timesteps"
            )
        return self

    def lmi_mode(self) -> str:
        """The LMI the model was trained with (and only runs with): clean or faithful."""
        return self.conditioning.lmi.mode
