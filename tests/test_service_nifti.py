"""The gateway's NIfTI check: real files, each bad one refused with what was wrong."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_service_support import sample_affine, write_nifti

from service.nifti_check import NiftiRejected, check_nifti, suffix_for


def test_accepts_3d_gzip_and_describes_it(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", (40, 36, 5))
    summary = check_nifti(path)
    assert summary.shape == (40, 36, 5)
    assert summary.voxel_size == pytest.approx((1.25, 1.1, 3.0))
    assert summary.dtype == "float32" and not summary.is_2d
    assert suffix_for(path.read_bytes()[:2]) == ".nii.gz"


def test_accepts_2d_uncompressed_for_png(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "s.nii", (48, 40))
    summary = check_nifti(path, output_format="png")
    assert summary.is_2d and summary.shape == (48, 40)
    assert suffix_for(path.read_bytes()[:2]) == ".nii"


def test_png_needs_a_2d_image(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", (32, 32, 4))
    with pytest.raises(NiftiRejected, match="png is only for 2D"):
        check_nifti(path, output_format="png")


def test_refuses_a_file_that_is_not_nifti(tmp_path: Path) -> None:
    path = tmp_path / "x.nii"
    path.write_bytes(b"this is a text file, not an image\n" * 20)
    with pytest.raises(NiftiRejected, match=r"not a readable NIfTI.*accepted"):
        check_nifti(path)


def test_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "x.nii"
    path.write_bytes(b"")
    with pytest.raises(NiftiRejected, match="empty"):
        check_nifti(path)


def test_refuses_a_4d_series(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "t.nii.gz", data=np.zeros((32, 32, 4, 3), np.float32))
    with pytest.raises(NiftiRejected, match="4 dimensions"):
        check_nifti(path)


def test_refuses_a_too_small_image(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "small.nii.gz", data=np.zeros((8, 32, 3), np.float32))
    with pytest.raises(NiftiRejected, match="outside the accepted range"):
        check_nifti(path)


def test_refuses_complex_voxels(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "c.nii", data=np.zeros((32, 32, 2), np.complex64))
    with pytest.raises(NiftiRejected, match="complex"):
        check_nifti(path)


def test_refuses_a_non_finite_affine(tmp_path: Path) -> None:
    path = tmp_path / "a.nii"
    nib.Nifti1Image(np.zeros((32, 32, 2), np.float32), sample_affine()).to_filename(path)
    raw = bytearray(path.read_bytes())
    raw[280:284] = np.float32(np.nan).tobytes()  # srow_x[0]: the sform the affine comes from
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiRejected, match="NaN or infinite"):
        check_nifti(path)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_refuses_a_truncated_file(tmp_path: Path, name: str) -> None:
    whole = write_nifti(tmp_path / "whole.nii", (32, 32, 4))
    raw = whole.read_bytes()
    cut = raw[: len(raw) - 1000]
    path = tmp_path / name
    path.write_bytes(gzip.compress(cut) if name.endswith(".gz") else cut)
    with pytest.raises(NiftiRejected, match="truncated: the header promises 16384 bytes"):
        check_nifti(path)


def test_refuses_a_damaged_gzip_stream(tmp_path: Path) -> None:
    raw = bytearray(write_nifti(tmp_path / "v.nii.gz", (32, 32, 8)).read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 40] = b"\x00" * 40
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiRejected):
        check_nifti(path)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "says"),
    [
        (0, "i", 12345, "sizeof_hdr"),
        (72, "h", 3, "bitpix does not match"),
        (80, "f", 0.0, "pixdim"),
    ],
)
def test_refuses_a_header_that_contradicts_itself(
    tmp_path: Path, offset: int, fmt: str, value: float, says: str
) -> None:
    """nibabel would repair these silently; a hostile or broken writer is refused instead."""
    raw = bytearray(write_nifti(tmp_path / "v.nii", (32, 32, 2)).read_bytes())
    struct.pack_into("<" + fmt, raw, offset, value)
    path = tmp_path / "lying.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiRejected, match=f"contradicts itself.*{re.escape(says)}"):
        check_nifti(path)


def test_refuses_values_that_overflow_float32_once_scaled(tmp_path: Path) -> None:
    data = np.zeros((32, 32, 2), np.float64)
    data[10:20, 10:20] = 1e300
    path = write_nifti(tmp_path / "big.nii", data=data)
    with pytest.raises(NiftiRejected, match="do not fit in 32-bit floating point"):
        check_nifti(path)
    raw = bytearray(write_nifti(tmp_path / "v.nii", (32, 32, 2)).read_bytes())
    struct.pack_into("<f", raw, 112, 3e38)  # scl_slope: 160 * 3e38 overflows
    (tmp_path / "scaled.nii").write_bytes(bytes(raw))
    with pytest.raises(NiftiRejected, match="once scaled"):
        check_nifti(tmp_path / "scaled.nii")
