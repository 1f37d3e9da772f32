"""A checked DICOM series into a volume, and a translated volume back out as a derived series.

The series arrives already checked and sorted (``jobs.dicom_intake.plan_series`` holds those
rules, shared with the gateway; this module is handed its result and never imports it). Pixels
are decoded through pydicom's handlers (the pylibjpeg plugins for compressed syntaxes), rescaled,
and laid out as NIfTI's (column, row, slice) with the LPS geometry turned into a RAS affine.

The derived series follows what MONAI Deploy and IHE AI Results do for generated images: the same
study, patient and frame of reference; a new series and new instances; ``DERIVED\\SECONDARY``;
the model in SeriesDescription, DerivationDescription and ContributingEquipmentSequence; a
"not for diagnostic use" statement; every source instance in SourceImageSequence; and each
slice's geometry copied from the source slice at the same place in the stack.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from midiffusion import __version__

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
NOT_FOR_DIAGNOSTIC_TEXT = "not for diagnostic use"
MANUFACTURER = "MIDiffusion"
STORED_MAX = 4095  # 12 significant bits in 16-bit words
# The patient and study modules (and what identifies them), copied to the derived series.
PATIENT_STUDY_TAGS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "OtherPatientIDsSequence",
    "PatientComments",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
)


GEOMETRY_TAGS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
)


class DicomDecodeError(ValueError):
    """The pixels of an accepted instance cannot be decoded; the message names the syntax."""


class _Instance(Protocol):
    header: Dataset
    data: bytes | None


class _Slice(Protocol):
    instance: int
    frame: int | None
    position: tuple[float, float, float]
    slope: float
    intercept: float


class Layout(Protocol):
    """What ``jobs.dicom_intake.SeriesLayout`` provides."""

    instances: Sequence[_Instance]
    slices: Sequence[_Slice]
    rows: int
    columns: int
    row_cosines: np.ndarray
    column_cosines: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_step: np.ndarray
    slice_thickness: float | None
    modality: str

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def affine_ras(self) -> np.ndarray: ...


# -- in -----------------------------------------------------------------------------------------


def _pixels(ds: Dataset, position: int) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # the handlers raise many types; the syntax is what matters
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(syntax, "name", None) or str(syntax)
        raise DicomDecodeError(
            f"the pixel data of file {position} ({name}) cannot be decoded: it is damaged or "
            "shorter than its header says"
        ) from exc


def _dataset(data: bytes, header: Dataset) -> Dataset:
    """The whole instance; a bare data set (no preamble) gets the syntax the header found."""
    bare = data[128:132] != b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data), force=bare)
    if bare:
        ds.file_meta = header.file_meta
    return ds


def read_volume(layout: Layout) -> nib.Nifti1Image:
    """The series as a float32 NIfTI volume (rescale applied, MONOCHROME1 inverted)."""
    volume = np.empty(layout.shape, dtype=np.float32)
    decoded: dict[int, np.ndarray] = {}
    for k, ref in enumerate(layout.slices):
        inst = layout.instances[ref.instance]
        if ref.instance not in decoded:
            if inst.data is None:
                raise ValueError("the layout was planned without keeping the instances' bytes")
            decoded = {ref.instance: _pixels(_dataset(inst.data, inst.header), k + 1)}
            # one instance decoded at a time: a series sorted along the stack rarely revisits
        pixels = decoded[ref.instance]
        plane = pixels[ref.frame] if ref.frame is not None and pixels.ndim == 3 else pixels
        if plane.shape != (layout.rows, layout.columns):
            raise DicomDecodeError(
                f"the pixel data of slice {k + 1} has shape {plane.shape}, the header says "
                f"{(layout.rows, layout.columns)}"
            )
        values = plane.astype(np.float32) * ref.slope + ref.intercept
        if inst.header.get("PhotometricInterpretation") == "MONOCHROME1":
            values = -values  # MONOCHROME1 shows low values bright
        volume[:, :, k] = values.T  # (rows, columns) -> (column, row)
    image = nib.Nifti1Image(volume, layout.affine_ras())
    image.header.set_xyzt_units("mm")  # DICOM's spacings are in mm by definition
    return image


# -- out ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derivation:
    """Who made the derived series, and how (for its descriptions and equipment)."""

    model_name: str
    model_version: int
    target_modality: str
    preset: str | None = None
    steps: int | None = None
    seed: int = 0
    anatomy: str | None = None  # what the client said the input shows; None: judged by size


def _series_description(d: Derivation) -> str:
    text = f"{d.model_name} v{d.model_version} synthetic {d.target_modality} - {NOT_FOR_DIAGNOSIS}"
    return (
        text if len(text) <= 64 else f"{d.model_name[:20]} v{d.model_version} {NOT_FOR_DIAGNOSIS}"
    )


def _window(volume01: np.ndarray) -> tuple[float, float]:
    """Centre and width (stored units) spanning the foreground, the same for every slice."""
    stored = volume01 * STORED_MAX
    fg = stored[stored > 0.01 * STORED_MAX]
    lo, hi = np.percentile(fg, [0.5, 99.5]) if fg.size else (0.0, float(STORED_MAX))
    width = max(float(hi - lo), 1.0)
    return round(float(lo) + width / 2, 1), round(width, 1)


def _ds(value: float) -> str:
    return f"{value:.10g}"


def derived_series(
    layout: Layout, volume01: np.ndarray, derivation: Derivation
) -> list[tuple[str, bytes]]:
    """The derived series as (SOPInstanceUID, Part 10 bytes), one instance per slice, in
    stack order. ``volume01`` has the layout's shape, values in [0, 1]."""
    volume01 = np.nan_to_num(np.asarray(volume01, dtype=np.float64)).clip(0, 1)
    if volume01.shape != layout.shape:
        raise ValueError(f"volume shape {volume01.shape} differs from the series' {layout.shape}")
    source = layout.instances[layout.slices[0].instance].header
    series_uid = generate_uid()
    # the geometry needs a frame of reference: the source's, or a new one for the whole series
    frame_of_reference = str(source.get("FrameOfReferenceUID", "")) or generate_uid()
    sop_class = CT_IMAGE_STORAGE if derivation.target_modality.upper() == "CT" else MR_IMAGE_STORAGE
    now = datetime.now(UTC)
    centre, width = _window(volume01)
    iop = [_ds(v) for v in (*layout.row_cosines, *layout.column_cosines)]
    thickness = layout.slice_thickness or float(np.linalg.norm(layout.slice_step))
    sources = _source_images(layout)
    equipment = _contributing_equipment(derivation, now)
    out = []
    for k, ref in enumerate(layout.slices):
        ds = Dataset()
        for keyword in PATIENT_STUDY_TAGS:
            if keyword in source:
                ds[keyword] = source[keyword]
        sop_uid = generate_uid()
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT" if sop_class == CT_IMAGE_STORAGE else "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(source.get("SeriesNumber", 0) or 0) + 1000
        ds.SeriesDescription = _series_description(derivation)
        ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.InstanceNumber = k + 1
        ds.Manufacturer = MANUFACTURER
        ds.ManufacturerModelName = derivation.model_name[:64]
        ds.SoftwareVersions = [f"midiffusion {__version__}", f"model v{derivation.model_version}"]
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.BurnedInAnnotation = "NO"
        ds.ImageComments = (
            f"Synthetic {derivation.target_modality} made by a model; {NOT_FOR_DIAGNOSTIC_TEXT}"
        )
        ds.DerivationDescription = (
            f"Synthetic {derivation.target_modality} translated from the {layout.modality} "
            f"series {source.get('SeriesNumber', '')} by the MIDiffusion model "
            f"{derivation.model_name} v{derivation.model_version} (zero-shot cross-modality "
            f"translation, {derivation.preset or 'default'} sampling preset, "
            f"{derivation.steps or 'default'} steps, seed {derivation.seed}"
            f"{f', translated as a {derivation.anatomy}' if derivation.anatomy else ''}); "
            f"{NOT_FOR_DIAGNOSTIC_TEXT}"
        )[:1024]
        ds.SourceImageSequence = sources
        ds.ContributingEquipmentSequence = equipment
        # geometry: the source slice at this place in the stack, its own values where it has
        # them (a single-frame instance), so they come back exactly as they were written
        ds.ImagePositionPatient = [_ds(v) for v in ref.position]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [_ds(v) for v in layout.pixel_spacing]
        ds.SliceThickness = _ds(thickness)
        if ref.frame is None:
            own = layout.instances[ref.instance].header
            for keyword in GEOMETRY_TAGS:
                if keyword in own and own[keyword].value not in (None, ""):
                    ds[keyword] = copy.deepcopy(own[keyword])
        ds.SpacingBetweenSlices = _ds(float(np.linalg.norm(layout.slice_step)))
        normal = np.cross(layout.row_cosines, layout.column_cosines)
        ds.SliceLocation = _ds(float(np.dot(ref.position, normal)))
        if sop_class == MR_IMAGE_STORAGE:  # the MR Image module's required attributes
            ds.ScanningSequence = "RM"  # research mode: not acquired, computed
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.EchoTime = ds.RepetitionTime = ds.EchoTrainLength = None
        else:
            ds.KVP = None
        # pixels: 16-bit MONOCHROME2, stored 0..4095 = translated intensity 0..1 (x 4095)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = layout.rows, layout.columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.WindowCenter, ds.WindowWidth = _ds(centre), _ds(width)
        ds.WindowCenterWidthExplanation = "foreground"
        plane = np.rint(volume01[:, :, k].T * STORED_MAX).astype("<u2")
        ds.PixelData = plane.tobytes()
        out.append((sop_uid, _part10(ds)))
    return out


