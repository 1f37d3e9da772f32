"""Whole-volume translation: volume -> grid slices -> batched guided sampling -> source lookup
-> volume.

Geometry: the input is reordered to RAS through its affine (never guessed; exact flips and
permutations), masked in its slice plane, cut into axial slices (or the one slice of a 2D image)
and every slice is resampled onto the model's square grid with one field of view per volume: the
foreground's in-plane bounding box, larger side + 10 %, with the very functions that build the
training and evaluation sets (``midiffusion.data.geometry``). Results are mapped back to the
input's own voxels, array layout, affine and header. Background stays background.

Consistency between slices: every slice starts from the same initial noise (seeded), and the
stochastic samplers add the same step noise to every slice (``samplers.shared_noise``), so
neighbouring slices with similar sources take similar paths. The flip side: the volume's overall
grey level is one draw of the prior, so whole volumes are shifted to the training data's mean
(``midiffusion/pipeline/intensity.py``) where the card records it.
"""

from __future__ import annotations

import time
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

from midiffusion.data.geometry import Grid, canonical, resample, slice_grid, voxel_sizes
from midiffusion.data.masks import largest_component
from midiffusion.data.recipe import Recipe
from midiffusion.data.t1_train import HEAD_SUFFIX
from midiffusion.diffusion.conditioning import ConditioningSpec
from midiffusion.diffusion.denoiser import LMIGuidedDenoiser
from midiffusion.diffusion.samplers import get_sampler, noise_source, shared_noise_for_draws
from midiffusion.diffusion.schedules import DDPMSchedule
from midiffusion.io.imaging import output_like
from midiffusion.model.unet import UNet, UNetConfig, kind_index
from midiffusion.pipeline.guided_filter import apply_guided_filter, guided_weight_for
from midiffusion.pipeline.host_memory import keep_freed_memory
from midiffusion.pipeline.intensity import (
    anchor_for,
    anchor_mean,
    input_kind,
    is_whole_head,
)
from midiffusion.pipeline.precision import resolve_precision
from midiffusion.pipeline.quality import DrawSpread, translation_quality
from midiffusion.pipeline.source_lookup import apply_lookup, lookup_weight_for
from model_store.card import MIN_INPLANE, ModelCard, affine_is_degenerate

# the data recipe's field of view, so inference sees brains at the scale training saw them
FOV_MARGIN = Recipe().fov_margin
FOREGROUND_THRESHOLD = 0.05  # of the normalised intensity range
MASK_CLOSING = 5  # radius (pixels) of the in-plane disk that closes gaps in a head's scalp


class TranslationCancelled(Exception):
    """Raised from inside the sampling loop when ``should_cancel()`` returns True."""


class TranslationInputError(ValueError):
    """The input cannot be translated; the message says why and what is accepted."""


Progress = Callable[[int, int], None]
# (index of the first slice, draws of shape (k, n, G, G)): see Translator.translate_slices
DrawSink = Callable[[int, np.ndarray], None]


# --------------------------------------------------------------------------------------------
# geometry: input array <-> RAS slices <-> model grid (midiffusion.data.geometry)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlicePlan:
    """How one image maps onto the model grid and back."""

    ornt: np.ndarray  # the input's orientation (nibabel ornt), read from its affine
    ras_affine: np.ndarray  # the affine of the input reordered to RAS (exact flips/permutes)
    ras_shape: tuple[int, int, int]
    slice_axis: int  # in RAS array space: the axis the input is cut along
    grid: Grid  # grid voxel (i, j, k) -> world, k the input's k-th slice

    @property
    def pixel_mm2(self) -> float:
        """The area of one grid pixel in the slice plane."""
        sizes = voxel_sizes(self.grid.affine)
        return float(sizes[0] * sizes[1])

    def to_grid(self, ras_volume: np.ndarray, order: int = 1) -> np.ndarray:
        """(n_slices, G, G) model-grid slices of a RAS volume."""
        out = resample(ras_volume, self.ras_affine, self.grid, order=order, antialias=order > 0)
        return np.moveaxis(out, 2, 0)

    def from_grid(self, grid_slices: np.ndarray) -> np.ndarray:
        """(n_slices, G, G) grid slices back in the input's own array layout."""
        ras = resample(
            np.moveaxis(grid_slices, 0, 2),
            self.grid.affine,
            Grid(self.ras_affine, self.ras_shape),
            antialias=False,
        )
        return self.to_input(ras)

    def to_input(self, ras_volume: np.ndarray) -> np.ndarray:
        return apply_orientation(ras_volume, ornt_transform(axcodes2ornt("RAS"), self.ornt))


