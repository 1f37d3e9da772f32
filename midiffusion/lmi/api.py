"""Local-wise mutual information (LMI): the operator that makes zero-shot translation possible.

For every pixel ``i`` LMI compares the source's p x p patch around ``i`` with target patches
around ``i + d`` for every offset ``d`` of a small search window, keeps the best (normalised)
mutual information as ``similarity`` and the target value at the winning offset as ``aligned``.
Ties go to the first offset in row-major order.

Two modes:

- ``"clean"`` (default, :mod:`midiffusion.lmi.clean`): true shifted candidate windows over a
  (2R+1)^2 search, float intensities, a sample-based Gaussian KDE (densities evaluated at the 9
  samples themselves), numerically safe for any input values, differentiable in both inputs.
  Normalised MI lies in [0, 1]; ``normalized=False`` gives MI / log(P) (P = p^2 samples), i.e.
  MI as a fraction of its ceiling of log(P) nats, also in [0, 1]. Default bandwidth "auto": per
  image, max(0.1 x robust spread, 2 x pixel-noise std), chosen by measurement (``lmi.clean``).
- ``"faithful"`` (:mod:`midiffusion.lmi.faithful`): the published operator, bit for bit in its
  rules (trunc(255 v) quantisation, p^3 bins, kernel std 8 grey levels, epsilon 1e-10, wrap-rule
  candidate windows, first-wins ties), at any image size. Raw MI is in bits, as published.

Both modes chunk their work so that peak extra memory stays bounded whatever the batch and size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple

import torch

Mode = Literal["clean", "faithful"]
_MODES = ("clean", "faithful")
CLEAN_PATCH_SIZES = (3, 5, 7)
FAITHFUL_PATCH_SIZES = (3, 5)


class LMIResult(NamedTuple):
    """``aligned``: target value at the best offset; ``similarity``: the best (N)MI score."""

    aligned: torch.Tensor
    similarity: torch.Tensor


@dataclass(frozen=True)
class LMISettings:
    """The keyword arguments of :func:`local_mutual_information`, recordable in a model card.

    ``local_mutual_information(s, x, **settings.to_dict())`` replays them.
    """

    mode: Mode = "clean"
    patch_size: int = 3
    search_radius: int = 1
    bins: int | None = None
    bandwidth: float | str | None = None
    normalized: bool = True

    def __post_init__(self) -> None:
        _validate_settings(**self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMISettings:
        if not isinstance(data, dict):
            raise ValueError(f"LMI settings must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LMI setting(s) {unknown}; accepted: {sorted(known)}")
        return cls(**data)


def local_mutual_information(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: Mode = "clean",
    patch_size: int = 3,
    search_radius: int = 1,
    bins: int | None = None,
    bandwidth: float | str | None = None,
    normalized: bool = True,
) -> LMIResult:
    """LMI of ``target`` against ``source`` (both B x 1 x H x W float tensors, same device).

    ``bandwidth``: kernel standard deviation in image intensity units (a float, for both
    images), ``"auto"`` (clean mode only: per image from its own spread, see
    :func:`midiffusion.lmi.clean.auto_bandwidth`), or ``None`` for the mode's default.
    ``bins`` only applies to faithful mode (default p^3, as published).
    Returns :class:`LMIResult` with ``aligned`` and ``similarity`` shaped like the inputs.
    """
    settings = LMISettings(
        mode=mode,
        patch_size=patch_size,
        search_radius=search_radius,
        bins=bins,
        bandwidth=bandwidth,
        normalized=normalized,
    )
    return SourceLMI(source, settings, keep=False)(target)


class SourceLMI:
    """LMI against one fixed source, for many targets: ``SourceLMI(s, settings)(x)`` is
    ``local_mutual_information(s, x, **settings.to_dict())``.

    In clean mode the source's half of the work (its bandwidth, pair kernels and entropies) is
    done once, here, which is what a sampler comparing one source with a new state at every step
    needs. Faithful mode has nothing to share and recomputes everything per call. ``keep=False``
    (a single comparison) computes the source's half chunk by chunk instead of holding it all.
    """

    def __init__(
        self, source: torch.Tensor, settings: LMISettings | None = None, *, keep: bool = True
    ) -> None:
        self.settings = settings or LMISettings()
        _validate_image("source", source)
        self.source = source
        self._clean = None
        if self.settings.mode == "clean":
            from midiffusion.lmi.clean import CleanSource

            s = self.settings
            self._clean = CleanSource(
                source,
                patch_size=s.patch_size,
                search_radius=s.search_radius,
                bandwidth=s.bandwidth,
                normalized=s.normalized,
                keep=keep,
            )

    def __call__(self, target: torch.Tensor) -> LMIResult:
        """LMI of ``target`` (shaped like the source) against the source."""
        _validate_image("target", target)  # the source was checked once, when it was given
        _validate_pair(self.source, target)
        if self._clean is not None:
            return LMIResult(*self._clean.against(target))
        from midiffusion.lmi.faithful import faithful_lmi

        s = self.settings
        return LMIResult(
            *faithful_lmi(
                self.source,
                target,
                patch_size=s.patch_size,
                bins=s.bins,
                bandwidth=s.bandwidth,
                normalized=s.normalized,
            )
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_settings(
    *,
    mode: object,
    patch_size: object,
    search_radius: object,
    bins: object,
    bandwidth: object,
    normalized: object,
) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    sizes = CLEAN_PATCH_SIZES if mode == "clean" else FAITHFUL_PATCH_SIZES
    if not _is_int(patch_size) or patch_size not in sizes:
        raise ValueError(f"patch_size for mode={mode!r} must be one of {sizes}, got {patch_size!r}")
    if not _is_int(search_radius) or search_radius < 0:
        raise ValueError(f"search_radius must be an int >= 0, got {search_radius!r}")
    if not isinstance(normalized, bool):
        raise ValueError(f"normalized must be True or False, got {normalized!r}")
    if mode == "faithful":
        r = (patch_size - 1) // 2
        if search_radius != r:
            raise ValueError(
                f"mode='faithful' searches exactly the published (p-1)/2 = {r} offsets for "
                f"patch_size={patch_size}; got search_radius={search_radius}"
            )
        if bins is not None and (not _is_int(bins) or bins < 2):
            raise ValueError(f"bins must be an int >= 2 or None (p^3), got {bins!r}")
        if bandwidth == "auto":
            raise ValueError("bandwidth='auto' is for mode='clean'; faithful takes a float or None")
    else:
        if bins is not None:
            raise ValueError(
                "bins applies to mode='faithful' only: the clean estimator is a sample-based "
                f"KDE without bins; got bins={bins!r}"
            )
    if bandwidth is None or bandwidth == "auto":
        return
    if isinstance(bandwidth, str) or not isinstance(bandwidth, int | float) or bandwidth is True:
        raise ValueError(f"bandwidth must be a positive float, 'auto' or None, got {bandwidth!r}")
    if isinstance(bandwidth, bool) or not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a positive finite float, got {bandwidth!r}")


def _validate_pair(source: torch.Tensor, target: torch.Tensor) -> None:
    if source.shape != target.shape:
        raise ValueError(
            f"source and target must have the same shape, got {tuple(source.shape)} "
            f"and {tuple(target.shape)}"
        )
    if source.device != target.device:
        raise ValueError(f"source is on {source.device} but target is on {target.device}")
    if source.dtype != target.dtype:
        raise ValueError(f"source is {source.dtype} but target is {target.dtype}; use one dtype")


def _validate_image(name: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must be shaped B x 1 x H x W, got {tuple(t.shape)}")
    if min(t.shape) < 1:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
