"""DICOMweb: ``POST /dicomweb/studies`` (STOW-RS) makes one job per series it receives, and
:func:`multipart_series` serves a derived series as ``multipart/related; type="application/dicom"``
(``GET /jobs/{id}/result`` with that ``Accept``).

STOW-RS answers as PS3.18 10.5 says: 200 when every instance was taken, 202 when some were and
others failed, 409 when none was, each with a DICOM JSON body listing the taken instances
(ReferencedSOPSequence; each one's RetrieveURL is its job) and the failed ones
(FailedSOPSequence, with a FailureReason). The query takes ``model``, ``preset``, ``steps``,
``seed`` and ``anatomy`` as ``POST /translate`` does.
"""

from __future__ import annotations

import secrets
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from jobs.dicom_intake import DicomRejected, Instance, plan_series, read_header
from service import metrics
from service.context import Ctx, GatewayContext, Principal
from service.problems import Problem
from service.routers.translate import _parse_params
from service.submission import DICOM_FILENAME, StoredInput, check_preset, submit_stored
from service.uploads import stream_parts, too_large

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])
DICOM_JSON = "application/dicom+json"
QUERY_FIELDS = ("model", "preset", "steps", "seed", "anatomy")  # the STOW query's job parameters
# PS3.18 / PS3.4 failure reasons (FailureReason, 0008,1197)
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_UNDERSTAND = 0xC000


def _unsupported() -> Problem:
    return Problem(
        415,
        "unsupported-media-type",
        'STOW-RS takes multipart/related; type="application/dicom", one DICOM instance per part',
    )


@dataclass
class _Parts:
    """STOW-RS parts, each streamed to its own temporary file beside ``key``."""

    ctx: GatewayContext
    key: str
    limit: int
    paths: list[Path] = field(default_factory=list)
    size: int = 0
    _file: BinaryIO | None = None
    _header_field: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _content_type: bytes = b""

    def on_part_begin(self) -> None:
        self._content_type = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_field.decode("latin-1").lower() == "content-type":
            self._content_type = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        part_type, _ = parse_options_header(self._content_type or b"application/dicom")
        if part_type != b"application/dicom":
            raise _unsupported()
        path = self.ctx.storage.partial_path(self.key)
        self.paths.append(path)
        self._file = open(path, "wb")  # noqa: SIM115 (closed in on_part_end/close)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.size > self.limit:
            raise too_large(self.limit)
        if self._file is not None:
            self._file.write(data[start:end])

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        for path in self.paths:
            path.unlink(missing_ok=True)


async def _receive(request: Request, ctx: GatewayContext, key: str) -> _Parts:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    kind = params.get(b"type", b"").strip(b'"')
    boundary = params.get(b"boundary")
    if content_type != b"multipart/related" or kind != b"application/dicom" or not boundary:
        raise _unsupported()
    limit = ctx.settings.max_upload_bytes
    parts = _Parts(ctx, key, limit)
    malformed = Problem(
        422,
        "invalid-multipart",
        "the multipart body is malformed (a boundary, a part header or its end is not where "
        'multipart/related; type="application/dicom" puts it)',
    )
    await stream_parts(request, boundary.strip(b'"'), parts, limit, malformed)
    if not parts.paths:
        raise Problem(422, "invalid-multipart", "the request holds no DICOM instance")
    return parts


def _failed(header: Any, reason: int) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [reason]}}
    if header is not None:
        if "SOPClassUID" in header:
            item["00081150"] = {"vr": "UI", "Value": [str(header.SOPClassUID)]}
        if "SOPInstanceUID" in header:
            item["00081155"] = {"vr": "UI", "Value": [str(header.SOPInstanceUID)]}
    return item


def _referenced(header: Any, job_id: str) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [str(header.SOPClassUID)]},
        "00081155": {"vr": "UI", "Value": [str(header.SOPInstanceUID)]},
        "00081190": {"vr": "UR", "Value": [f"/jobs/{job_id}"]},
    }


