"""A hostile upload corpus, generated: every case is a whole HTTP request to send to the gateway.

Each case must be refused cleanly: a 4xx ``application/problem+json`` answer, or (for what only
a worker can judge) a 202 whose job ends ``failed`` with ``invalid_input``. This module holds no
tests; ``tests/test_hostile_corpus.py`` runs the corpus against a real ``midiffusion serve``.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from PIL import Image
from test_service_support import API_KEY, phantom, sample_affine

# Outcomes a case may end in
REFUSED = "refused"  # 4xx problem+json at once
WORKER_REFUSED = "worker_refused"  # 4xx at once, or 202 and then failed / invalid_input
# A header oddity every reader repairs the same way (nibabel reads an infinite or NaN scl_slope
# as "unscaled"): refused, or translated; never an internal error.
HARMLESS = "harmless"


@dataclass(frozen=True)
class HostileCase:
    name: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    expect: str = REFUSED


# ---------------------------------------------------------------------------------- requests
def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str | None = None) -> tuple:
    """A multipart/form-data body from (name, filename or None, bytes) parts, built by hand so
    that broken forms (duplicates, odd headers) can be sent as they are."""
    boundary = boundary or uuid.uuid4().hex
    chunks = []
    for name, filename, payload in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        chunks.append(payload + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(
    name: str,
    payload: bytes,
    *,
    filename: str = "scan.nii.gz",
    fields: dict[str, str] | None = None,
    expect: str = REFUSED,
) -> HostileCase:
    parts = [("file", filename, payload)]
    parts += [(k, None, v.encode()) for k, v in (fields or {}).items()]
    body, headers = multipart(parts)
    return HostileCase(name, "POST", "/translate", body, {**headers, "X-API-Key": API_KEY}, expect)


# ---------------------------------------------------------------------------------- images
def nifti_bytes(
    data: np.ndarray | None = None,
    *,
    affine: np.ndarray | None = None,
    header: nib.Nifti1Header | None = None,
    gz: bool = False,
    nifti2: bool = False,
) -> bytes:
    data = phantom((32, 32, 3)) if data is None else data
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls(data, sample_affine() if affine is None and header is None else affine, header)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def patched(raw: bytes, offset: int, fmt: str, *values: object) -> bytes:
    """``raw`` with a header field overwritten (little-endian struct format)."""
    out = bytearray(raw)
    struct.pack_into("<" + fmt, out, offset, *values)
    return bytes(out)


def gzip_stream(header: bytes, fill: int, total: int) -> bytes:
    """A gzip of ``header`` followed by ``total`` bytes of the value ``fill``, compressed in
    pieces so that memory stays small however large ``total`` is."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(header)]
    block = bytes([fill]) * (1 << 24)
    left = total
    while left > 0:
        out.append(comp.compress(block[: min(left, len(block))]))
        left -= len(block)
    out.append(comp.flush())
    return b"".join(out)


