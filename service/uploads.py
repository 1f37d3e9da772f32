"""Receive ``multipart/form-data`` as it streams: the file goes straight to storage.

FastAPI's ``UploadFile`` spools the whole body before the route runs, so a size cap there comes
too late. Here the body is parsed chunk by chunk: the byte cap is enforced while streaming (413),
form fields are small and known, and nothing is kept in memory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from jobs.storage import LocalStorage
from service.problems import Problem

FILE_FIELD = "file"
# A DICOM series may come as one `file` part per instance; a NIfTI is always one part.
MAX_FILE_PARTS = 4096
SNIFF_BYTES = 132  # enough to see a gzip, a zip, or DICOM's DICM after its 128-byte preamble
TEXT_FIELDS = ("model", "preset", "steps", "seed", "anatomy", "output_format")
MAX_TEXT_FIELD_BYTES = 256
# A part's headers (Content-Disposition with the file name, Content-Type) are a few hundred
# bytes; without a cap a client could make the gateway hold a whole upload's worth in memory.
MAX_PART_HEADER_BYTES = 8 * 1024
# Room for part headers and boundaries on top of the file cap, when judging Content-Length.
MULTIPART_OVERHEAD = 64 * 1024

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(raw: str) -> str:
    """The client's file name reduced to a harmless base name (used only for the download)."""
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE_NAME.sub("_", base).strip("._") or "image.nii"
    return base[-120:]


@dataclass
class ReceivedUpload:
    partial: Path  # the file's bytes, under a temporary name: commit or delete it
    filename: str
    size: int
    first_bytes: bytes
    fields: dict[str, str]
    fingerprint: str | None  # sha256 of file bytes and fields, when asked for (idempotency)
    # further `file` parts (the instances of a DICOM series), temporary like `partial`
    more_partials: list[Path] = field(default_factory=list)

    @property
    def partials(self) -> list[Path]:
        return [self.partial, *self.more_partials]

    def discard(self) -> None:
        for path in self.partials:
            path.unlink(missing_ok=True)


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "upload-too-large",
        f"the upload is larger than the limit of {limit} bytes ({limit // (1024 * 1024)} MiB); "
        "send a smaller image or ask the operator to raise MIDIFF_MAX_UPLOAD_MB",
        limit_bytes=limit,
    )


# A full volume, a quota, or a file-size limit (RLIMIT_FSIZE): the storage cannot take the bytes.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_storage_full(exc: BaseException) -> bool:
    """An error that means the storage volume has no room (SQLite says so in words)."""
    if isinstance(exc, OSError):
        return exc.errno in NO_ROOM
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def storage_full() -> Problem:
    return Problem(
        507,
        "insufficient-storage",
        "the server's storage is full and cannot hold this upload; nothing was kept or queued, "
        "try again later",
    )


def _bad_form(detail: str) -> Problem:
    return Problem(
        422,
        "invalid-form",
        detail,
        accepted={
            "file": "one NIfTI file (.nii or .nii.gz), or a DICOM series: one part per "
            "instance, or one zip",
            "fields": list(TEXT_FIELDS),
        },
    )


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)