def _as_volume(img: nib.Nifti1Image) -> np.ndarray:
    """The image's voxels as a float32 3D array in its own layout, or a clear refusal."""
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
    if float(arr.max()) == float(arr.min()):
        raise TranslationInputError(
            f"the image is constant (every voxel is {float(arr.min()):g}): there is no anatomy "
            "to translate"
        )
    check_affine(img.affine)
    return arr


def check_affine(affine: np.ndarray) -> None:
    """Refuse an affine that cannot place voxels in space (non-finite, or collapsing an axis)."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise TranslationInputError("the image affine (qform/sform) holds NaN or infinite values")
    if affine_is_degenerate(affine):
        raise TranslationInputError(
            "the image affine is degenerate (it maps two voxel axes onto one line or an axis to "
            "a point): accepted is an affine with three independent axes of non-zero voxel size"
        )


def normalise(volume: np.ndarray, slice_axis: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Intensities to [0,1] by robust percentiles, and a foreground mask made in the slice plane.

    The 99.5th percentile of the foreground maps to 1, as in the data recipe; the background
    level (0 for skull-stripped MR, the 0.5th percentile otherwise) maps to 0. The mask's
    opening and hole filling act within each slice (a structuring element flat along
    ``slice_axis``), so one- and two-slice images and the end slices of a volume keep their rim;
    a closing before the filling keeps the dark tissue a head's scalp encloses.
    """
    lo = 0.0 if volume.min() >= 0 else float(np.percentile(volume, 0.5))
    x = volume - lo
    rough = float(np.percentile(x, 99.9))
    if rough <= 0:
        rough = float(x.max())  # a small object on a large background: its few bright voxels
    if rough <= 0:
        raise TranslationInputError("the image is constant: there is nothing to translate")
    hi = float(np.percentile(x[x > FOREGROUND_THRESHOLD * rough], 99.5))
    x01 = np.clip(x / hi, 0, 1).astype(np.float32)
    in_plane = _in_plane(ndimage.generate_binary_structure(2, 1), slice_axis)
    mask = ndimage.binary_opening(x01 > FOREGROUND_THRESHOLD, structure=in_plane)
    # a head's dark tissue (bone, sinus air, some muscle) lies inside the bright scalp: closing
    # with a disk (a diamond's tips would slip through) bridges the scalp's thin gaps (nostrils,
    # ears, a thin dark skin), and filling before keeping the largest part (which drops speckle
    # in noisy backgrounds) keeps the scalp joined to what it encloses
    r = MASK_CLOSING
    disk = np.hypot(*np.mgrid[-r : r + 1, -r : r + 1]) <= r
    closed = ndimage.binary_closing(mask, structure=_in_plane(disk, slice_axis), border_value=0)
    mask = largest_component(ndimage.binary_fill_holes(mask | closed, structure=in_plane))
    return x01, mask


def _in_plane(footprint2d: np.ndarray, slice_axis: int) -> np.ndarray:
    """A 2D footprint as a 3D structure flat along ``slice_axis``: it acts within each slice."""
    return np.expand_dims(footprint2d, slice_axis)


# what the shipped training data spans (t1-train): 1 mm voxels; fields of view of a brain or a
# head, 173 mm (the smallest stripped brain) to 235 mm; axial slices
COARSE_VOXEL_MM = 3.0
SMALLEST_FOV_MM = 173.0
LARGEST_FOV_MM = 300.0


def spacing_in_mm(image: nib.Nifti1Image) -> bool:
    """Whether the image's header says its voxel sizes are millimetres (DICOM, and NIfTI written
    by scanners' converters); a PNG, and a NIfTI whose units are unknown, may be at any scale."""
    header = image.header
    return hasattr(header, "get_xyzt_units") and header.get_xyzt_units()[0] == "mm"


