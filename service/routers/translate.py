"""``POST /translate``: stream the upload to storage, check it, record the job, enqueue it."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from jobs import JobRecord
from model_store.card import INPUT_KINDS
from service import metrics
from service.audit import SUBMIT, audit
from service.context import Ctx, GatewayContext, Principal
from service.dicom_check import is_dicom_upload, pack
from service.nifti_check import suffix_for
from service.problems import Problem
from service.schemas import JobOut, OutputFormat, TranslateParams, job_out
from service.submission import DICOM_FILENAME, StoredInput, check_queue_room, submit_stored
from service.uploads import ReceivedUpload, is_storage_full, receive_upload, storage_full

router = APIRouter(tags=["jobs"])
log = logging.getLogger("midiffusion.service")

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _parse_params(fields: dict[str, str], max_steps: int) -> TranslateParams:
    values = {k: v for k, v in fields.items() if v != ""}
    if "output_format" in values:
        values["output_format"] = values["output_format"].lower()
    try:
        params = TranslateParams.model_validate(values)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise Problem(
            422,
            "invalid-parameters",
            f"{reasons}. Accepted: model = a name from GET /models (or name:version); "
            "preset = one its card offers (GET /models; e.g. default, fast); "
            f"steps = 1..{max_steps}; seed = 0..4294967295; anatomy = {' or '.join(INPUT_KINDS)}; "
            "output_format = nifti or png "
            "(NIfTI input), dicom (the default), nifti or png (DICOM input)",
        ) from exc
    if params.steps is not None and params.steps > max_steps:
        raise Problem(
            422, "invalid-parameters", f"steps={params.steps} is above the limit of {max_steps}"
        )
    return params


def _submit(
    ctx: GatewayContext,
    job_id: str,
    upload: ReceivedUpload,
    params: TranslateParams,
    principal: str,
    idempotency_key: str | None,
) -> tuple[JobRecord, bool]:
    """Blocking part of a submission (runs in a thread): returns (job, replayed)."""
    card = ctx.models.resolve(params.model)
    if is_dicom_upload(upload.first_bytes, len(upload.partials)):
        key = ctx.storage.key("in", job_id, ".zip")
        try:
            with ctx.storage.writing_to(key) as partial:
                pack(upload.partials, upload.first_bytes, partial)
        except OSError as exc:
            if is_storage_full(exc):  # no room for the series' archive
                raise storage_full() from exc
            raise
        stored = StoredInput(key, "dicom", DICOM_FILENAME, upload.size, upload.fingerprint)
    else:
        key = ctx.storage.key("in", job_id, suffix_for(upload.first_bytes))
        ctx.storage.commit(upload.partial, key)
        stored = StoredInput(key, "nifti", upload.filename, upload.size, upload.fingerprint)
    scoped = None
    if idempotency_key is not None:
        # Scoped by caller: two clients choosing the same key never see each other's jobs.
        scoped = hashlib.sha256(f"{principal}\0{idempotency_key}".encode()).hexdigest()
    return submit_stored(
        ctx,
        job_id,
        stored,
        card=card,
        preset=params.preset,
        steps=params.steps,
        seed=params.seed,
        anatomy=params.anatomy,
        output_format=params.output_format.value if params.output_format else None,
        principal=principal,
        idempotency_key=scoped,
    )


@router.post(
    "/translate",
    status_code=202,
    response_model=JobOut,
    summary="Submit a NIfTI, or a DICOM series (file parts or one zip), for translation",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "one NIfTI; or a DICOM series: one part per "
                                "instance, or one zip of them",
                            },
                            "model": {"type": "string"},
                            "preset": {
                                "type": "string",
                                "description": "a sampling preset of the model's card "
                                "(GET /models), e.g. fast; default: the card's defaults",
                            },
                            "steps": {"type": "integer", "minimum": 1},
                            "seed": {"type": "integer", "minimum": 0},
                            "anatomy": {
                                "type": "string",
                                "enum": list(INPUT_KINDS),
                                "description": "what the input shows: a skull-stripped brain "
                                "or a whole head; default: judged by its size (a lone section "
                                "from the top of a head is judged a brain)",
                            },
                            "output_format": {
                                "type": "string",
                                "enum": ["nifti", "png", "dicom"],
                            },
                        },
                    }
                }
            },
        }
    },
)
async def translate(
    request: Request,
    principal: Principal,
    ctx: Ctx,
) -> JSONResponse:
    idempotency_key = request.headers.get("idempotency-key")
    try:
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
            raise Problem(
                422,
                "invalid-idempotency-key",
                "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
            )
        job_id = uuid.uuid4().hex
        if idempotency_key is None:  # a replay is answered even when the queue is full
            await run_in_threadpool(check_queue_room, ctx, principal)
        upload = await receive_upload(
            request,
            ctx.storage,
            ctx.storage.key("in", job_id, ".nii"),
            limit=ctx.settings.max_upload_bytes,
            want_fingerprint=idempotency_key is not None,
        )
        try:
            params = _parse_params(upload.fields, ctx.settings.max_steps)
            job, replayed = await run_in_threadpool(
                _submit, ctx, job_id, upload, params, principal, idempotency_key
            )
        finally:
            upload.discard()  # committed (renamed or packed) already, or unwanted
    except Problem as problem:
        metrics.SUBMISSIONS_REJECTED.labels(problem.code).inc()
        audit(SUBMIT, principal, None, problem.code, problem.status)
        raise
    except BaseException:
        audit(SUBMIT, principal, None, "error", 500)
        raise
    audit(SUBMIT, principal, job.id, "replayed" if replayed else "accepted", 202)
    headers = {"Location": f"/jobs/{job.id}", "Retry-After": str(ctx.settings.retry_after_s)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    body = job_out(job, now=time.time()).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers=headers)


__all__ = ["OutputFormat", "router"]