class _Receiver:
    """The parser's callbacks: route each part's bytes to storage or to a small field buffer."""

    def __init__(self, storage: LocalStorage, key: str, limit: int, want_fingerprint: bool):
        self.storage = storage
        self.key = key
        self.limit = limit
        self.hasher = hashlib.sha256() if want_fingerprint else None
        self.fields: dict[str, str] = {}
        self.part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._header_bytes = 0
        self.file: BinaryIO | None = None
        self.partial: Path | None = None
        self.more_partials: list[Path] = []
        self.filename = ""
        self.size = 0
        self.first_bytes = b""
        self.saw_file = False

    # -- header callbacks
    def on_part_begin(self) -> None:
        self.part = _Part()
        self._header_bytes = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]
        self._count_header_bytes(end - start)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._count_header_bytes(end - start)

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise _bad_form(
                f"a form part's headers are longer than {MAX_PART_HEADER_BYTES} bytes "
                "(is the file name very long?)"
            )

    def on_header_end(self) -> None:
        self.part.headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.part.headers.get("content-disposition", b""))
        name = params.get(b"name")
        if name is None:
            raise _bad_form("a form part has no name (Content-Disposition: form-data; name=...)")
        self.part.name = name.decode("utf-8", "replace")[:64]
        filename = params.get(b"filename")
        if self.part.name == FILE_FIELD:
            if filename is None:
                raise _bad_form(
                    "the field `file` must be a file part (Content-Disposition with a filename; "
                    "curl: -F file=@scan.nii.gz)"
                )
            if len(self.more_partials) + 1 >= MAX_FILE_PARTS:
                raise _bad_form(f"at most {MAX_FILE_PARTS} `file` parts are accepted")
            if self.file is not None and not self.file.closed:
                raise _bad_form("a `file` part began before the previous one ended")
            path = self.storage.partial_path(self.key)
            if self.hasher is not None:  # part boundaries count: (AB, C) is not (A, BC)
                self.hasher.update(b"\0file-part\0")
            if self.saw_file:  # the next instance of a DICOM series
                self.more_partials.append(path)
            else:
                self.saw_file = True
                name = filename.decode("utf-8", "replace") if filename else ""
                self.filename = safe_filename(name)
                self.partial = path
            self.file = open(path, "wb")  # noqa: SIM115 (closed in on_part_end/close)
        elif self.part.name not in TEXT_FIELDS:
            raise _bad_form(
                f"unknown form field `{self.part.name}`; accepted: `file` and "
                + ", ".join(f"`{f}`" for f in TEXT_FIELDS)
            )
        elif filename is not None:
            raise _bad_form(f"the field `{self.part.name}` must be text, not a file")

    # -- data callbacks
    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.file is not None and self.part.name == FILE_FIELD:
            chunk = memoryview(data)[start:end]
            self.size += len(chunk)
            if self.size > self.limit:
                raise too_large(self.limit)
            if not self.more_partials and len(self.first_bytes) < SNIFF_BYTES:
                self.first_bytes += bytes(chunk[: SNIFF_BYTES - len(self.first_bytes)])
            self.file.write(chunk)
            if self.hasher is not None:
                self.hasher.update(chunk)
        else:
            self.part.value += data[start:end]
            if len(self.part.value) > MAX_TEXT_FIELD_BYTES:
                raise _bad_form(f"the field `{self.part.name}` is longer than 256 bytes")

    def on_part_end(self) -> None:
        if self.part.name == FILE_FIELD and self.file is not None:
            self.file.close()
        elif self.part.name is not None:
            if self.part.name in self.fields:
                raise _bad_form(f"the field `{self.part.name}` is given more than once")
            self.fields[self.part.name] = self.part.value.decode("utf-8", "replace").strip()

    def discard(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush of close() too
                self.file.close()
        for path in [self.partial, *self.more_partials]:
            if path is not None:
                path.unlink(missing_ok=True)

    def fingerprint(self) -> str | None:
        if self.hasher is None:
            return None
        # The fields and file name count as part of the body: same key, other fields = other body.
        described: dict[str, Any] = {"fields": self.fields, "filename": self.filename}
        self.hasher.update(json.dumps(described, sort_keys=True).encode())
        return self.hasher.hexdigest()


# python-multipart's part callbacks, which a sink of stream_parts implements
PART_CALLBACKS = (
    "on_part_begin",
    "on_part_data",
    "on_part_end",
    "on_header_field",
    "on_header_value",
    "on_header_end",
    "on_headers_finished",
)


async def stream_parts(
    request: Request, boundary: bytes, sink: Any, limit: int, malformed: Problem
) -> None:
    """Feed the request body to ``sink``'s :data:`PART_CALLBACKS`, at most ``limit`` bytes of
    content (413 beyond); a malformed body raises ``malformed``, a full volume 507. On any
    failure ``sink.discard()`` removes what it had written, so nothing half-received stays."""
    parser = MultipartParser(boundary, {name: getattr(sink, name) for name in PART_CALLBACKS})
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + MULTIPART_OVERHEAD:
                raise too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        sink.discard()
        raise malformed from exc
    except OSError as exc:
        sink.discard()
        if is_storage_full(exc):
            raise storage_full() from exc
        raise
    except BaseException:  # 413, a bad part, the client going away: keep nothing
        sink.discard()
        raise


async def receive_upload(
    request: Request, storage: LocalStorage, key: str, *, limit: int, want_fingerprint: bool
) -> ReceivedUpload:
    """Stream the request body to storage; raise :class:`Problem` (413/415/422) when it is bad."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary or len(boundary) > 70:
        raise Problem(
            415,
            "unsupported-media-type",
            "send multipart/form-data, with a boundary of 1 to 70 characters, and the NIfTI in "
            "the field `file` (curl: -F file=@scan.nii.gz)",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        # Refuse before reading: with `Expect: 100-continue` (curl does this for large
        # bodies) the client never even sends the bytes.
        raise too_large(limit)

    receiver = _Receiver(storage, key, limit, want_fingerprint)
    # the parser's own wording is about its state machine, not about what the client sent
    malformed = _bad_form(
        "the multipart body is malformed (a boundary, a part header or its end is not where "
        "multipart/form-data puts it); send the form as curl -F or a browser does"
    )
    await stream_parts(request, boundary, receiver, limit, malformed)
    if receiver.file is not None and not receiver.file.closed:  # body ended inside the file part
        receiver.discard()
        raise _bad_form("the multipart body ended before the file part was complete")
    if receiver.partial is None:
        raise _bad_form("no file: send the NIfTI in the form field `file`")
    return ReceivedUpload(
        partial=receiver.partial,
        filename=receiver.filename,
        size=receiver.size,
        first_bytes=receiver.first_bytes,
        fields=receiver.fields,
        fingerprint=receiver.fingerprint(),
        more_partials=receiver.more_partials,
    )