def _source_images(layout: Layout) -> DicomSequence:
    """Every source instance (each frame of a multi-frame one), in stack order: each derived
    slice comes from the whole resampled volume, not from one source slice alone."""
    items = []
    for ref in layout.slices:
        header = layout.instances[ref.instance].header
        item = Dataset()
        item.ReferencedSOPClassUID = header.SOPClassUID
        item.ReferencedSOPInstanceUID = header.SOPInstanceUID
        if ref.frame is not None:
            item.ReferencedFrameNumber = ref.frame + 1
        items.append(item)
    return DicomSequence(items)


def _contributing_equipment(d: Derivation, now: datetime) -> DicomSequence:
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "109103", "DCM"
    purpose.CodeMeaning = "Modifying Equipment"
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = d.model_name[:64]
    item.SoftwareVersions = [f"midiffusion {__version__}", f"model v{d.model_version}"]
    item.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = (
        f"synthetic {d.target_modality} by model {d.model_name} v{d.model_version}; "
        f"{NOT_FOR_DIAGNOSTIC_TEXT}"
    )[:1024]
    return DicomSequence([item])


def _part10(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = f"MIDIFF_{__version__}"[:16]
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def volume01(image: Any) -> np.ndarray:
    """A translated image's voxels (already in [0, 1]) as the series' (column, row, slice)."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    return data.reshape(data.shape[:3]) if data.ndim > 3 else data
