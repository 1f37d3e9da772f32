"""A DICOM job's input and output in the worker: the stored zip becomes a volume (the intake
rules again, then the pixels), and the translated volume becomes the derived series, stored as
one zip of ``.dcm`` instances (``GET /jobs/{id}/result`` serves it as a zip or as DICOMweb)."""

from __future__ import annotations

import zipfile
from typing import Any

from jobs import JobOutput, JobRecord
from jobs.dicom_archive import zip_entries
from jobs.dicom_intake import DicomRejected, SeriesLayout, plan_upload
from jobs.storage import LocalStorage

ZIP_CONTENT_TYPE = "application/zip"
__all__ = ["DicomRejected", "load", "write_series"]


def load(storage: LocalStorage, key: str) -> tuple[SeriesLayout, Any]:
    """The series' layout and its volume as a NIfTI image (``DicomRejected`` or
    ``DicomDecodeError`` when it is not acceptable; both are ``ValueError``)."""
    from midiffusion.io.dicom_series import read_volume

    with open(storage.path(key), "rb") as fh:
        layout = plan_upload(zip_entries(fh), keep_bytes=True)
    return layout, read_volume(layout)


def write_series(
    storage: LocalStorage,
    job: JobRecord,
    layout: SeriesLayout,
    out: Any,
    target_modality: str,
    warnings: tuple[str, ...],
) -> JobOutput:
    from midiffusion.io.dicom_series import Derivation, derived_series, volume01

    spec = job.spec
    derivation = Derivation(
        spec.model_name,
        spec.model_version,
        target_modality,
        preset=spec.preset,
        steps=spec.steps,
        seed=spec.seed,
        anatomy=spec.anatomy,
    )
    instances = derived_series(layout, volume01(out), derivation)
    key = storage.key("out", job.id, ".zip")
    with (
        storage.writing_to(key) as partial,
        zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive,
    ):
        for n, (_, blob) in enumerate(instances, 1):
            archive.writestr(f"{n:05d}.dcm", blob)
    return JobOutput(
        key=key,
        filename=f"derived-series_{spec.model_name}.zip",
        content_type=ZIP_CONTENT_TYPE,
        bytes=storage.size(key),
        warnings=warnings,
    )
