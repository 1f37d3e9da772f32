"""Generated DICOM series for the tests (this module holds no tests).

A series is a phantom (an ellipsoid of tissue with a brighter core) sampled on a real stack of
slices: any orientation, pixel and slice spacing, as single-frame instances (optionally
shuffled, optionally compressed) or as one enhanced multi-frame MR instance. The patient's name
and ID are distinctive strings, so a test can look for them where they must never appear.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

PATIENT_NAME = "Zyxwv^Quentinova"
PATIENT_ID = "PID-73914-QX"
PATIENT_BIRTH = "19610214"
MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def oblique(degrees: float = 20.0) -> tuple[float, ...]:
    """Axial rows and columns rotated about the left-right and then the anterior axis."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rot = ry @ rx
    return (*rot @ [1.0, 0, 0], *rot @ [0, 1.0, 0])


@dataclass
class Series:
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    instances: list[bytes]  # Part 10 bytes, in the order they would be sent
    positions: list[
        tuple[float, float, float]
    ]  # ImagePositionPatient of each slice, in stack order
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    rows: int
    columns: int
    sop_uids: list[str]  # in stack order

    def zip_bytes(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for n, blob in enumerate(self.instances):
                zf.writestr(f"{PATIENT_NAME.split('^')[0]}/IM{n:04d}", blob)
        return buffer.getvalue()


def phantom_values(points: np.ndarray) -> np.ndarray:
    """Tissue intensities at LPS points (mm): an ellipsoid with a brighter core, 0 outside."""
    x, y, z = points[..., 0], points[..., 1] - 5.0, points[..., 2]
    r = (x / 70) ** 2 + (y / 85) ** 2 + (z / 60) ** 2
    core = (x / 30) ** 2 + (y / 35) ** 2 + (z / 30) ** 2
    return np.where(r < 1, 600.0, 0.0) + np.where(core < 1, 350.0, 0.0)


def _base(study: str, series: str, frame_of_ref: str, sop_class: str, sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260301", "101500", "S1"
    ds.AccessionNumber = "ACC1234"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 3
    ds.Modality = "MR"
    ds.FrameOfReferenceUID = frame_of_ref
    ds.PositionReferenceIndicator = ""
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _part10(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if syntax == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_series(
    *,
    slices: int = 12,
    size: tuple[int, int] = (128, 128),
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: tuple[float, float] = (1.5, 1.5),
    slice_spacing: float = 4.0,
    shuffle: bool = True,
    multiframe: bool = False,
    syntax: str = ExplicitVRLittleEndian,
    slope: float = 2.0,
    intercept: float = -100.0,
    seed: int = 0,
    study_uid: str | None = None,
) -> Series:
    rows, cols = size
    orient = np.asarray(orientation, dtype=float)
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    centre = np.array([0.0, 5.0, 0.0])
    first = (
        centre
        - row_dir * pixel_spacing[1] * (cols - 1) / 2
        - col_dir * pixel_spacing[0] * (rows - 1) / 2
        - normal * slice_spacing * (slices - 1) / 2
    )
    positions = [
        tuple(float(v) for v in np.round(first + normal * slice_spacing * k, 4))
        for k in range(slices)
    ]
    jj, ii = np.mgrid[:rows, :cols]
    study = study_uid or generate_uid()
    series, frame_of_ref = generate_uid(), generate_uid()
    planes = []
    for pos in positions:
        points = (
            np.asarray(pos)
            + ii[..., None] * pixel_spacing[1] * row_dir
            + jj[..., None] * pixel_spacing[0] * col_dir
        )
        real = phantom_values(points)
        planes.append(np.rint((real - intercept) / slope).astype(np.uint16))
    iop = [f"{v:.8f}" for v in orient]
    sop_uids = [generate_uid() for _ in positions]
    if multiframe:
        ds = _base(study, series, frame_of_ref, ENHANCED_MR, sop_uids[0])
        ds.NumberOfFrames = slices
        ds.Rows, ds.Columns = rows, cols
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        shared = Dataset()
        measures = Dataset()
        measures.PixelSpacing = list(pixel_spacing)
        measures.SliceThickness = slice_spacing
        plane_orient = Dataset()
        plane_orient.ImageOrientationPatient = iop
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = slope, intercept
        transform.RescaleType = "US"
        shared.PixelMeasuresSequence = DicomSequence([measures])
        shared.PlaneOrientationSequence = DicomSequence([plane_orient])
        shared.PixelValueTransformationSequence = DicomSequence([transform])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        order = list(range(slices))
        if shuffle:
            random.Random(seed).shuffle(order)  # frames stored out of stack order
        per_frame = []
        for k in order:
            item, plane_pos = Dataset(), Dataset()
            plane_pos.ImagePositionPatient = list(positions[k])
            item.PlanePositionSequence = DicomSequence([plane_pos])
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
        ds.PixelData = np.stack([planes[k] for k in order]).astype("<u2").tobytes()
        return Series(
            study,
            series,
            frame_of_ref,
            [_part10(ds, syntax)],
            positions,
            tuple(orient),
            pixel_spacing,
            slice_spacing,
            rows,
            cols,
            [sop_uids[0]],
        )
    blobs = []
    for k, pos in enumerate(positions):
        ds = _base(study, series, frame_of_ref, MR, sop_uids[k])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = list(pos)
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_spacing
        ds.Rows, ds.Columns = rows, cols
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
        ds.PixelData = planes[k].astype("<u2").tobytes()
        blobs.append(_part10(ds, syntax))
    order = list(range(slices))
    if shuffle:
        random.Random(seed).shuffle(order)
    return Series(
        study,
        series,
        frame_of_ref,
        [blobs[k] for k in order],
        positions,
        tuple(orient),
        pixel_spacing,
        slice_spacing,
        rows,
        cols,
        sop_uids,
    )


def expected_volume(series: Series) -> np.ndarray:
    """The rescaled phantom on the series' grid, as (column, row, slice)."""
    orient = np.asarray(series.orientation)
    jj, ii = np.mgrid[: series.rows, : series.columns]
    out = []
    for pos in series.positions:
        points = (
            np.asarray(pos)
            + ii[..., None] * series.pixel_spacing[1] * orient[:3]
            + jj[..., None] * series.pixel_spacing[0] * orient[3:]
        )
        out.append(phantom_values(points).T)
    return np.stack(out, axis=-1)


def check_derived(series: Series, derived: list, model: str, version: int) -> None:
    """Every tag the derived series must carry, slice by slice, against its source ``series``.
    ``derived``: pydicom datasets of the result, in any order."""
    derived = sorted(derived, key=lambda d: int(d.InstanceNumber))
    assert len(derived) == len(series.positions)
    series_uids = {str(d.SeriesInstanceUID) for d in derived}
    assert len(series_uids) == 1 and series.series_uid not in series_uids
    sops = [str(d.SOPInstanceUID) for d in derived]
    assert len(set(sops)) == len(sops) and not set(sops) & set(series.sop_uids)
    for k, d in enumerate(derived):
        assert str(d.StudyInstanceUID) == series.study_uid
        assert str(d.FrameOfReferenceUID) == series.frame_of_reference_uid
        assert (str(d.PatientName), d.PatientID, d.PatientBirthDate) == (
            PATIENT_NAME,
            PATIENT_ID,
            PATIENT_BIRTH,
        )
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert f"{model} v{version}" in d.SeriesDescription
        assert "NOT FOR DIAGNOSTIC USE" in d.SeriesDescription.upper()
        assert model in d.DerivationDescription
        refs = {str(r.ReferencedSOPInstanceUID) for r in d.SourceImageSequence}
        assert refs == set(series.sop_uids)
        equipment = d.ContributingEquipmentSequence[0]
        assert equipment.Manufacturer and equipment.ManufacturerModelName == model
        assert any(f"v{version}" in str(v) for v in equipment.SoftwareVersions)
        np.testing.assert_allclose(
            [float(v) for v in d.ImagePositionPatient], series.positions[k], atol=1e-4
        )
        np.testing.assert_allclose(
            [float(v) for v in d.ImageOrientationPatient], series.orientation, atol=1e-6
        )
        np.testing.assert_allclose([float(v) for v in d.PixelSpacing], series.pixel_spacing)
        assert float(d.SliceThickness) == pytest.approx(series.slice_spacing)
        assert (d.BitsAllocated, d.SamplesPerPixel) == (16, 1)
        assert d.PhotometricInterpretation == "MONOCHROME2"
        assert "RescaleSlope" in d and "RescaleIntercept" in d
        assert float(d.WindowWidth) > 0 and "WindowCenter" in d
        assert d.pixel_array.shape == (series.rows, series.columns)