def _store_series(
    ctx: GatewayContext,
    parts: list[tuple[Path, Instance]],
    params: Any,
    card: Any,
    principal: str,
) -> tuple[str | None, str | None]:
    """Pack one series' parts into a job's input and submit it: (job id, refusal)."""
    try:
        plan_series([inst for _, inst in parts])
    except DicomRejected as exc:
        return None, str(exc)
    job_id = uuid.uuid4().hex
    key = ctx.storage.key("in", job_id, ".zip")
    size = 0
    with (
        ctx.storage.writing_to(key) as partial,
        zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        for n, (path, _) in enumerate(parts, 1):
            archive.write(path, f"{n:05d}.dcm")
            size += path.stat().st_size
    try:
        submit_stored(
            ctx,
            job_id,
            StoredInput(key, "dicom", DICOM_FILENAME, size),
            card=card,
            preset=params.preset,
            steps=params.steps,
            seed=params.seed,
            anatomy=params.anatomy,
            output_format="dicom",
            principal=principal,
        )
    except Problem as problem:
        return None, problem.detail
    return job_id, None


def _stow(ctx: GatewayContext, parts: _Parts, params: Any, principal: str) -> JSONResponse:
    card = ctx.models.resolve(params.model)
    check_preset(card, params.preset)  # one refusal for the request, not one per series
    failed: list[dict[str, Any]] = []
    series: dict[str, list[tuple[Path, Instance]]] = {}
    for position, path in enumerate(parts.paths, 1):
        try:
            with open(path, "rb") as fh:
                inst = read_header(fh, position)
        except DicomRejected:
            failed.append(_failed(None, CANNOT_UNDERSTAND))
            continue
        if inst is None:
            failed.append(_failed(None, SOP_CLASS_NOT_SUPPORTED))
            continue
        series.setdefault(str(inst.header.get("SeriesInstanceUID", "")), []).append((path, inst))
    referenced: list[dict[str, Any]] = []
    reasons: list[str] = []
    for members in series.values():
        job_id, refusal = _store_series(ctx, members, params, card, principal)
        if job_id is None:
            reasons.append(refusal or "refused")
            failed.extend(_failed(inst.header, PROCESSING_FAILURE) for _, inst in members)
            metrics.SUBMISSIONS_REJECTED.labels("stow-series-refused").inc()
        else:
            referenced.extend(_referenced(inst.header, job_id) for _, inst in members)
    body: dict[str, Any] = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if reasons:  # Warning/ErrorComment (0000,0902): why a series was refused, for a person
        body["00000902"] = {"vr": "LO", "Value": ["; ".join(reasons)[:1024]]}
    status = 200 if not failed else (202 if referenced else 409)
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)


@router.post(
    "/studies",
    summary="STOW-RS: store DICOM instances; one translation job per series",
    responses={200: {"content": {DICOM_JSON: {}}}},
)
async def stow(request: Request, principal: Principal, ctx: Ctx) -> JSONResponse:
    fields = {k: v for k, v in request.query_params.items() if k in QUERY_FIELDS}
    params = _parse_params(fields, ctx.settings.max_steps)
    batch = uuid.uuid4().hex
    parts = await _receive(request, ctx, ctx.storage.key("in", batch, ".zip"))
    try:
        return await run_in_threadpool(_stow, ctx, parts, params, principal)
    finally:
        parts.discard()  # each series' job has its own packed copy


def multipart_series(path: Path) -> tuple[Iterator[bytes], str]:
    """The instances of a stored result zip as a DICOMweb multipart body and its media type."""
    boundary = f"midiff-{secrets.token_hex(12)}"

    def body() -> Iterator[bytes]:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                yield (
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n"
                    f"Content-Length: {info.file_size}\r\n\r\n"
                ).encode()
                with archive.open(info) as fh:
                    while chunk := fh.read(1 << 20):
                        yield chunk
                yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return body(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def wants_dicomweb(accept: str) -> bool:
    for item in accept.split(","):
        media, params = parse_options_header(item.strip())
        if media == b"multipart/related" and params.get(b"type", b"").strip(b'"') in (
            b"application/dicom",
            b"",
        ):
            return True
    return False
