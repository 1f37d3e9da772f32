"""Single 2D slices, translated one by one as a user sends them, against the identity and the
inversion.

    midiffusion evaluate --single-slices --protocol head-synth --slices 8 --more-seeds 1 2 --out DIR

A clinic often has one slice, not a volume. Each evaluated slice of a protocol's directions is
written as its own (H, W) NIfTI at the set's pixel spacing and translated by
``Translator.translate`` with the card's defaults, the call ``midiffusion translate`` makes: the
input's own normalisation, masking, grid resampling (its spacing given in mm, as a DICOM slice
gives it) and anchor, and nothing shared with the neighbouring slices. Every image (translation,
truth, source) is then rescaled by its own 99.5th percentile inside the head, as someone holding
only the images would compare them, and scored inside the set's mask: SSIM and PSNR of the
translation, of the source itself (the identity) and of the source inverted within the mask
(1 - source, the crudest T2 -> T1 map).

``head-tune`` is tuning data (settings may be chosen on it); every other protocol is for
reporting only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from midiffusion.data.intensity import scale_to_unit
from midiffusion.evaluation.directions import Direction
from midiffusion.evaluation.metrics import psnr, ssim

NORM_PERCENTILE = 99.5
Translate = Callable[[nib.Nifti1Image, int], nib.Nifti1Image]  # (slice image, seed) -> output


@dataclass(frozen=True)
class SliceScores:
    """One direction at one seed: mean SSIM and PSNR over its slices."""

    direction: str
    seed: int
    slices: int
    ssim: float
    psnr: float
    ssim_identity: float
    psnr_identity: float
    ssim_inversion: float

    @property
    def margin(self) -> float:
        """SSIM of the translation minus the better of the identity and the inversion."""
        return self.ssim - max(self.ssim_identity, self.ssim_inversion)


def rescaled(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` over its own 99.5th percentile inside ``mask`` (the sets' ``scale_to_unit``);
    an image that is black there (an empty translation) stays black and scores as such."""
    try:
        return scale_to_unit(image, mask, NORM_PERCENTILE)
    except ValueError:
        return np.zeros_like(image, np.float32)


def slice_image(pixels: np.ndarray, pixel_mm2: float, slice_mm: float = 1.0) -> nib.Nifti1Image:
    """A set's (H, W) slice, or (H, W, n) stack, as the NIfTI a user sends: square pixels of
    ``pixel_mm2`` and slices ``slice_mm`` apart, with the units in mm (a set's spacing is
    physical, as a DICOM slice's is)."""
    mm = float(np.sqrt(pixel_mm2))
    image = nib.Nifti1Image(np.asarray(pixels, np.float32), np.diag([mm, mm, slice_mm, 1.0]))
    image.header.set_xyzt_units("mm")
    return image


def score_direction(direction: Direction, translate: Translate, seed: int) -> SliceScores:
    """Translate each slice of ``direction`` alone and score it (module docstring)."""
    if direction.truth is None:
        raise ValueError(f"direction {direction.name} has no truth to score single slices against")
    rows = []
    for source, truth, mask in zip(direction.source, direction.truth, direction.mask, strict=True):
        image = slice_image(source, direction.pixel_mm2)
        out = np.asarray(translate(image, seed).dataobj, np.float32)
        if out.shape != source.shape:
            raise ValueError(f"translation of a {source.shape} slice came back {out.shape}")
        g, o, s = (rescaled(a, mask) for a in (truth, out, source))
        inverted = np.where(mask & (s > 0), 1.0 - s, 0.0)
        pairs = ((o, ssim), (o, psnr), (s, ssim), (s, psnr), (inverted, ssim))
        rows.append([metric(a, g, mask) for a, metric in pairs])
    means = np.mean(np.asarray(rows), axis=0)
    return SliceScores(direction.name, seed, len(rows), *(float(m) for m in means))


def markdown(scores: list[SliceScores], model: str, protocol: str) -> str:
    lines = [
        f"Single 2D slices of {protocol}, translated one by one by {model} "
        "(`midiffusion evaluate --single-slices`); SSIM and PSNR inside the mask, "
        f"each image rescaled by its own {NORM_PERCENTILE:g}th percentile.",
        "",
        "| direction | seed | slices | SSIM | identity SSIM | inversion SSIM | beats both? "
        "| PSNR dB | identity PSNR dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        verdict = "yes" if s.margin > 0 else f"**no** ({s.margin:+.3f})"
        lines.append(
            f"| {s.direction} | {s.seed} | {s.slices} | {s.ssim:.3f} | {s.ssim_identity:.3f} "
            f"| {s.ssim_inversion:.3f} | {verdict} | {s.psnr:.2f} | {s.psnr_identity:.2f} |"
        )
    return "\n".join(lines) + "\n"
