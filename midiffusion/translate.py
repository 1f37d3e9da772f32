"""Whole-volume translation: volume -> grid slices -> batched guided sampling -> volume.

Geometry: the input is reoriented to RAS through its affine (never guessed), cut into axial slices
(or the one slice of a 2D image), and every slice is resampled onto the model's square grid with
one field of view per volume: the foreground's in-plane bounding box, larger side + 10 %, the same
recipe the training and evaluation sets are built with (``midiffusion/data``). Results are mapped
back to the input's own voxels, array layout, affine and header. Background stays background.

Consistency between slices: every slice starts from the same initial noise (seeded), and the
stochastic samplers add the same step noise to every slice (``samplers.shared_noise``), so
neighbouring slices with similar sources take similar paths. The flip side: the volume's overall
grey level is one draw of the prior, so whole volumes are shifted to the training data's mean
(``midiffusion/intensity.py``) where the card records it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from safetensors.torch import load_file
from scipy import ndimage

from midiffusion.conditioning import ConditioningSpec
from midiffusion.data.recipe import Recipe
from midiffusion.denoiser import LMIGuidedDenoiser
from midiffusion.imaging import output_like
from midiffusion.intensity import MIN_ANCHOR_SLICES, anchor_mean
from midiffusion.precision import resolve_precision
from midiffusion.samplers import get_sampler, noise_source, shared_noise_for_draws
from midiffusion.schedules import DDPMSchedule
from midiffusion.unet import UNet, UNetConfig
from model_store import DEFAULT_SAMPLING

# the data recipe's field of view, so inference sees brains at the scale training saw them
FOV_MARGIN = Recipe().fov_margin
FOREGROUND_THRESHOLD = 0.05  # of the normalised intensity range
MIN_INPLANE = 16  # smallest in-plane size (voxels) we accept


class TranslationCancelled(Exception):
    """Raised from inside the sampling loop when ``should_cancel()`` returns True."""


class TranslationInputError(ValueError):
    """The input cannot be translated; the message says why and what is accepted."""


Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# geometry: input array <-> RAS slices <-> model grid
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceGeometry:
    """How one volume maps onto the model grid and back."""

    shape: tuple[int, ...]  # the input's array shape (3D)
    ornt: np.ndarray  # the input's orientation (nibabel ornt), read from its affine
    ras_shape: tuple[int, int, int]
    slice_axis: int  # in RAS array space
    zooms: tuple[float, float]  # mm per voxel along the two in-plane axes
    center: tuple[float, float]  # FOV centre in in-plane voxel coordinates
    side_mm: float
    grid: int

    def grid_coords(self) -> np.ndarray:
        """Voxel coordinates (2, G, G) in the slice plane of every grid pixel centre."""
        g = (np.arange(self.grid) + 0.5 - self.grid / 2) * (self.side_mm / self.grid)
        p = self.center[0] + g / self.zooms[0]
        q = self.center[1] + g / self.zooms[1]
        return np.stack(np.meshgrid(p, q, indexing="ij"))

    def voxel_coords(self, plane_shape: tuple[int, int]) -> np.ndarray:
        """Grid coordinates (2, P, Q) of every in-plane voxel centre."""
        step = self.side_mm / self.grid
        p = (np.arange(plane_shape[0]) - self.center[0]) * self.zooms[0] / step
        q = (np.arange(plane_shape[1]) - self.center[1]) * self.zooms[1] / step
        p, q = p + self.grid / 2 - 0.5, q + self.grid / 2 - 0.5
        return np.stack(np.meshgrid(p, q, indexing="ij"))


def _as_volume(img: nib.Nifti1Image) -> np.ndarray:
    arr = np.asarray(img.dataobj, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise TranslationInputError(
            f"the image has shape {arr.shape}: accepted are 3D volumes and 2D slices "
            "(a 4D series must be split into 3D volumes first)"
        )
    if arr.size == 0:
        raise TranslationInputError("the image holds no voxels")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise TranslationInputError(
            f"the image contains {bad} NaN or infinite voxels; replace them (e.g. with 0) first"
        )
    return arr


def normalise(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intensities to [0,1] by robust percentiles, and a foreground mask.

    The 99.5th percentile of the foreground maps to 1, as in the data recipe; the background
    level (0 for skull-stripped MR, the 0.5th percentile otherwise) maps to 0.
    """
    lo = 0.0 if volume.min() >= 0 else float(np.percentile(volume, 0.5))
    x = volume - lo
    rough = float(np.percentile(x, 99.9))
    if rough <= 0:
        raise TranslationInputError("the image is constant: there is nothing to translate")
    hi = float(np.percentile(x[x > FOREGROUND_THRESHOLD * rough], 99.5))
    x01 = np.clip(x / hi, 0, 1).astype(np.float32)
    mask = x01 > FOREGROUND_THRESHOLD
    mask = ndimage.binary_opening(mask, iterations=1) if mask.sum() > 1000 else mask
    labels, n = ndimage.label(mask)
    if n > 1:  # keep the largest connected component (drops speckle in noisy backgrounds)
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return x01, mask