def plan_slices(
    image: nib.Nifti1Image, volume: np.ndarray, grid: int
) -> tuple[SlicePlan, np.ndarray, np.ndarray]:
    """Reorient ``volume`` to RAS, mask it in its slice plane and place its slices on the grid.

    Returns the plan, the RAS volume in [0, 1] and its mask. The slice axis is the one axis of
    a single slice (or of a two-slice image), else the axial one.

    The field of view is the foreground's, as in training, where it is a whole volume's. Alone,
    a slice near the top of a head, or a slab there, is small: framed by its own extent it would
    be magnified beyond anything the model was trained on. So where the spacing is known to be
    in mm, the field of view is at least the smallest one of the training data."""
    ornt = io_orientation(image.affine)
    ras, ras_affine = canonical(nib.Nifti1Image(volume, image.affine))
    few = [a for a in range(3) if ras.shape[a] <= 2]
    slice_axis = few[0] if len(few) == 1 else 2
    plane = [ras.shape[a] for a in range(3) if a != slice_axis]
    if min(plane) < MIN_INPLANE:
        raise TranslationInputError(
            f"the slices are {plane[0]}x{plane[1]} voxels: at least "
            f"{MIN_INPLANE}x{MIN_INPLANE} are needed"
        )
    x01, mask = normalise(ras, slice_axis)
    if not mask.any():
        raise TranslationInputError("no foreground found: the image looks empty")
    min_side = SMALLEST_FOV_MM if spacing_in_mm(image) else 0.0
    plan = SlicePlan(
        ornt=ornt,
        ras_affine=ras_affine,
        ras_shape=ras.shape,
        slice_axis=slice_axis,
        grid=slice_grid(mask, ras_affine, grid, FOV_MARGIN, slice_axis, min_side),
    )
    return plan, x01, mask


def _trained_on_heads(card: ModelCard) -> bool:
    """Whether the card's training data held whole heads (t1-train's ``<subject>_head``)."""
    files = card.training.get("data", {}).get("files", [])
    return card.sampling.anchor_mean_head is not None or any(f"{HEAD_SUFFIX}." in f for f in files)


def input_warnings(plan: SlicePlan, grid_mask: np.ndarray, card: ModelCard) -> list[str]:
    """Sentences saying where an input lies outside what ``card``'s model was trained on.

    The model still runs: these are for the person who reads the result. ``grid_mask`` is the
    foreground on the model grid, (n, G, G)."""
    out = []
    name = f"{card.name} v{card.version}"
    if is_whole_head(grid_mask, plan.pixel_mm2) and not _trained_on_heads(card):
        out.append(
            f"the input looks like a whole head, but {name} was trained on skull-stripped brains "
            "only: scalp, skull and face will not be translated faithfully (strip the skull "
            "first, or use a model trained on heads)"
        )
    if plan.slice_axis != 2:
        plane = "sagittal" if plan.slice_axis == 0 else "coronal"
        out.append(
            f"the input is a {plane} slice, but {name} was trained on axial slices: it is "
            "translated as if it were axial"
        )
    coarse = _coarsest_in_plane_mm(plan)
    if coarse > COARSE_VOXEL_MM:
        out.append(
            f"the input's in-plane voxels are {coarse:.1f} mm, much coarser than the 1 mm "
            f"training data of {name}: fine anatomy will be guessed"
        )
    fov = _field_of_view_mm(plan)
    if fov > LARGEST_FOV_MM:
        out.append(
            f"the foreground spans a {fov:.0f} mm field of view, more than a head: {name} knows "
            "heads and brains, not other parts of the body"
        )
    return out


def _coarsest_in_plane_mm(plan: SlicePlan) -> float:
    in_plane = [a for a in range(3) if a != plan.slice_axis]
    return float(voxel_sizes(plan.ras_affine)[in_plane].max())


def _field_of_view_mm(plan: SlicePlan) -> float:
    return float(voxel_sizes(plan.grid.affine)[0] * plan.grid.shape[0])


def outside_training_fraction(plan: SlicePlan, grid_mask: np.ndarray, card: ModelCard) -> float:
    """The fraction of the foreground slices of ``grid_mask`` (n, G, G) that lie outside what
    ``card``'s model was trained on, by the rules of :func:`input_warnings`: every slice when
    the plane, the voxel size or the field of view is outside, else the slices whose section is
    a whole head's for a model that knows only brains."""
    kept = grid_mask[grid_mask.reshape(len(grid_mask), -1).any(axis=1)]
    if not len(kept):
        return 0.0
    whole_volume_outside = (
        plan.slice_axis != 2
        or _coarsest_in_plane_mm(plan) > COARSE_VOXEL_MM
        or _field_of_view_mm(plan) > LARGEST_FOV_MM
    )
    if whole_volume_outside:
        return 1.0
    if _trained_on_heads(card):
        return 0.0
    heads = sum(is_whole_head(section[None], plan.pixel_mm2) for section in kept)
    return heads / len(kept)


