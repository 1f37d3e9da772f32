"""The rules a DICOM series must meet before it becomes a job, in one place.

The gateway runs them on headers only (``stop_before_pixels``) before it queues a job; the
worker, the command line, the STOW-RS route and the C-STORE listener run the same ones, so an
upload is judged alike wherever it comes in. Archives (a zip, a folder) are opened by
``jobs.dicom_archive``. Torch-free: pydicom and numpy only.

An upload is a list of instances (Part 10 files, or bare data sets). They are sorted along the
slice normal, and the LPS geometry of the sorted stack becomes the affine.

Refusals (:class:`DicomRejected`) name the problem and what is accepted, never a value from the
files: entries are named by their position in the upload, and patient data never appears.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

ACCEPTED = (
    "one DICOM series of one study: CT, MR or PET images, single-frame or enhanced multi-frame, "
    "greyscale (MONOCHROME1/2), sent as several `file` parts (one instance each) or as one zip "
    "of the instances"
)
# Image storage SOP classes with patient geometry (plane position and orientation).
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index, skipped
PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) little / big endian
DICM_OFFSET = 128

# pydicom's checks of values it reads warn and log with the value itself, and a value here may
# be a patient's name or birth date: the intake judges what it needs and reports nothing else.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

MIN_INPLANE = 16
MAX_DIM = 2048
MAX_VOXELS = 512 * 512 * 512
ORIENTATION_TOL = 1e-3  # direction cosines
SPACING_RTOL = 1e-3
GAP_RTOL = 0.05  # slices more than 5 % off the common step are an uneven gap


class DicomRejected(ValueError):
    """The upload is not an acceptable DICOM series; the message says what was wrong."""


# The first tag of a data set written without the Part 10 preamble (some exporters do that):
# group 0002 (file meta) or 0008 (identification), little endian.
RAW_DATASET_STARTS = (b"\x02\x00", b"\x08\x00")


def is_dicom_part10(head: bytes) -> bool:
    return head[DICM_OFFSET : DICM_OFFSET + 4] == b"DICM"


def looks_like_dicom(head: bytes) -> bool:
    """A Part 10 file, or a bare data set (no preamble). A NIfTI starts with 348 or 540."""
    return is_dicom_part10(head) or head[:2] in RAW_DATASET_STARTS


# -- headers ----------------------------------------------------------------------------------


@dataclass
class Instance:
    """One instance's header (read without its pixels) and, when kept, its bytes."""

    position: int  # 1-based place in the upload, the only name a refusal uses
    header: Dataset
    has_pixels: bool
    data: bytes | None = None


