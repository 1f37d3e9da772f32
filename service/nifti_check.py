"""Check an uploaded NIfTI before a job is queued: header with nibabel, plus a bounded read.

Only what can be decided cheaply and without torch is checked here: it is a single-file NIfTI-1
or NIfTI-2, 2D or 3D, of a real numeric type, a sane size, a finite affine and positive voxel
sizes, and all the voxel bytes the header promises are present (a gzip stream is decompressed
and counted, never kept, and never beyond the promised length). That same pass keeps the
smallest and largest voxel value, so a constant image is refused here; NaN and what needs the
whole array in memory are the worker's to judge.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from model_store.card import MIN_INPLANE, affine_is_degenerate

ACCEPTED = (
    "a single-file NIfTI-1 or NIfTI-2 image (.nii or .nii.gz) holding one 2D slice or one 3D "
    "volume of integer or floating-point voxels"
)
MAX_DIM = 2048
MAX_VOXELS = 512 * 512 * 512
GZIP_MAGIC = b"\x1f\x8b"
# The header and its extensions (a converter may store the DICOM header there: some hundred KB).
# Without a cap, a gzip of a few KB could make the check decompress terabytes to find the voxels.
MAX_HEADER_BYTES = 16 * 1024 * 1024
FLOAT32_MAX = float(np.finfo(np.float32).max)
# nibabel repairs these header lies silently when it reads a file; a hostile or broken writer
# is refused instead (the other repairs, such as qfac, are routine for real converters' files).
_HEADER_LIES = ("sizeof_hdr", "bitpix does not match", "pixdim[1,2,3] should be non-zero")
log = logging.getLogger("midiffusion.service")


class NiftiRejected(ValueError):
    """The upload is not an acceptable NIfTI; the message says what was wrong."""


@dataclass(frozen=True)
class NiftiSummary:
    shape: tuple[int, ...]
    voxel_size: tuple[float, ...]
    dtype: str
    is_2d: bool


def suffix_for(first_bytes: bytes) -> str:
    """The storage suffix, decided from the bytes (never from the client's file name)."""
    return ".nii.gz" if first_bytes[:2] == GZIP_MAGIC else ".nii"


class _VoxelRange:
    """Running min and max over a stream of voxel bytes, fed in arbitrary chunks."""

    def __init__(self, dtype: np.dtype, offset: int, expected: int) -> None:
        self.dtype, self.skip, self.left = dtype, offset, expected
        self.carry = b""
        self.lo, self.hi = np.inf, -np.inf

    def feed(self, chunk: bytes) -> None:
        if self.skip:
            cut = min(self.skip, len(chunk))
            chunk, self.skip = chunk[cut:], self.skip - cut
        chunk = self.carry + chunk[: self.left]
        self.left -= len(chunk) - len(self.carry)
        whole = len(chunk) - len(chunk) % self.dtype.itemsize
        self.carry = chunk[whole:]
        if whole:
            values = np.frombuffer(chunk[:whole], dtype=self.dtype)
            finite = values[np.isfinite(values)] if self.dtype.kind == "f" else values
            if finite.size:
                self.lo = min(self.lo, float(finite.min()))
                self.hi = max(self.hi, float(finite.max()))


def _scan_voxels(path: Path, offset: int, expected: int, gz: bool, vrange: _VoxelRange) -> int:
    """Stream the voxel bytes after the header into ``vrange``; how many are present (at most
    ``expected``). Memory stays bounded: a small gzip can expand to anything."""
    need = offset + expected
    seen = 0
    decomp = zlib.decompressobj(wbits=31) if gz else None  # 31: gzip container
    try:
        with open(path, "rb") as fh:
            while seen < need:
                if decomp is None:
                    chunk = fh.read(1 << 22)
                else:
                    raw = decomp.unconsumed_tail or fh.read(1 << 20)
                    chunk = decomp.decompress(raw, 1 << 22) if raw else b""
                if not chunk:
                    if decomp is None or not decomp.unconsumed_tail:
                        break
                    continue
                seen += len(chunk)
                vrange.feed(chunk)
                if decomp is not None and decomp.eof:
                    break
    except zlib.error as exc:
        raise NiftiRejected(f"the gzip stream is damaged ({exc}); accepted: {ACCEPTED}") from exc
    return max(0, min(seen - offset, expected))


def _header_lies(path: Path, gz: bool, header_class: type) -> list[str]:
    """The header fields that contradict themselves, read from the bytes as sent."""
    size = header_class.sizeof_hdr
    with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
        raw = fh.read(size)
    report = header_class.diagnose_binaryblock(raw)
    return [line for line in report.splitlines() if any(lie in line for lie in _HEADER_LIES)]


def check_nifti(path: Path, *, output_format: str = "nifti") -> NiftiSummary:
    """Raise :class:`NiftiRejected` with a user-facing reason, or describe the image."""
    try:
        return _check(Path(path), output_format)
    except NiftiRejected:
        raise
    except (OSError, EOFError, ValueError, TypeError, ArithmeticError, zlib.error) as exc:
        # a header nibabel parsed but whose fields cannot be used; its message names our file
        log.info("upload refused: the NIfTI header cannot be used (%s)", type(exc).__name__)
        raise NiftiRejected(
            f"the NIfTI header is inconsistent and cannot be read; accepted: {ACCEPTED}"
        ) from exc


def _check(path: Path, output_format: str) -> NiftiSummary:
    with open(path, "rb") as fh:
        head = fh.read(2)
    gz = head == GZIP_MAGIC
    if path.stat().st_size == 0:
        raise NiftiRejected(f"the file is empty; accepted: {ACCEPTED}")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel's messages name the stored file: not for the user
        raise NiftiRejected(f"this is not a readable NIfTI file; accepted: {ACCEPTED}") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiRejected(f"this is not a single-file NIfTI image; accepted: {ACCEPTED}")
    header = img.header
    magic = bytes(header["magic"]).rstrip(b"\x00")
    if magic not in (b"n+1", b"n+2"):
        raise NiftiRejected(
            f"this NIfTI header says its voxels are in a separate .img file (magic {magic!r}); "
            f"accepted: {ACCEPTED}"
        )

    lies = _header_lies(path, gz, type(header))
    if lies:
        raise NiftiRejected(
            f"the NIfTI header contradicts itself ({'; '.join(lies)}); accepted: {ACCEPTED}"
        )

    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        pass  # (x, y, z, 1) is a 3D volume some converters write; the worker decides
    elif len(shape) not in (2, 3):
        raise NiftiRejected(
            f"the image has {len(shape)} dimensions {shape}; accepted: {ACCEPTED} "
            "(for a 4D series, send one volume)"
        )
    if any(n < 1 for n in shape):
        raise NiftiRejected(f"the image shape {shape} has an empty dimension")
    if min(shape[:2]) < MIN_INPLANE or max(shape) > MAX_DIM:
        raise NiftiRejected(
            f"the image shape {shape} is outside the accepted range: each in-plane side "
            f"{MIN_INPLANE} to {MAX_DIM} voxels, and at most {MAX_DIM} slices"
        )
    n_voxels = int(np.prod(shape))
    if n_voxels > MAX_VOXELS:
        raise NiftiRejected(
            f"the image has {n_voxels} voxels; at most {MAX_VOXELS} (512^3) are accepted"
        )

    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise NiftiRejected(
            f"voxel type {dtype} is not accepted (complex, RGB and other compound types are "
            "not); accepted: integer or floating-point voxels"
        )
    if not np.isfinite(img.affine).all():
        raise NiftiRejected("the image affine (qform/sform) holds NaN or infinite values")
    zooms = tuple(float(z) for z in header.get_zooms()[: len(shape)])
    if not all(np.isfinite(z) and z > 0 for z in zooms[: min(3, len(shape))]):
        raise NiftiRejected(f"voxel sizes {zooms} must be positive and finite (pixdim)")
    if affine_is_degenerate(img.affine):
        raise NiftiRejected(
            "the image affine (qform/sform) is degenerate: it maps two voxel axes onto one line "
            "or an axis to a point; accepted is an affine with three independent axes"
        )

    offset = int(img.dataobj.offset)  # where the reader starts (the header may say 0)
    if offset > MAX_HEADER_BYTES:
        raise NiftiRejected(
            f"the header says the voxel data starts at byte {offset}; accepted is a header with "
            f"extensions of at most {MAX_HEADER_BYTES // (1024 * 1024)} MiB"
        )
    expected = n_voxels * dtype.itemsize
    vrange = _VoxelRange(dtype, offset, expected)
    present = _scan_voxels(path, offset, expected, gz, vrange)
    if present < expected:
        raise NiftiRejected(
            f"the file is truncated: the header promises {expected} bytes of voxel data "
            f"({shape} x {dtype}), the file holds {present}"
        )
    slope, inter = img.dataobj.slope, img.dataobj.inter  # nibabel: 0, NaN or inf = unscaled
    if vrange.lo <= vrange.hi:  # some finite voxel was seen
        scaled = (abs(vrange.lo * slope + inter), abs(vrange.hi * slope + inter))
        if max(scaled) > FLOAT32_MAX:
            raise NiftiRejected(
                "the voxel values, once scaled by the header, do not fit in 32-bit floating "
                f"point (largest magnitude {max(scaled):.3g}); accepted are values within "
                f"+-{FLOAT32_MAX:.3g}"
            )
    if vrange.lo == vrange.hi:
        raise NiftiRejected(
            f"the image is constant (every voxel is {vrange.lo:g}): there is no anatomy to "
            "translate"
        )

    is_2d = len(shape) == 2 or (len(shape) >= 3 and all(n == 1 for n in shape[2:]))
    if output_format == "png" and not is_2d:
        raise NiftiRejected(
            f"output_format=png is only for 2D images, and this one has shape {shape}; "
            "use output_format=nifti for volumes"
        )
    return NiftiSummary(shape=shape, voxel_size=zooms, dtype=str(dtype), is_2d=is_2d)