def _draws_per_batch(slices: int, samples: int, batch_size: int) -> int:
    """How many of a slice batch's draws run together: the most that fit the batch size and
    divide ``samples`` evenly (1 when the slices alone fill the batch)."""
    return max(d for d in range(1, samples + 1) if samples % d == 0 and d * slices <= batch_size)


# --------------------------------------------------------------------------------------------
# the translator
# --------------------------------------------------------------------------------------------
class Translator:
    """A loaded target-domain model, ready to translate volumes or grid slices.

    ``card``: the model's typed card; its sampling section supplies every setting a call leaves
    out."""

    def __init__(
        self,
        net: UNet,
        card: ModelCard,
        device: str | torch.device = "cpu",
        precision: str = "auto",
    ) -> None:
        self.card = card
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # about 10 % per slice on a CPU (host_memory.py)
        # channels-last activations suit oneDNN's and cuDNN's convolutions: about 1.3x on a CPU
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()
        self.schedule = DDPMSchedule.from_dict(card.schedule.model_dump())
        self.spec = ConditioningSpec.from_dict(card.conditioning.model_dump())
        self.grid = card.grid_size
        self.sampling = card.sampling
        # clean models clamp x0 estimates to the data range; the published (faithful) chain does not
        self.clip_denoised = self.spec.state == "range_consistent"

    @classmethod
    def load(
        cls,
        card: ModelCard,
        weights_path: str | Path,
        device: str | torch.device = "cpu",
        precision: str = "auto",
    ) -> Translator:
        net = UNet(UNetConfig.from_dict(card.network.model_dump()))
        state = load_file(str(weights_path), device="cpu")
        net.load_state_dict(state, strict=True)
        return cls(net, card, device, precision)

    def denoiser(
        self,
        source01: torch.Tensor | None,
        guidance: float,
        guidance_sigma_min: float = 0.0,
        kind: str | None = None,
    ) -> LMIGuidedDenoiser:
        """The model's denoiser for these sources (None: unconditional) of input ``kind``
        (``midiffusion.pipeline.intensity.input_kind``; None: not told)."""
        return LMIGuidedDenoiser(
            self.net,
            self.schedule,
            self.spec,
            source01,
            guidance,
            clip=self.clip_denoised,
            precision=self.precision,
            guidance_sigma_min=guidance_sigma_min,
            kind=kind_index(kind),
        )

    # --- grid slices (used by translate() and by the evaluation) ------------------------------
    @torch.no_grad()
    def translate_slices(
        self,
        source01: np.ndarray,
        *,
        preset: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        sampler: str | None = None,
        guidance: float | None = None,
        guidance_sigma_min: float | None = None,
        samples: int | None = None,
        antithetic: bool | None = None,
        batch_size: int | None = None,
        progress: Progress | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_draws: DrawSink | None = None,
        step_seconds: Callable[[float], None] | None = None,
        kind: str | None = None,
    ) -> np.ndarray:
        """Translate (N, G, G) slices in [0,1] on the model grid; returns (N, G, G) in [0,1].

        Settings left out come from the card's sampling defaults, or from its ``preset`` (e.g.
        ``fast``) where one is named. ``kind``: what the slices are, for a network told input
        kinds (``midiffusion.pipeline.intensity.input_kind``; None: not told).

        ``samples`` > 1 averages that many translations from different initial noises: an
        estimate of the posterior mean, which loses the sampler's invented fine texture (the
        part that cannot match the patient) and costs ``samples`` times the time. ``antithetic``
        (default: the card's) pairs the draws on opposite noises (``samplers.noise_source``).
        ``on_draws(first, draws)`` sees every draw before averaging: ``draws`` is (k, n, G, G),
        k draws of the n slices from index ``first`` (the spread between draws,
        ``midiffusion.pipeline.quality``). ``step_seconds`` receives the duration of every
        sampling step of a batch. Neither changes the result.
        """
        defaults = self.sampling.preset(preset)
        steps = int(steps or defaults.steps)
        sample = get_sampler(sampler or defaults.sampler)
        guidance = float(defaults.guidance if guidance is None else guidance)
        if guidance_sigma_min is None:
            guidance_sigma_min = defaults.guidance_sigma_min
        samples = int(samples or defaults.samples)
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        if antithetic is None:
            antithetic = defaults.antithetic
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
        step_started = 0.0  # set as each sampling run starts
        for idx, k in batches:
            src = torch.from_numpy(source01[idx.start : idx.stop, None]).to(self.device)
            denoiser = self.denoiser(src.repeat(k, 1, 1, 1), guidance, guidance_sigma_min, kind)

            def callback(_i: int, _total: int, _x: torch.Tensor, _d: torch.Tensor) -> None:
                nonlocal done, step_started
                if step_seconds is not None:
                    now = time.perf_counter()
                    step_seconds(now - step_started)
                    step_started = now
                if should_cancel is not None and should_cancel():
                    raise TranslationCancelled("translation cancelled")
                done += 1
                if progress is not None:
                    progress(done, total)

            for first in range(0, samples, k):
                draws = range(first, first + k)
                x = torch.cat([noises[d].expand(len(idx), -1, -1, -1) for d in draws]) * sigmas[0]
                step_noise = shared_noise_for_draws(seed, draws, antithetic)
                step_started = time.perf_counter()
                x0 = sample(denoiser, x, sigmas, callback=callback, noise=step_noise)
                x0 = self.spec.to_unit(x0)[:, 0].float().cpu().numpy()
                if on_draws is not None:
                    on_draws(idx.start, x0.reshape(k, len(idx), *x0.shape[1:]))
                out[idx.start : idx.stop] += x0.reshape(k, len(idx), *x0.shape[1:]).sum(0)
        return out / samples

    def finish(
        self,
        sampled01: np.ndarray,
        source01: np.ndarray,
        mask: np.ndarray,
        kind: str,
        *,
        lookup: bool = True,
        anchor: bool = True,
    ) -> np.ndarray:
        """One volume's sampled slices (n, G, G) as the output: masked, read back through the
        source (``lookup``) with the card's weights for the volume's ``kind``, first by the
        volume-wide lookup (``midiffusion/pipeline/source_lookup.py``) and then by the local
        guided filter (``midiffusion/pipeline/guided_filter.py``), then shifted to its anchor
        (``anchor``)."""
        out = np.where(mask, sampled01, 0.0).astype(np.float32)
        if lookup:
            card = self.sampling
            weight = lookup_weight_for(card, kind)
            out = apply_lookup(out, source01, mask, weight, card.lookup_bandwidth)
            out = apply_guided_filter(
                out, source01, mask, guided_weight_for(card, kind), card.guided_eps
            )
        return self.anchor(out, mask, kind) if anchor else out

    def anchor(self, slices01: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
        """One volume's translated slices, shifted inside ``mask`` to the card's anchor for the
        volume's ``kind`` (brain or whole head, ``midiffusion/pipeline/intensity.py``);
        unchanged where the card has no anchor for that kind."""
        target = anchor_for(self.sampling, kind)
        return slices01 if target is None else anchor_mean(slices01, mask, target)

    # --- whole images -----------------------------------------------------------------------
    def translate(
        self,
        image: nib.Nifti1Image,
        *,
        anchor: bool = True,
        lookup: bool = True,
        warn: Callable[[str], None] | None = None,
        **options: Any,
    ) -> nib.Nifti1Image:
        """Translate a NIfTI volume or slice; the output has the input's shape and geometry.

        ``anchor``: shift the foreground to the card's intensity anchor (a no-op where the card
        has none; ``midiffusion/pipeline/intensity.py`` says why slices are anchored too).
        ``lookup``: read the translation back through the source with the card's weight (a
        no-op where it is 0; ``midiffusion/pipeline/source_lookup.py``).
        ``warn`` receives one sentence per way the input lies outside what the model was
        trained on (:func:`input_warnings`), before sampling starts.
        ``options`` are those of :meth:`translate_slices` (preset, steps, seed, sampler,
        guidance, samples, batch_size, progress, should_cancel, kind). ``kind`` ("brain" or
        "head") says what the input is; left out, it is judged from the input's size
        (:func:`midiffusion.pipeline.intensity.input_kind`), which takes a lone section from
        the top of a head for a brain."""
        run = self._run_on_grid(image, anchor, lookup, warn, options)
        return run.to_input(image, run.result)

    def translate_with_report(
        self,
        image: nib.Nifti1Image,
        *,
        anchor: bool = True,
        lookup: bool = True,
        warn: Callable[[str], None] | None = None,
        **options: Any,
    ) -> Translation:
        """:meth:`translate`, with the same output, plus what a service reports about it: the
        per-voxel spread between the averaged draws in the input's geometry, the quality
        figures of :func:`midiffusion.pipeline.quality.translation_quality`, the fraction of
        slices outside what the model was trained on, and where the time went."""
        started = time.perf_counter()
        spread = DrawSpread()
        run = self._run_on_grid(image, anchor, lookup, warn, {**options, "on_draws": spread.add})
        samples = spread.draws
        spread_grid = np.zeros_like(run.result)
        if samples > 1:
            spread_grid[run.keep] = spread.std()
        spread_grid *= run.msk
        kept = run.keep
        quality = translation_quality(
            run.result[kept],
            run.src[kept],
            run.msk[kept],
            spread_grid[kept] if samples > 1 else None,
        )
        quality["outside_training_fraction"] = outside_training_fraction(
            run.plan, run.msk, self.card
        )
        out = run.to_input(image, run.result)
        uncertainty = run.to_input(image, spread_grid)
        uncertainty.header["cal_max"] = float(np.asarray(uncertainty.dataobj).max())
        uncertainty.header["descrip"] = b"std between averaged draws (MIDiffusion)"
        total = time.perf_counter() - started
        return Translation(
            image=out,
            uncertainty=uncertainty,
            quality=quality,
            slices=len(kept),
            samples=samples,
            sample_seconds=run.sample_seconds,
            other_seconds=max(0.0, total - run.sample_seconds),
        )

    def _run_on_grid(
        self,
        image: nib.Nifti1Image,
        anchor: bool,
        lookup: bool,
        warn: Callable[[str], None] | None,
        options: dict[str, Any],
    ) -> _GridRun:
        """Read, plan and mask the image, and translate its foreground slices on the grid."""
        volume = _as_volume(image)
        plan, ras, ras_mask = plan_slices(image, volume, self.grid)
        src = plan.to_grid(ras)
        msk = plan.to_grid(ras_mask.astype(np.float32)) > 0.5
        if warn is not None:
            for message in input_warnings(plan, msk, self.card):
                warn(message)
        keep = np.nonzero(msk.reshape(len(msk), -1).any(axis=1))[0]
        result = np.zeros_like(src)
        sampling_started = time.perf_counter()
        if len(keep):
            kind = options.get("kind") or input_kind(msk, plan.pixel_mm2)
            sampled = self.translate_slices(src[keep], **{**options, "kind": kind})
            result[keep] = self.finish(
                sampled, src[keep], msk[keep], kind, lookup=lookup, anchor=anchor
            )
        sample_seconds = time.perf_counter() - sampling_started
        result *= msk
        return _GridRun(plan, ras_mask, src, msk, keep, result, sample_seconds)


@dataclass(frozen=True)
class _GridRun:
    """One image's slices on the model grid, before and after translation."""

    plan: SlicePlan
    ras_mask: np.ndarray
    src: np.ndarray  # (n, G, G) sources in [0, 1]
    msk: np.ndarray  # (n, G, G) foreground
    keep: np.ndarray  # indices of the slices with foreground (the ones translated)
    result: np.ndarray  # (n, G, G) translated, masked
    sample_seconds: float

    def to_input(self, image: nib.Nifti1Image, grid_slices: np.ndarray) -> nib.Nifti1Image:
        """Grid slices as an image in ``image``'s shape and geometry, background zero."""
        back = self.plan.from_grid(grid_slices) * self.plan.to_input(self.ras_mask)
        return output_like(image, back.reshape(image.shape))


@dataclass(frozen=True)
class Translation:
    """What :meth:`Translator.translate_with_report` returns."""

    image: nib.Nifti1Image  # the translation, exactly as translate() returns it
    uncertainty: nib.Nifti1Image  # std between the averaged draws, input geometry (0: one draw)
    quality: dict[str, float | None]
    slices: int  # foreground slices translated
    samples: int  # draws averaged per slice (0: no slice had foreground)
    sample_seconds: float  # guided sampling, the lookup and the anchor
    other_seconds: float  # reading, planning, quality figures, mapping back