def read_header(data: bytes | BinaryIO, position: int) -> Instance | None:
    """The instance's header, or None for a DICOMDIR (an index, not an instance)."""
    fh: Any = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    start = fh.tell()
    head = fh.read(DICM_OFFSET + 4)
    fh.seek(start)
    refusal = (
        f"file {position} of the upload is not a readable DICOM file (Part 10: a 128-byte "
        f"preamble, then DICM; or a bare data set); {_acc()}"
    )
    if not looks_like_dicom(head):
        raise DicomRejected(refusal)
    try:
        # force: a bare data set has no preamble; what it holds is checked below all the same
        header = pydicom.dcmread(fh, stop_before_pixels=True, force=not is_dicom_part10(head))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomRejected(refusal) from exc
    if "SOPClassUID" not in header and "SOPInstanceUID" not in header:
        raise DicomRejected(refusal)
    _fill_transfer_syntax(header)
    if str(header.file_meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        return None
    has_pixels = fh.read(4) in PIXEL_TAGS
    return Instance(position, header, has_pixels, data if isinstance(data, bytes) else None)


def _fill_transfer_syntax(header: Dataset) -> None:
    """A bare data set names no transfer syntax: record the encoding it was read with."""
    if "TransferSyntaxUID" in header.get("file_meta", Dataset()):
        return
    implicit, little = header.original_encoding
    syntax = (
        pydicom.uid.ImplicitVRLittleEndian
        if implicit
        else (pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
    )
    if not hasattr(header, "file_meta"):
        header.file_meta = pydicom.dataset.FileMetaDataset()
    header.file_meta.TransferSyntaxUID = syntax


def read_headers(blobs: Iterable[bytes], *, keep_bytes: bool = False) -> list[Instance]:
    instances = []
    for position, blob in enumerate(blobs, 1):
        inst = read_header(blob, position)
        if inst is not None:
            if not keep_bytes:
                inst.data = None
            instances.append(inst)
    if not instances:
        raise DicomRejected(f"the upload holds no DICOM instance; {_acc()}")
    return instances


# -- the series -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceRef:
    """One plane of the stack: which instance (and frame) holds it, where, and its rescale."""

    instance: int  # index into SeriesLayout.instances
    frame: int | None  # 0-based frame of a multi-frame instance; None for single-frame
    position: tuple[float, float, float]  # ImagePositionPatient (LPS, mm)
    slope: float
    intercept: float


@dataclass
class SeriesLayout:
    instances: list[Instance]
    slices: list[SliceRef]  # sorted along the normal
    rows: int
    columns: int
    row_cosines: np.ndarray  # direction of increasing column index (IOP[:3])
    column_cosines: np.ndarray  # direction of increasing row index (IOP[3:])
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    slice_step: np.ndarray  # LPS vector from one slice to the next, mm
    slice_thickness: float | None
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None
    modality: str
    transfer_syntaxes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The volume's array shape: (columns, rows, slices), NIfTI's voxel order."""
        return (self.columns, self.rows, len(self.slices))

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return (
            self.pixel_spacing[1],
            self.pixel_spacing[0],
            float(np.linalg.norm(self.slice_step)),
        )

    def affine_lps(self) -> np.ndarray:
        affine = np.eye(4)
        affine[:3, 0] = self.row_cosines * self.pixel_spacing[1]
        affine[:3, 1] = self.column_cosines * self.pixel_spacing[0]
        affine[:3, 2] = self.slice_step
        affine[:3, 3] = self.slices[0].position
        return affine

    def affine_ras(self) -> np.ndarray:
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()


def _acc() -> str:
    return f"accepted: {ACCEPTED}"


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _item(ds: Dataset | None, sequence: str) -> Dataset | None:
    seq = ds.get(sequence) if ds is not None else None
    return seq[0] if seq else None


def _frame_value(shared: Dataset | None, frame: Dataset | None, seq: str, attr: str) -> Any:
    for groups in (frame, shared):
        item = _item(groups, seq)
        if item is not None and attr in item:
            return item.get(attr)
    return None


def _planes(inst: Instance) -> list[tuple[int | None, Any, Any, Any, Any, Any, Any]]:
    """(frame, IPP, IOP, PixelSpacing, SliceThickness, slope, intercept) of each plane."""
    ds = inst.header
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frames == 1 and per_frame is None:
        return [
            (
                None,
                ds.get("ImagePositionPatient"),
                ds.get("ImageOrientationPatient"),
                ds.get("PixelSpacing"),
                ds.get("SliceThickness"),
                ds.get("RescaleSlope", 1),
                ds.get("RescaleIntercept", 0),
            )
        ]
    if per_frame is None or len(per_frame) != frames:
        raise DicomRejected(
            f"file {inst.position} is a multi-frame image without a position for each of its "
            f"{frames} frames (PerFrameFunctionalGroupsSequence); accepted are enhanced "
            "multi-frame CT/MR/PET images"
        )
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    out = []
    for index, groups in enumerate(per_frame):
        value = _frame_value
        out.append(
            (
                index,
                value(shared, groups, "PlanePositionSequence", "ImagePositionPatient"),
                value(shared, groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
                value(shared, groups, "PixelMeasuresSequence", "PixelSpacing"),
                value(shared, groups, "PixelMeasuresSequence", "SliceThickness"),
                value(shared, groups, "PixelValueTransformationSequence", "RescaleSlope") or 1,
                value(shared, groups, "PixelValueTransformationSequence", "RescaleIntercept") or 0,
            )
        )
    return out


def _check_instance(inst: Instance) -> None:
    ds = inst.header
    where = f"file {inst.position}"
    sop = str(ds.get("SOPClassUID", ""))
    if sop not in IMAGE_SOP_CLASSES:
        name = pydicom.uid.UID(sop).name if sop else "an object without a SOP class"
        raise DicomRejected(
            f"{where} is a {name}, not an image with patient geometry; accepted SOP classes: "
            + ", ".join(sorted(set(IMAGE_SOP_CLASSES.values())))
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        raise DicomRejected(
            f"{where} is a colour image (PhotometricInterpretation {photometric or 'missing'}, "
            f"{ds.get('SamplesPerPixel', 1)} samples per pixel); accepted: greyscale "
            "(MONOCHROME1 or MONOCHROME2)"
        )
    if not inst.has_pixels:
        raise DicomRejected(
            f"{where} has no pixel data (7FE0,0010); every instance needs its image"
        )
    syntax = pydicom.uid.UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if not syntax.is_transfer_syntax:
        raise DicomRejected(f"{where} names no known transfer syntax ({syntax or 'none'})")
    if syntax.is_compressed:
        from pydicom.pixels import get_decoder  # only when needed: it loads the plugins

        try:
            available = get_decoder(syntax).is_available
        except (NotImplementedError, ValueError):
            available = False
        if not available:
            raise DicomRejected(
                f"{where} uses the transfer syntax {syntax.name or 'unknown'} ({syntax}), which "
                "this service cannot decode; accepted: uncompressed, RLE, JPEG baseline and "
                "lossless, JPEG-LS, JPEG 2000"
            )


def plan_series(instances: list[Instance]) -> SeriesLayout:
    """Check the instances form one regular series and sort them; raise :class:`DicomRejected`."""
    studies = {str(i.header.get("StudyInstanceUID", "")) for i in instances}
    series = {str(i.header.get("SeriesInstanceUID", "")) for i in instances}
    if len(studies) > 1:
        raise DicomRejected(
            f"the upload holds instances of {len(studies)} studies; send one series of one study "
            "per request"
        )
    if len(series) > 1:
        raise DicomRejected(
            f"the upload holds {len(series)} series; send one series per request (the STOW-RS "
            "route POST /dicomweb/studies takes several and makes one job each)"
        )
    if "" in series or "" in studies:
        raise DicomRejected("an instance has no StudyInstanceUID or SeriesInstanceUID")
    for inst in instances:
        _check_instance(inst)
    sops = [str(i.header.get("SOPInstanceUID", "")) for i in instances]
    if len(set(sops)) != len(sops):
        raise DicomRejected("the same instance (SOPInstanceUID) is sent more than once")

    first = instances[0].header
    rows, columns = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    planes: list[SliceRef] = []
    orientations, spacings, thickness = [], [], None
    for index, inst in enumerate(instances):
        where = f"file {inst.position}"
        if (int(inst.header.get("Rows", 0) or 0), int(inst.header.get("Columns", 0) or 0)) != (
            rows,
            columns,
        ):
            raise DicomRejected(
                f"{where} has another image size than file 1; a series has one size throughout"
            )
        for frame, ipp, iop, spacing, thick, slope, intercept in _planes(inst):
            position, orient, pixel = _floats(ipp, 3), _floats(iop, 6), _floats(spacing, 2)
            if position is None or orient is None or pixel is None:
                raise DicomRejected(
                    f"{where} lacks patient geometry (ImagePositionPatient, "
                    "ImageOrientationPatient and PixelSpacing are needed to place the slices)"
                )
            scale = _floats([slope, intercept], 2)
            if scale is None or scale[0] == 0:
                raise DicomRejected(f"{where} has an unusable RescaleSlope/RescaleIntercept")
            if thickness is None and _floats([thick], 1):
                thickness = float(thick)
            orientations.append(orient)
            spacings.append(pixel)
            planes.append(SliceRef(index, frame, position, scale[0], scale[1]))

    iop = np.asarray(orientations)
    if np.abs(iop - iop[0]).max() > ORIENTATION_TOL:
        raise DicomRejected(
            "the instances have inconsistent orientations (ImageOrientationPatient differs): "
            "they are not one stack of parallel slices; send one series of parallel slices"
        )
    ps = np.asarray(spacings)
    if np.abs(ps - ps[0]).max() > SPACING_RTOL * ps[0].max():
        raise DicomRejected(
            "the instances have inconsistent pixel spacing (PixelSpacing differs between slices)"
        )
    row_cos, col_cos = np.asarray(iop[0][:3]), np.asarray(iop[0][3:])
    if (
        abs(np.linalg.norm(row_cos) - 1) > 0.01
        or abs(np.linalg.norm(col_cos) - 1) > 0.01
        or abs(float(row_cos @ col_cos)) > 0.01
    ):
        raise DicomRejected("ImageOrientationPatient does not hold two perpendicular unit vectors")
    row_cos, col_cos = row_cos / np.linalg.norm(row_cos), col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    planes.sort(key=lambda s: float(np.dot(s.position, normal)))
    step = _slice_step(planes, normal, thickness)
    _check_size(rows, columns, len(planes))
    return SeriesLayout(
        instances=instances,
        slices=planes,
        rows=rows,
        columns=columns,
        row_cosines=row_cos,
        column_cosines=col_cos,
        pixel_spacing=(float(ps[0][0]), float(ps[0][1])),
        slice_step=step,
        slice_thickness=thickness,
        study_uid=studies.pop(),
        series_uid=series.pop(),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")) or None,
        modality=str(first.get("Modality", "")),
        transfer_syntaxes=sorted(
            {str(i.header.file_meta.get("TransferSyntaxUID", "")) for i in instances}
        ),
    )


def _slice_step(planes: list[SliceRef], normal: np.ndarray, thickness: float | None) -> np.ndarray:
    if len(planes) == 1:
        return normal * (thickness if thickness and thickness > 0 else 1.0)
    positions = np.asarray([p.position for p in planes])
    along = positions @ normal
    gaps = np.diff(along)
    if gaps.min() < 1e-3:
        raise DicomRejected(
            "two slices lie at the same position (a repeated slice, or two acquisitions in one "
            "series); send a series with one slice per position"
        )
    common = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - common)))
    if abs(gaps[worst] - common) > GAP_RTOL * common:
        hint = " (a missing slice?)" if gaps[worst] > common else ""
        raise DicomRejected(
            f"the slices are not evenly spaced: slices {worst + 1} and {worst + 2} (counted along "
            f"the stack) are {gaps[worst]:.3g} mm apart, the others {common:.3g} mm{hint}; "
            "accepted is a series with one even slice spacing"
        )
    steps = np.diff(positions, axis=0)
    mean_step = steps.mean(axis=0)
    if np.abs(steps - mean_step).max() > GAP_RTOL * common:
        raise DicomRejected(
            "the slice positions do not lie on one line (ImagePositionPatient moves sideways "
            "between slices); accepted is one regular stack"
        )
    return mean_step


def _check_size(rows: int, columns: int, n: int) -> None:
    if min(rows, columns) < MIN_INPLANE or max(rows, columns, n) > MAX_DIM:
        raise DicomRejected(
            f"the series is {rows} x {columns} pixels x {n} slices; accepted: {MIN_INPLANE} to "
            f"{MAX_DIM} pixels a side and at most {MAX_DIM} slices"
        )
    if rows * columns * n > MAX_VOXELS:
        raise DicomRejected(
            f"the series holds {rows * columns * n} voxels; at most {MAX_VOXELS} (512^3)"
        )


def plan_upload(blobs: Iterable[bytes], *, keep_bytes: bool = False) -> SeriesLayout:
    """Headers, checks and order of one upload's instances (``keep_bytes`` for the pixels)."""
    return plan_series(read_headers(blobs, keep_bytes=keep_bytes))
