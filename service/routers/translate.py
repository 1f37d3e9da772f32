"""``POST /translate``: stream the upload to storage, check it, record the job, enqueue it."""

from __future__ import annotations

import hashlib
import re
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from jobs import JobRecord, JobSpec
from service import metrics
from service.context import Ctx, GatewayContext, Principal
from service.nifti_check import ACCEPTED, NiftiRejected, check_nifti, suffix_for
from service.problems import Problem
from service.queueing import enqueue
from service.schemas import JobOut, OutputFormat, TranslateParams, job_out
from service.uploads import ReceivedUpload, receive_upload

router = APIRouter(tags=["jobs"])

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
            f"steps = 1..{max_steps}; seed = 0..4294967295; output_format = nifti or png",
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
    key = ctx.storage.key("in", job_id, suffix_for(upload.first_bytes))
    ctx.storage.commit(upload.partial, key)
    try:
        try:
            summary = check_nifti(ctx.storage.path(key), output_format=params.output_format.value)
        except NiftiRejected as exc:
            raise Problem(422, "invalid-nifti", str(exc), accepted=ACCEPTED) from exc
        scoped = None
        if idempotency_key is not None:
            # Scoped by caller: two clients choosing the same key never see each other's jobs.
            scoped = hashlib.sha256(f"{principal}\0{idempotency_key}".encode()).hexdigest()
        spec = JobSpec(
            created_at=time.time(),
            principal=principal,
            model_name=card.name,
            model_version=card.version,
            steps=params.steps,
            seed=params.seed,
            output_format=params.output_format.value,
            input_key=key,
            input_filename=upload.filename,
            input_bytes=upload.size,
            input_shape=list(summary.shape),
            input_voxel_size=list(summary.voxel_size),
            idempotency_key=scoped,
        )
        hit = ctx.jobs.create(job_id, spec, fingerprint=upload.fingerprint)
    except BaseException:
        ctx.storage.delete(key)
        raise
    if hit is not None:
        ctx.storage.delete(key)  # the first request's upload is the one kept
        if hit.fingerprint != upload.fingerprint:
            raise Problem(
                422,
                "idempotency-key-reused",
                "this Idempotency-Key was already used with a different request body; "
                "use a new key for a new request",
                job_id=hit.job_id,
            )
        existing = ctx.jobs.get(hit.job_id)
        if existing is None:
            raise Problem(409, "idempotency-conflict", "the earlier job for this key is gone")
        return existing, True
    try:
        enqueue(ctx.celery, ctx.jobs, job_id)
    except Exception as exc:
        ctx.jobs.delete(job_id)
        ctx.storage.delete(key)
        raise Problem(
            503,
            "queue-unavailable",
            f"the job queue cannot be reached ({type(exc).__name__}); nothing was queued, "
            "try again later",
        ) from exc
    metrics.JOBS_SUBMITTED.labels(card.name).inc()
    metrics.UPLOAD_BYTES.inc(upload.size)
    metrics.UPLOAD_SIZE.observe(upload.size)
    job = ctx.jobs.get(job_id)
    assert job is not None
    return job, False


@router.post(
    "/translate",
    status_code=202,
    response_model=JobOut,
    summary="Submit a NIfTI for translation",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "model": {"type": "string"},
                            "steps": {"type": "integer", "minimum": 1},
                            "seed": {"type": "integer", "minimum": 0},
                            "output_format": {"type": "string", "enum": ["nifti", "png"]},
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
            upload.partial.unlink(missing_ok=True)  # committed (renamed) already, or unwanted
    except Problem as problem:
        metrics.SUBMISSIONS_REJECTED.labels(problem.code).inc()
        raise
    headers = {"Location": f"/jobs/{job.id}", "Retry-After": str(ctx.settings.retry_after_s)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    body = job_out(job, now=time.time()).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers=headers)


__all__ = ["OutputFormat", "router"]
