"""Image files in and out, with geometry preserved.

NIfTI outputs keep the input's affine, header and array layout: only the data type changes (to
float32, with the scaling slope and intercept reset). Orientation is read from the affine, never
guessed. PNG is for single 2D slices, as grey levels in [0,1].
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from model_store.files import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class ImageFormatError(ValueError):
    """The file is not an image we can read; the message says what is accepted."""


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    path = Path(path)
    if not path.is_file():
        raise ImageFormatError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageFormatError(f"{path}: the file is empty; expected a NIfTI-1/2 (.nii or .nii.gz)")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise ImageFormatError(
            f"{path}: not a readable NIfTI file ({exc}); "
            "accepted: NIfTI-1 or NIfTI-2, .nii or .nii.gz"
        ) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageFormatError(
            f"{path}: {type(img).__name__} is not NIfTI; accepted: .nii, .nii.gz"
        )
    return img


def output_like(reference: nib.Nifti1Image, data: np.ndarray) -> nib.Nifti1Image:
    """A float32 image with ``reference``'s affine and header (same shape required)."""
    if data.shape != reference.shape:
        raise ValueError(f"output shape {data.shape} differs from the input's {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    out = type(reference)(data.astype(np.float32), reference.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    out.header["cal_min"], out.header["cal_max"] = 0.0, 1.0
    # keep both transforms and their codes exactly as the input had them
    out.set_sform(reference.get_sform(), int(reference.header["sform_code"]))
    out.set_qform(reference.get_qform(), int(reference.header["qform_code"]))
    return out


def save_nifti(img: nib.Nifti1Image, path: str | Path) -> Path:
    """Write ``img`` atomically (temp file + rename): no half-written output is ever visible."""
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise ImageFormatError(f"{path}: output must end in .nii or .nii.gz")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def load_png(path: str | Path) -> np.ndarray:
    """A greyscale PNG as float32 in [0,1] (8- or 16-bit; colour is converted to grey)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise ImageFormatError(f"{path}: not a readable PNG ({exc})") from exc
    return arr


def save_png(array01: np.ndarray, path: str | Path, *, bits: int = 8) -> Path:
    """Save a 2D array in [0,1] as an 8- or 16-bit greyscale PNG (values are clipped)."""
    arr = np.asarray(array01, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"save_png needs a 2D array, got shape {arr.shape}")
    arr = np.nan_to_num(arr.clip(0, 1))
    if bits == 8:
        im = Image.fromarray((arr * 255 + 0.5).astype(np.uint8), mode="L")
    elif bits == 16:
        im = Image.fromarray((arr * 65535 + 0.5).astype(np.uint16), mode="I;16")
    else:
        raise ValueError("bits must be 8 or 16")
    path = Path(path)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path
