"""DICOM in and out: generated series (axial, sagittal, oblique; several spacings; multi-frame;
shuffled; RLE) and pydicom's shipped files, through the intake rules, into a volume, and back
out as a derived series whose geometry, UIDs and study are checked; then every refusal."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_support import (
    PATIENT_BIRTH,
    PATIENT_ID,
    PATIENT_NAME,
    SAGITTAL,
    expected_volume,
    make_series,
    oblique,
)
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from jobs.dicom_archive import Limits, zip_entries
from jobs.dicom_intake import DicomRejected, plan_upload
from midiffusion.io.dicom_series import Derivation, derived_series, read_volume

DERIVATION = Derivation("tiny", 3, "T1w", steps=4, seed=1)
CASES = {
    "axial": {},
    "sagittal": {"orientation": SAGITTAL, "pixel_spacing": (1.0, 1.25), "slice_spacing": 2.5},
    "oblique": {"orientation": oblique(25), "slice_spacing": 5.5},
    "multiframe-oblique": {"orientation": oblique(12), "multiframe": True, "slice_spacing": 3.0},
    "rle-axial-160": {"syntax": RLELossless, "size": (160, 144), "slice_spacing": 1.5},
}


def _shipped(name: str) -> bytes:
    """One of the test files pydicom ships (those in its package, never downloaded)."""
    return Path(get_testdata_file(name, download=False)).read_bytes()


def _read(blob: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(blob))


@pytest.mark.parametrize("case", CASES)
def test_series_to_volume_to_derived_series(case: str) -> None:
    series = make_series(**CASES[case])
    layout = plan_upload(zip_entries(series.zip_bytes()), keep_bytes=True)
    image = read_volume(layout)
    assert image.header.get_xyzt_units()[0] == "mm"  # the spacing is physical (field-of-view floor)
    # voxels: the rescaled phantom, in stack order whatever order the files came in
    np.testing.assert_allclose(image.get_fdata(), expected_volume(series), atol=1.01)
    # the affine: voxel (i, j, k) lands where the DICOM geometry says (RAS = LPS with x, y negated)
    orient = np.asarray(series.orientation)
    for i, j, k in [
        (0, 0, 0),
        (series.columns - 1, 5, 3),
        (7, series.rows - 1, len(series.positions) - 1),
    ]:
        lps = (
            np.asarray(series.positions[k])
            + i * series.pixel_spacing[1] * orient[:3]
            + j * series.pixel_spacing[0] * orient[3:]
        )
        ras = image.affine @ [i, j, k, 1]
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)

    translated = np.clip(image.get_fdata() / 1000.0, 0, 1)
    out = derived_series(layout, translated, DERIVATION)
    assert len(out) == len(series.positions)
    derived = [_read(blob) for _, blob in out]
    source = _read(series.instances[0])
    new_sops = {d.SOPInstanceUID for d in derived}
    assert len(new_sops) == len(derived) and not new_sops & set(series.sop_uids)
    assert {d.SeriesInstanceUID for d in derived} == {derived[0].SeriesInstanceUID}
    assert derived[0].SeriesInstanceUID != series.series_uid
    for k, d in enumerate(derived):
        assert d.StudyInstanceUID == series.study_uid
        assert d.FrameOfReferenceUID == series.frame_of_reference_uid
        assert (d.PatientName, d.PatientID, d.PatientBirthDate) == (
            source.PatientName,
            source.PatientID,
            source.PatientBirthDate,
        )
        assert d.AccessionNumber == source.AccessionNumber
        assert list(d.ImageType) == ["DERIVED", "SECONDARY"]
        assert "tiny v3" in d.SeriesDescription and "NOT FOR DIAGNOSTIC USE" in d.SeriesDescription
        assert "tiny v3" in d.DerivationDescription
        assert "not for diagnostic use" in d.ImageComments.lower()
        refs = [r.ReferencedSOPInstanceUID for r in d.SourceImageSequence]
        assert set(refs) == set(series.sop_uids)
        equipment = d.ContributingEquipmentSequence[0]
        assert equipment.ManufacturerModelName == "tiny"
        assert "model v3" in list(equipment.SoftwareVersions)
        assert equipment.Manufacturer
        # geometry, slice by slice
        np.testing.assert_allclose(
            [float(v) for v in d.ImagePositionPatient], series.positions[k], atol=1e-4
        )
        np.testing.assert_allclose(
            [float(v) for v in d.ImageOrientationPatient], series.orientation, atol=1e-6
        )
        np.testing.assert_allclose([float(v) for v in d.PixelSpacing], series.pixel_spacing)
        assert float(d.SliceThickness) == pytest.approx(series.slice_spacing)
        # pixels: 16-bit MONOCHROME2, rescale and window set, values the translated ones
        assert (d.BitsAllocated, d.PhotometricInterpretation) == (16, "MONOCHROME2")
        assert d.Modality == "MR" and d.InstanceNumber == k + 1
        real = d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
        np.testing.assert_allclose(real / 4095.0, translated[:, :, k].T, atol=0.5 / 4095 + 1e-6)
        assert float(d.WindowWidth) > 0 and 0 < float(d.WindowCenter) < 4095


def test_the_derived_series_reads_back_as_the_same_grid() -> None:
    series = make_series(orientation=oblique(33), slice_spacing=2.0)
    layout = plan_upload(series.instances, keep_bytes=True)
    image = read_volume(layout)
    out = derived_series(layout, np.clip(image.get_fdata() / 1000, 0, 1), DERIVATION)
    again = plan_upload([blob for _, blob in reversed(out)], keep_bytes=True)
    np.testing.assert_allclose(read_volume(again).affine, image.affine, atol=1e-4)
    assert again.study_uid == layout.study_uid and again.series_uid != layout.series_uid


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"],
)
def test_pydicoms_compressed_files_decode_like_the_uncompressed_one(name: str) -> None:
    reference = read_volume(plan_upload([_shipped("MR_small.dcm")], keep_bytes=True))
    layout = plan_upload([_shipped(name)], keep_bytes=True)
    np.testing.assert_array_equal(read_volume(layout).get_fdata(), reference.get_fdata())
    np.testing.assert_allclose(read_volume(layout).affine, reference.affine)


def test_pydicoms_ct_file_is_rescaled() -> None:
    blob = _shipped("CT_small.dcm")
    ds = _read(blob)
    volume = read_volume(plan_upload([blob], keep_bytes=True)).get_fdata()[:, :, 0]
    expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(volume, expected)


# -- refusals ------------------------------------------------------------------------------


def _refused(blobs: list[bytes]) -> str:
    with pytest.raises(DicomRejected) as info:
        plan_upload(blobs)
    message = str(info.value)
    for secret in (PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID, PATIENT_BIRTH):
        assert secret not in message
    return message


def _edit(blob: bytes, **changes: object) -> bytes:
    ds = _read(blob)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_several_series_or_studies_are_refused() -> None:
    a, b = make_series(slices=4, seed=1), make_series(slices=4, seed=2)
    assert "2 studies" in _refused(a.instances + b.instances)
    c = make_series(slices=4, study_uid=a.study_uid)
    assert "2 series" in _refused(a.instances + c.instances)


def test_inconsistent_orientation_or_spacing_is_refused() -> None:
    s = make_series(slices=6, shuffle=False)
    tilted = [*s.instances[:3], _edit(s.instances[3], ImageOrientationPatient=list(oblique(10)))]
    assert "inconsistent orientations" in _refused(tilted)
    wider = [*s.instances[:3], _edit(s.instances[3], PixelSpacing=[1.6, 1.6])]
    assert "inconsistent pixel spacing" in _refused(wider)


def test_a_missing_slice_is_refused() -> None:
    s = make_series(slices=8, slice_spacing=3.0)
    ordered = sorted(s.instances, key=lambda b: float(_read(b).ImagePositionPatient[2]))
    message = _refused(ordered[:4] + ordered[5:])
    assert "not evenly spaced" in message and "6 mm" in message and "missing slice" in message


def test_a_repeated_position_is_refused() -> None:
    s = make_series(slices=5, shuffle=False)
    position = _read(s.instances[0]).ImagePositionPatient
    assert "same position" in _refused(
        [*s.instances[:4], _edit(s.instances[4], ImagePositionPatient=position)]
    )


def test_missing_pixel_data_is_refused() -> None:
    s = make_series(slices=4)
    message = _refused([*s.instances[:3], _edit(s.instances[3], PixelData=None)])
    assert "no pixel data" in message and "file 4" in message


def test_a_non_image_is_refused() -> None:
    report = _shipped("test-SR.dcm")
    message = _refused([report])
    assert "SR Storage" in message and "not an image" in message
    dose = _shipped("rtdose.dcm")
    assert "RT Dose Storage" in _refused([dose])


def test_a_colour_image_is_refused() -> None:
    s = make_series(slices=3, size=(32, 32))
    rgb = _edit(
        s.instances[0], PhotometricInterpretation="RGB", SamplesPerPixel=3, PlanarConfiguration=0
    )
    assert "colour image" in _refused([rgb]) and "RGB" in _refused([rgb])


def test_a_file_that_is_not_dicom_is_refused_by_position() -> None:
    s = make_series(slices=3, size=(32, 32))
    message = _refused([*s.instances, b"hello, not a dicom file" * 20])
    assert "file 4" in message and "not a readable DICOM" in message


def test_zip_caps_hold_before_anything_is_kept() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in range(6):
            zf.writestr(f"../../etc/{n}", b"\0" * 1000)
    small = Limits(max_entries=5, max_entry_bytes=2000, max_total_bytes=10_000)
    with pytest.raises(DicomRejected, match="at most 5"):
        list(zip_entries(buffer.getvalue(), small))
    with pytest.raises(DicomRejected, match="expands to more than"):
        list(zip_entries(buffer.getvalue(), Limits(max_entry_bytes=999)))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big", b"\0" * (3 * 1024 * 1024))
    with pytest.raises(DicomRejected, match="expands to more than 2 MiB"):
        list(zip_entries(bomb.getvalue(), Limits(max_entry_bytes=2 * 1024 * 1024)))
    with pytest.raises(DicomRejected, match="cannot be read"):
        list(zip_entries(b"PK\x03\x04 broken"))


def test_odd_patient_values_reach_no_warning_or_log(caplog) -> None:
    """pydicom's value checks quote what they read; none of a patient's data may come out."""
    import logging
    import warnings

    from pydicom.dataelem import DataElement

    secret = "SECRETVALUE"
    ds = _read(make_series(slices=3, size=(32, 32), shuffle=False).instances[0])
    ds["PatientName"] = DataElement(0x00100010, "PN", f"{secret}^" + "X" * 70)
    ds["PatientBirthDate"] = DataElement(0x00100030, "DA", f"{secret}!")
    ds["PatientAge"] = DataElement(0x00101010, "AS", f"{secret}")
    buffer = io.BytesIO()
    ds.save_as(buffer)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layout = plan_upload([buffer.getvalue()], keep_bytes=True)
        out = derived_series(layout, read_volume(layout).get_fdata() / 1000, DERIVATION)
        derived = _read(out[0][1])
        assert secret in str(derived.PatientName)  # copied as it was, not reported
    assert all(secret not in str(w.message) for w in caught)
    assert secret not in caplog.text


def test_bare_data_sets_without_the_part10_preamble_are_read() -> None:
    """Some exporters write the data set alone (implicit VR, no preamble, no file meta)."""
    from service.dicom_check import is_dicom_upload

    series = make_series(slices=5, size=(40, 40), orientation=oblique(10))
    bare = []
    for blob in series.instances:
        ds = _read(blob)
        del ds.file_meta
        ds.preamble = None
        buffer = io.BytesIO()
        ds.save_as(buffer, implicit_vr=True, little_endian=True)
        bare.append(buffer.getvalue())
    assert bare[0][128:132] != b"DICM" and is_dicom_upload(bare[0][:132], 1)
    reference = read_volume(plan_upload(series.instances, keep_bytes=True))
    layout = plan_upload(bare, keep_bytes=True)
    np.testing.assert_array_equal(read_volume(layout).get_fdata(), reference.get_fdata())
    np.testing.assert_allclose(read_volume(layout).affine, reference.affine)
    out = derived_series(layout, reference.get_fdata() / 1000, DERIVATION)
    assert _read(out[0][1]).StudyInstanceUID == series.study_uid


def test_an_unknown_compressed_syntax_is_refused_by_name() -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    s = make_series(slices=2, size=(32, 32))
    ds = _read(s.instances[0])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\0" * 64])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    message = _refused([buffer.getvalue()])
    assert "MPEG2" in message and "cannot decode" in message


def test_monochrome1_is_inverted_so_dense_stays_bright_in_the_volume() -> None:
    s = make_series(slices=3, size=(32, 32), shuffle=False)
    blobs = [_edit(b, PhotometricInterpretation="MONOCHROME1") for b in s.instances]
    normal = read_volume(plan_upload(s.instances, keep_bytes=True)).get_fdata()
    inverted = read_volume(plan_upload(blobs, keep_bytes=True)).get_fdata()
    np.testing.assert_allclose(inverted, -normal)


def test_a_series_without_a_frame_of_reference_gets_one_for_the_whole_derived_series() -> None:
    s = make_series(slices=4, size=(32, 32))
    blobs = [_edit(b, FrameOfReferenceUID=None) for b in s.instances]
    layout = plan_upload(blobs, keep_bytes=True)
    out = derived_series(layout, read_volume(layout).get_fdata() / 1000, DERIVATION)
    frames = {str(_read(blob).FrameOfReferenceUID) for _, blob in out}
    assert len(frames) == 1 and frames != {s.frame_of_reference_uid} and frames != {""}


def test_the_derivation_records_how_the_series_was_made() -> None:
    series = make_series()
    layout = plan_upload(zip_entries(series.zip_bytes()), keep_bytes=True)
    translated = np.clip(read_volume(layout).get_fdata() / 1000.0, 0, 1)
    said = Derivation("tiny", 3, "T1w", preset="fast", seed=5, anatomy="head")
    for derivation, needles, absent in (
        (DERIVATION, ("default sampling preset", "4 steps", "seed 1"), "translated as"),
        (said, ("fast sampling preset", "default steps", "seed 5", "translated as a head"), None),
    ):
        text = _read(derived_series(layout, translated, derivation)[0][1]).DerivationDescription
        assert all(n in text for n in needles), text
        assert absent is None or absent not in text
