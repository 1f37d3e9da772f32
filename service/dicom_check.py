"""A DICOM upload at the gateway: pack its instances into one stored zip, and check the series
with the shared intake rules (``jobs.dicom_intake``) on headers only, before a job is queued.

The stored input of a DICOM job is always a zip: the client's own zip as sent, or the gateway's
(entries ``00001.dcm``...) made from the `file` parts. Nothing from the client names a file.
Torch-free, and pixels are not decoded here: that is the worker's.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from jobs.dicom_archive import DEFAULT_LIMITS, Limits, is_zip, zip_entries
from jobs.dicom_intake import ACCEPTED, DicomRejected, looks_like_dicom, plan_upload

__all__ = ["ACCEPTED", "DicomRejected", "DicomSummary", "check_dicom", "is_dicom_upload", "pack"]


@dataclass(frozen=True)
class DicomSummary:
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    study_uid: str
    series_uid: str
    instances: int
    modality: str


def is_dicom_upload(first_bytes: bytes, parts: int) -> bool:
    """Several parts, a zip, or a Part 10 file: a DICOM upload (a NIfTI is one part, never)."""
    return parts > 1 or is_zip(first_bytes) or looks_like_dicom(first_bytes)


def pack(parts: list[Path], first_bytes: bytes, target: Path) -> None:
    """Write the upload as one zip at ``target``: a client zip is kept as sent."""
    if len(parts) == 1 and is_zip(first_bytes):
        shutil.copyfile(parts[0], target)
        return
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for n, part in enumerate(parts, 1):
            archive.write(part, f"{n:05d}.dcm")


def check_dicom(path: Path, *, output_format: str, limits: Limits = DEFAULT_LIMITS) -> DicomSummary:
    """Raise :class:`DicomRejected` with a user-facing reason, or describe the series."""
    with open(path, "rb") as fh:
        layout = plan_upload(zip_entries(fh, limits))
    if output_format == "png" and layout.shape[2] != 1:
        raise DicomRejected(
            f"output_format=png is only for a single slice, and this series has "
            f"{layout.shape[2]}; use output_format=dicom (the default) or nifti"
        )
    return DicomSummary(
        shape=layout.shape,
        voxel_size=layout.voxel_size,
        study_uid=layout.study_uid,
        series_uid=layout.series_uid,
        instances=len(layout.instances),
        modality=layout.modality,
    )