def plan_geometry(img: nib.Nifti1Image, volume: np.ndarray, mask: np.ndarray, grid: int):
    """Reorient ``volume``/``mask`` to RAS and choose the slice axis and field of view."""
    ornt = io_orientation(img.affine)
    to_ras = ornt_transform(ornt, axcodes2ornt("RAS"))
    vol = apply_orientation(volume, to_ras)
    msk = apply_orientation(mask, to_ras)
    ras_zooms = _ras_zooms(img, to_ras)
    singleton = [a for a in range(3) if vol.shape[a] == 1]
    slice_axis = singleton[0] if len(singleton) == 1 else 2
    plane = [a for a in range(3) if a != slice_axis]
    if min(vol.shape[a] for a in plane) < MIN_INPLANE:
        raise TranslationInputError(
            f"the slices are {vol.shape[plane[0]]}x{vol.shape[plane[1]]} voxels: at least "
            f"{MIN_INPLANE}x{MIN_INPLANE} are needed"
        )
    if not msk.any():
        raise TranslationInputError("no foreground found: the image looks empty")
    idx = np.nonzero(msk.any(axis=slice_axis))
    zooms = (float(ras_zooms[plane[0]]), float(ras_zooms[plane[1]]))
    lo = [float(i.min()) for i in idx]
    hi = [float(i.max()) for i in idx]
    # between the outermost voxel centres, as midiffusion.data.geometry.square_fov measures it
    extent_mm = max((hi[0] - lo[0]) * zooms[0], (hi[1] - lo[1]) * zooms[1])
    geom = SliceGeometry(
        shape=volume.shape,
        ornt=ornt,
        ras_shape=vol.shape,
        slice_axis=slice_axis,
        zooms=zooms,
        center=((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2),
        side_mm=extent_mm * (1 + FOV_MARGIN),
        grid=grid,
    )
    return geom, vol, msk


def _ras_zooms(img: nib.Nifti1Image, to_ras: np.ndarray) -> np.ndarray:
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    out = np.empty(3)
    for src_axis, (dst_axis, _flip) in enumerate(to_ras):
        out[int(dst_axis)] = zooms[src_axis]
    return out


def to_grid(geom: SliceGeometry, ras_volume: np.ndarray, order: int = 1) -> np.ndarray:
    """(n_slices, G, G) model-grid slices of a RAS volume."""
    slices = np.moveaxis(ras_volume, geom.slice_axis, 0).astype(np.float32)
    coords = geom.grid_coords()
    factor = (geom.side_mm / geom.grid) / np.array(geom.zooms)
    sigma = np.maximum(0.0, (factor - 1) / 2)  # mild anti-aliasing when shrinking
    out = np.empty((slices.shape[0], geom.grid, geom.grid), np.float32)
    for k, s in enumerate(slices):
        if order > 0 and sigma.max() > 0:
            s = ndimage.gaussian_filter(s, sigma)
        out[k] = ndimage.map_coordinates(s, coords, order=order, mode="constant", cval=0.0)
    return out


def from_grid(geom: SliceGeometry, grid_slices: np.ndarray) -> np.ndarray:
    """Map (n_slices, G, G) grid slices back to the input's array layout."""
    n = grid_slices.shape[0]
    plane = tuple(s for a, s in enumerate(geom.ras_shape) if a != geom.slice_axis)
    coords = geom.voxel_coords(plane)
    ras = np.empty((n, *plane), np.float32)
    for k in range(n):
        ras[k] = ndimage.map_coordinates(grid_slices[k], coords, order=1, mode="constant")
    ras = np.moveaxis(ras, 0, geom.slice_axis)
    return apply_orientation(ras, ornt_transform(axcodes2ornt("RAS"), geom.ornt))


def _draws_per_batch(slices: int, samples: int, batch_size: int) -> int:
    """How many of a slice batch's draws run together: the most that fit the batch size and
    divide ``samples`` evenly (1 when the slices alone fill the batch)."""
    return max(d for d in range(1, samples + 1) if samples % d == 0 and d * slices <= batch_size)


# --------------------------------------------------------------------------------------------
# the translator
# --------------------------------------------------------------------------------------------
class Translator:
    """A loaded target-domain model, ready to translate volumes or grid slices."""

    def __init__(
        self,
        net: UNet,
        card: dict,
        device: str | torch.device = "cpu",
        precision: str = "auto",
    ) -> None:
        self.card = card
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.net = net.to(self.device).eval()
        self.schedule = DDPMSchedule.from_dict(card["schedule"])
        self.spec = ConditioningSpec.from_dict(card["conditioning"])
        self.grid = int(card["grid_size"])
        self.sampling = {**DEFAULT_SAMPLING, **card.get("sampling", {})}
        # clean models clamp x0 estimates to the data range; the published (faithful) chain does not
        self.clip_denoised = bool(
            self.sampling.get("clip_denoised", self.spec.state == "range_consistent")
        )

    @classmethod
    def load(
        cls,
        card: dict,
        weights_path: str | Path,
        device: str | torch.device = "cpu",
        precision: str = "auto",
    ) -> Translator:
        net = UNet(UNetConfig.from_dict(card["network"]))
        state = load_file(str(weights_path), device="cpu")
        net.load_state_dict(state, strict=True)
        return cls(net, card, device, precision)

    def denoiser(self, source01: torch.Tensor | None, guidance: float) -> LMIGuidedDenoiser:
        """The model's denoiser for these sources (None: unconditional)."""
        return LMIGuidedDenoiser(
            self.net,
            self.schedule,
            self.spec,
            source01,
            guidance,
            clip=self.clip_denoised,
            precision=self.precision,
        )

    # --- grid slices (used by translate() and by the evaluation) ------------------------------
    @torch.no_grad()
    def translate_slices(
        self,
        source01: np.ndarray,
        *,
        steps: int | None = None,
        seed: int = 0,
        sampler: str | None = None,
        guidance: float | None = None,
        samples: int | None = None,
        antithetic: bool | None = None,
        batch_size: int | None = None,
        progress: Progress | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Translate (N, G, G) slices in [0,1] on the model grid; returns (N, G, G) in [0,1].

        ``samples`` > 1 averages that many translations from different initial noises: an
        estimate of the posterior mean, which loses the sampler's invented fine texture (the
        part that cannot match the patient) and costs ``samples`` times the time. ``antithetic``
        (default: the card's) pairs the draws on opposite noises (``samplers.noise_source``).
        """
        steps = int(steps or self.sampling["steps"])
        sample = get_sampler(sampler or self.sampling["sampler"])
        guidance = float(self.sampling["guidance"] if guidance is None else guidance)
        samples = int(samples or self.sampling["samples"])
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        if antithetic is None:
            antithetic = bool(self.sampling["antithetic"])
        batch_size = int(batch_size or (32 if self.device.type == "cuda" else 8))
        sigmas = self.schedule.sampling_sigmas(steps).to(self.device, torch.float32)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        # one noise per draw, shared by every slice: neighbouring slices stay consistent
        drawn = [torch.randn(1, 1, self.grid, self.grid, generator=gen) for _ in range(samples)]
        noises = [
            (sign * drawn[source]).to(self.device)
            for source, sign in (noise_source(d, antithetic) for d in range(samples))
        ]

        n = source01.shape[0]
        # (slices, draws run together): fewer slices than the batch holds (a single slice, a
        # short volume) fold several draws into one batch, so the network runs at the batch size
        batches = [
            (idx, _draws_per_batch(len(idx), samples, batch_size))
            for idx in (range(i, min(i + batch_size, n)) for i in range(0, n, batch_size))
        ]
        total = sum(samples // k for _, k in batches) * steps
        out = np.zeros_like(source01, dtype=np.float32)
        done = 0
        for idx, k in batches:
            src = torch.from_numpy(source01[idx.start : idx.stop, None]).to(self.device)
            denoiser = self.denoiser(src.repeat(k, 1, 1, 1), guidance)

            def callback(_i: int, _total: int, _x: torch.Tensor, _d: torch.Tensor) -> None:
                nonlocal done
                if should_cancel is not None and should_cancel():
                    raise TranslationCancelled("translation cancelled")
                done += 1
                if progress is not None:
                    progress(done, total)

            for first in range(0, samples, k):
                draws = range(first, first + k)
                x = torch.cat([noises[d].expand(len(idx), -1, -1, -1) for d in draws]) * sigmas[0]
                step_noise = shared_noise_for_draws(seed, draws, antithetic)
                x0 = sample(denoiser, x, sigmas, callback=callback, noise=step_noise)
                x0 = self.spec.to_unit(x0)[:, 0].float().cpu().numpy()
                out[idx.start : idx.stop] += x0.reshape(k, len(idx), *x0.shape[1:]).sum(0)
        return out / samples

    def anchor(self, slices01: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One volume's translated slices, shifted to the card's ``anchor_mean`` inside ``mask``
        (``midiffusion/intensity.py``); unchanged when the card has no anchor."""
        target = self.sampling.get("anchor_mean")
        return slices01 if target is None else anchor_mean(slices01, mask, target)

    # --- whole images -----------------------------------------------------------------------
    def translate(
        self, image: nib.Nifti1Image, *, anchor: bool | None = None, **options: Any
    ) -> nib.Nifti1Image:
        """Translate a NIfTI volume or slice; the output has the input's shape and geometry.

        ``anchor``: shift the volume to the card's intensity anchor; None (default) does so for
        volumes of at least ``MIN_ANCHOR_SLICES`` foreground slices, i.e. whole brains.
        ``options`` are those of :meth:`translate_slices` (steps, seed, sampler, guidance,
        samples, batch_size, progress, should_cancel)."""
        volume = _as_volume(image)
        x01, mask = normalise(volume)
        geom, ras, ras_mask = plan_geometry(image, x01, mask, self.grid)
        src = to_grid(geom, ras)
        msk = to_grid(geom, ras_mask.astype(np.float32)) > 0.5
        keep = np.nonzero(msk.reshape(len(msk), -1).any(axis=1))[0]
        result = np.zeros_like(src)
        if len(keep):
            result[keep] = self.translate_slices(src[keep], **options)
            if anchor or (anchor is None and len(keep) >= MIN_ANCHOR_SLICES):
                result[keep] = self.anchor(result[keep], msk[keep])
        result *= msk
        back = from_grid(geom, result) * mask.reshape(geom.shape)
        return output_like(image, back.reshape(image.shape))
