"""Byte-reproducible NIfTI writing and checked reading.

gzip stores a modification time in its header, so ``nibabel.save`` to ``.nii.gz`` gives
different bytes on every run. Here the uncompressed NIfTI bytes are gzipped with ``mtime=0``
and no file name, so the same array and affine always give the same file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from midiffusion.data.errors import DataError
from model_store.files import write_bytes_atomic


def nifti_bytes(data: np.ndarray, affine: np.ndarray, description: str = "") -> bytes:
    """The ``.nii.gz`` bytes of ``data`` with ``affine`` as both qform and sform (code 2)."""
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.header.set_qform(affine, code=2)  # 2 = aligned to another file / template
    img.header.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm")
    if description:
        img.header["descrip"] = description.encode()[:79]
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, description: str = "") -> None:
    write_bytes_atomic(path, nifti_bytes(data, affine, description))


def load_nifti(path: Path, source: str) -> nib.Nifti1Image:
    """Load a NIfTI file fully; a truncated or corrupt file is a one-line DataError."""
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)  # forces decompression: catches truncated files
    except FileNotFoundError as err:
        raise DataError(
            f"source {source}: {path} is missing; run `midiffusion data fetch`"
        ) from err
    except Exception as err:  # nibabel/gzip/zlib raise many types for damaged files
        raise DataError(
            f"source {source}: {path.name} is corrupt ({type(err).__name__}); delete "
            f"{path.parent} and run `midiffusion data fetch`"
        ) from err
    return nib.Nifti1Image(data, img.affine, img.header)