def bare_header(shape: tuple[int, ...], dtype: type = np.float32) -> bytes:
    """A 352-byte NIfTI-1 header (with the 4-byte extension flag) promising ``shape``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(sample_affine(), code=2)
    header["vox_offset"] = 352
    return header.binaryblock + b"\x00" * 4


def with_extension_claiming(raw: bytes, esize: int) -> bytes:
    """A NIfTI-1 whose header extension says it is ``esize`` bytes long."""
    out = bytearray(raw[:348])
    out += b"\x01\x00\x00\x00"  # extension flag: one follows
    out += struct.pack("<ii", esize, 4)  # esize, ecode 4 (AFNI)
    out += b"<x/>" + b"\x00" * 4
    struct.pack_into("<f", out, 108, float(len(out)))  # vox_offset after it
    return bytes(out) + raw[352:]


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((phantom((48, 48)) * 1.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def dicom_without_pixels() -> bytes:
    """A DICOM Part 10 file with a patient and a study but no Pixel Data element."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.PatientName, ds.PatientID, ds.Modality = "Hostile^Case", "H-0001", "MR"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Rows, ds.Columns, ds.BitsAllocated = 64, 64, 16
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def zip_slip() -> bytes:
    """A zip with ``../`` entries, an absolute entry and a symlink entry."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../../../tmp/evil.nii", nifti_bytes())
        zf.writestr("/etc/cron.d/evil", b"* * * * * root true\n")
        link = zipfile.ZipInfo("scan.nii")
        link.external_attr = (0o120777 << 16) | 0x20  # a symlink to /etc/passwd
        zf.writestr(link, "/etc/passwd")
    return buf.getvalue()


def tar_slip() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        payload = nifti_bytes()
        info = tarfile.TarInfo("../../evil.nii")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("scan.nii")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tf.addfile(link)
    return buf.getvalue()


def zip_bomb(expanded: int = 1 << 28) -> bytes:
    """A zip holding one member of ``expanded`` zero bytes (a thousandth of that, zipped)."""
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("scan.nii", "w", force_zip64=True) as member,
    ):
        block = b"\x00" * (1 << 24)
        for _ in range(expanded // len(block)):
            member.write(block)
    return buf.getvalue()


def sheared_flat_affine() -> np.ndarray:
    affine = sample_affine()
    affine[:3, 1] = affine[:3, 0] * 2  # the second voxel axis runs along the first
    return affine


def _image_cases() -> list[HostileCase]:
    good = nifti_bytes()
    good_gz = nifti_bytes(gz=True)
    bad_nan = phantom((32, 32, 3))
    bad_nan[5:9, 5:9, 1] = np.nan
    inf = phantom((32, 32, 3))
    inf[0, 0, 0] = np.inf
    zero_col = sample_affine()
    zero_col[:3, 2] = 0
    rgb = np.zeros((32, 32, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = phantom((32, 32, 3)).astype(np.uint8)
    cases = [
        upload("empty file", b""),
        upload("text, not an image", b"patient notes\n" * 100, filename="notes.txt"),
        upload("random bytes", np.random.default_rng(0).bytes(40_000)),
        upload("truncated gzip", good_gz[: len(good_gz) // 2]),
        upload("truncated raw", good[: len(good) - 3000], filename="scan.nii"),
        upload("gzip header only", good_gz[:10]),
        upload("damaged gzip", good_gz[:40] + b"\xff" * 200 + good_gz[240:]),
        upload("header only, no voxels", good[:352], filename="scan.nii"),
        # lying headers
        upload("header promises 256^3, holds 32x32x3", patched(good, 42, "hhh", 256, 256, 256)),
        upload("vox_offset beyond the end", patched(good, 108, "f", 2.0**31)),
        upload("vox_offset inside the header", patched(good, 108, "f", 100.0)),
        upload("negative dimension", patched(good, 42, "h", -32)),
        upload("dim[0] of 9", patched(good, 40, "h", 9)),
        upload("dim[0] of 0", patched(good, 40, "h", 0)),
        upload("unknown datatype code", patched(good, 70, "hh", 9999, 32)),
        upload("bitpix lies", patched(good, 72, "h", 3)),
        upload("sizeof_hdr lies", patched(good, 0, "i", 12345)),
        upload("zero voxel size", patched(good, 80, "f", 0.0)),
        upload("NaN voxel size", patched(good, 80, "f", float("nan"))),
        upload("NaN scale slope", patched(good, 112, "f", float("nan")), expect=HARMLESS),
        upload("infinite scale slope", patched(good, 112, "f", float("inf")), expect=HARMLESS),
        upload("infinite scale intercept", patched(good, 112, "ff", 1.0, float("inf"))),
        upload("huge scale slope", patched(good, 112, "f", 3e38), expect=WORKER_REFUSED),
        upload("NIfTI-2 header promising 2^40 voxels", _nifti2_huge()),
        upload(
            "gzip bomb: a header promising 2048^3, then 256 MiB of zeros",
            gzip_stream(bare_header((2048, 2048, 2048)), 0, 1 << 28),
        ),
        upload(
            "gzip bomb: a header promising 256^3 float32, then 64 MiB of zeros",
            gzip_stream(bare_header((256, 256, 256)), 0, 256**3 * 4),
        ),
        upload(
            "gzip bomb: voxels said to start 1 TiB in",
            gzip_stream(patched(bare_header((16, 16, 1), np.uint8), 108, "f", 2.0**40), 0, 1 << 26),
        ),
        upload("extension claiming 2 GiB", with_extension_claiming(good, 2**31 - 8)),
        upload("extension claiming a negative size", with_extension_claiming(good, -64)),
        # voxel values and types
        upload("NaN voxels", nifti_bytes(bad_nan, gz=True), expect=WORKER_REFUSED),
        upload(
            "all voxels NaN",
            nifti_bytes(np.full((32, 32, 3), np.nan, np.float32)),
            expect=WORKER_REFUSED,
        ),
        upload("an infinite voxel", nifti_bytes(inf), expect=WORKER_REFUSED),
        upload("float64 overflowing float32", _overflowing(), expect=WORKER_REFUSED),
        upload("4D series", nifti_bytes(np.stack([phantom((32, 32, 3))] * 3, axis=-1))),
        upload("5D image", nifti_bytes(phantom((32, 32, 3))[..., None, None].repeat(2, 4))),
        upload("complex voxels", nifti_bytes(phantom((32, 32, 3)).astype(np.complex64))),
        upload("RGB voxels", nifti_bytes(rgb)),
        upload(
            "1-bit voxels (DT_BINARY)",
            patched(nifti_bytes(phantom((32, 32, 3)).astype(np.uint8)), 70, "hh", 1, 1),
        ),
        upload("constant image (5.0)", nifti_bytes(np.full((32, 32, 3), 5.0, np.float32))),
        upload("all zeros", nifti_bytes(np.zeros((32, 32, 3), np.int16), gz=True)),
        upload("too small", nifti_bytes(phantom((8, 8, 3)))),
        upload("too many slices", nifti_bytes(np.zeros((16, 16, 4096), np.uint8), gz=True)),
        upload(
            "no foreground (a faint speck)",
            nifti_bytes(_speck()),
            expect=WORKER_REFUSED,
        ),
        upload(
            "slices too thin once reoriented",
            nifti_bytes(phantom((32, 32, 3)), affine=_axes_swapped()),
            expect=WORKER_REFUSED,
        ),
        # affines
        upload("degenerate affine: a zero column", _sform_only(zero_col)),
        upload("degenerate affine: parallel axes", _sform_only(sheared_flat_affine())),
        upload("all-zero sform", _sform_only(np.zeros((4, 4)))),
        upload("NaN in the sform", patched(good, 280, "f", float("nan"))),
        # other formats
        upload("PNG", png_bytes(), filename="slice.png"),
        upload("DICOM without pixel data", dicom_without_pixels(), filename="IM0001.dcm"),
        upload("zip with ../ entries and a symlink", zip_slip(), filename="series.zip"),
        upload("tar with ../ entries and a symlink", tar_slip(), filename="series.tar.gz"),
        upload("zip bomb (256 MiB of zeros)", zip_bomb(), filename="bomb.zip"),
        upload("separate .hdr/.img header", _pair_header(), filename="scan.hdr"),
        # a good image with bad requests around it
        upload("png asked for a volume", good, fields={"output_format": "png"}),
        upload("path traversal in the file name, bad body", b"x" * 400, filename="../../etc/x"),
    ]
    return cases


def _nifti2_huge() -> bytes:
    raw = bytearray(nifti_bytes(nifti2=True))
    struct.pack_into("<qqqq", raw, 16, 3, 2**20, 2**20, 2**20)  # dim[0..3] (int64)
    return bytes(raw)


def _overflowing() -> bytes:
    data = phantom((32, 32, 3)).astype(np.float64)
    data[data > 0] *= 1e300
    return nifti_bytes(data)


def _speck() -> np.ndarray:
    """Mostly a flat negative background with one faint voxel: no connected foreground."""
    data = np.full((32, 32, 3), -1000.0, np.float32)
    data[3, 3, 1] = -999.0
    return data


def _axes_swapped() -> np.ndarray:
    """An affine whose third array axis (3 voxels) runs left-right: the axial slices of the
    reoriented volume are 3 voxels wide."""
    return np.array(
        [[0, 0, 3.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]], dtype=np.float64
    )


def _sform_only(sform: np.ndarray) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape((32, 32, 3))
    header.set_data_dtype(np.float32)
    for row, name in enumerate(("srow_x", "srow_y", "srow_z")):
        header[name] = sform[row]
    header["sform_code"], header["qform_code"] = 2, 0
    return nib.Nifti1Image(phantom((32, 32, 3)), None, header).to_bytes()


def _pair_header() -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape((32, 32, 3))
    header["magic"] = b"ni1"
    return header.binaryblock


# ---------------------------------------------------------------------------------- requests
def _request_cases() -> list[HostileCase]:
    good = nifti_bytes(gz=True)
    auth = {"X-API-Key": API_KEY}
    body, mp = multipart([("file", "scan.nii.gz", good)])

    def case(name: str, parts: list, *, headers: dict | None = None) -> HostileCase:
        b, h = multipart(parts)
        return HostileCase(name, "POST", "/translate", b, {**h, **auth, **(headers or {})})

    return [
        HostileCase("no API key", "POST", "/translate", body, mp),
        HostileCase("wrong API key", "POST", "/translate", body, {**mp, "X-API-Key": "nope"}),
        HostileCase(
            "JSON body",
            "POST",
            "/translate",
            b'{"file": "x"}',
            {**auth, "Content-Type": "application/json"},
        ),
        HostileCase(
            "plain text body",
            "POST",
            "/translate",
            b"hello",
            {**auth, "Content-Type": "text/plain"},
        ),
        HostileCase(
            "urlencoded form",
            "POST",
            "/translate",
            b"file=abc&steps=2",
            {**auth, "Content-Type": "application/x-www-form-urlencoded"},
        ),
        HostileCase(
            "a 5000-character boundary",
            "POST",
            "/translate",
            body,
            {**auth, "Content-Type": "multipart/form-data; boundary=" + "b" * 5000},
        ),
        HostileCase(
            "a 200 KB API key",
            "POST",
            "/translate",
            body,
            {**mp, "X-API-Key": "k" * 200_000},
        ),
        HostileCase(
            "multipart without a boundary",
            "POST",
            "/translate",
            body,
            {**auth, "Content-Type": "multipart/form-data"},
        ),
        HostileCase("no content type", "POST", "/translate", body, auth),
        HostileCase(
            "empty multipart",
            "POST",
            "/translate",
            b"--b--\r\n",
            {**auth, "Content-Type": "multipart/form-data; boundary=b"},
        ),
        HostileCase(
            "garbage under a multipart type",
            "POST",
            "/translate",
            b"\x00garbage" * 50,
            {**auth, "Content-Type": "multipart/form-data; boundary=b"},
        ),
        HostileCase(
            "body ends inside the file part",
            "POST",
            "/translate",
            body[: len(body) // 2],
            {**mp, **auth},
        ),
        case("no file field", [("steps", None, b"2")]),
        case("two files", [("file", "a.nii.gz", good), ("file", "b.nii.gz", good)]),
        case(
            "duplicate steps",
            [("file", "a.nii.gz", good), ("steps", None, b"2"), ("steps", None, b"3")],
        ),
        case("unknown field", [("file", "a.nii.gz", good), ("callback", None, b"http://x")]),
        case("file sent as text", [("file", None, good)]),
        case("steps as a file", [("file", "a.nii.gz", good), ("steps", "s.txt", b"2")]),
        case("huge text field", [("file", "a.nii.gz", good), ("model", None, b"t" * 100_000)]),
        case("huge part header", [("file", "a" * 200_000 + ".nii.gz", good)]),
        case("a part without a name", [("", None, b"x"), ("file", "a.nii.gz", good)]),
        case("steps not a number", [("file", "a.nii.gz", good), ("steps", None, b"abc")]),
        case("steps negative", [("file", "a.nii.gz", good), ("steps", None, b"-5")]),
        case("steps above the limit", [("file", "a.nii.gz", good), ("steps", None, b"10" * 12)]),
        case("seed negative", [("file", "a.nii.gz", good), ("seed", None, b"-1")]),
        case("seed too large", [("file", "a.nii.gz", good), ("seed", None, b"99999999999")]),
        case("seed as a float", [("file", "a.nii.gz", good), ("seed", None, b"1e3")]),
        case(
            "unknown output format", [("file", "a.nii.gz", good), ("output_format", None, b"exe")]
        ),
        case("unknown model", [("file", "a.nii.gz", good), ("model", None, b"gpt")]),
        case(
            "model path traversal",
            [("file", "a.nii.gz", good), ("model", None, b"../../../etc/passwd")],
        ),
        case(
            "model version not a number",
            [("file", "a.nii.gz", good), ("model", None, b"tiny:latest")],
        ),
        case("model version missing", [("file", "a.nii.gz", good), ("model", None, b"tiny:99")]),
        case("non-UTF-8 field", [("file", "a.nii.gz", good), ("steps", None, b"\xff\xfe\x00")]),
        case(
            "malformed idempotency key",
            [("file", "a.nii.gz", good)],
            headers={"Idempotency-Key": "has spaces in it"},
        ),
        case(
            "too long idempotency key",
            [("file", "a.nii.gz", good)],
            headers={"Idempotency-Key": "k" * 300},
        ),
        HostileCase(
            "over the byte cap by Content-Length",
            "POST",
            "/translate",
            b"x" * 10,
            {**mp, **auth, "Content-Length": str(1 << 40)},
        ),
        HostileCase("job id traversal", "GET", "/jobs/..%2F..%2Fetc%2Fpasswd", headers=auth),
        HostileCase("job id too long", "GET", "/jobs/" + "a" * 5000, headers=auth),
        HostileCase("job id not hex", "GET", "/jobs/" + "z" * 32 + "/result", headers=auth),
        HostileCase("unknown job delete", "DELETE", "/jobs/" + "0" * 32, headers=auth),
        HostileCase("jobs without a key", "GET", "/jobs/" + "0" * 32),
        HostileCase("models without a key", "GET", "/models"),
        HostileCase("PUT on translate", "PUT", "/translate", body, {**mp, **auth}),
        HostileCase("unknown route", "GET", "/admin/../../etc/passwd", headers=auth),
    ]


def build_corpus() -> list[HostileCase]:
    return _image_cases() + _request_cases()
