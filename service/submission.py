"""The one path from a stored input to a queued job: check it, record it, enqueue it.

``POST /translate`` (NIfTI or DICOM) and ``POST /dicomweb/studies`` (one job per series) both come
through :func:`submit_stored`; the C-STORE listener is a client of ``POST /translate``. So a
series is checked, recorded and counted alike whichever way it arrived.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from jobs import JobRecord, JobSpec, QueueLimitReached
from jobs.study_index import record_study
from service import metrics
from service.context import GatewayContext
from service.dicom_check import ACCEPTED as DICOM_ACCEPTED
from service.dicom_check import DicomRejected, check_dicom
from service.nifti_check import ACCEPTED as NIFTI_ACCEPTED
from service.nifti_check import NiftiRejected, check_nifti
from service.problems import Problem
from service.queueing import enqueue
from service.uploads import is_storage_full, storage_full

log = logging.getLogger("midiffusion.service")
DICOM_FILENAME = "dicom-series.zip"  # never the client's name: it may carry the patient's


@dataclass(frozen=True)
class StoredInput:
    key: str  # the committed storage key (``in/<job id>.zip`` for DICOM)
    kind: str  # "nifti" or "dicom"
    filename: str
    size: int
    fingerprint: str | None = None


def resolve_output_format(kind: str, requested: str | None) -> str:
    if kind == "dicom":
        return requested or "dicom"
    if requested == "dicom":
        raise Problem(
            422,
            "invalid-parameters",
            "output_format=dicom needs a DICOM input (the derived series copies the source "
            "series' patient, study and geometry); for a NIfTI input use nifti or png",
        )
    return requested or "nifti"


def check_preset(card: Any, preset: str | None) -> None:
    """Refuse a sampling preset the model's card does not offer (422, naming those it does)."""
    offered = card.sampling.offered_presets
    if preset is not None and preset not in offered:
        raise Problem(
            422,
            "invalid-parameters",
            f"preset={preset!r} is not offered by {card.name} v{card.version}; accepted: "
            + ", ".join(offered),
        )


def _describe(ctx: GatewayContext, stored: StoredInput, output_format: str) -> dict[str, Any]:
    path = ctx.storage.path(stored.key)
    if stored.kind == "dicom":
        try:
            summary = check_dicom(path, output_format=output_format)
        except DicomRejected as exc:
            raise Problem(422, "invalid-dicom", str(exc), accepted=DICOM_ACCEPTED) from exc
        return {
            "input_shape": list(summary.shape),
            "input_voxel_size": list(summary.voxel_size),
            "input_kind": "dicom",
            "dicom_study_uid": summary.study_uid,
            "dicom_series_uid": summary.series_uid,
            "dicom_instances": summary.instances,
        }
    try:
        nifti = check_nifti(path, output_format=output_format)
    except NiftiRejected as exc:
        raise Problem(422, "invalid-nifti", str(exc), accepted=NIFTI_ACCEPTED) from exc
    return {"input_shape": list(nifti.shape), "input_voxel_size": list(nifti.voxel_size)}


def _queue_limit(ctx: GatewayContext) -> int | None:
    return ctx.settings.max_queued_per_key or None


def queue_full(ctx: GatewayContext, limit: int) -> Problem:
    return Problem(
        429,
        "too-many-queued-jobs",
        f"this API key already has {limit} jobs waiting in the queue, the most one key may have "
        "(MIDIFF_MAX_QUEUED_PER_KEY); retry after Retry-After seconds, once some have started",
        headers={"Retry-After": str(ctx.settings.queue_full_retry_after_s)},
        limit=limit,
    )


def check_queue_room(ctx: GatewayContext, principal: str) -> None:
    """Refuse before reading the upload when the caller's queue is already full (the job store
    checks again, atomically, when the job is made)."""
    limit = _queue_limit(ctx)
    if limit is not None and ctx.jobs.count_queued(principal) >= limit:
        raise queue_full(ctx, limit)


def submit_stored(
    ctx: GatewayContext,
    job_id: str,
    stored: StoredInput,
    *,
    card: Any,
    steps: int | None,
    seed: int,
    output_format: str | None,
    principal: str,
    idempotency_key: str | None = None,
    preset: str | None = None,
    anatomy: str | None = None,
) -> tuple[JobRecord, bool]:
    """Check, record and enqueue a job whose input is stored under ``stored.key`` (blocking:
    run it in a thread). Returns (job, replayed). The input is deleted when nothing is queued."""
    try:
        check_preset(card, preset)
        fmt = resolve_output_format(stored.kind, output_format)
        spec = JobSpec(
            created_at=time.time(),
            principal=principal,
            model_name=card.name,
            model_version=card.version,
            steps=steps,
            seed=seed,
            output_format=fmt,
            input_key=stored.key,
            input_filename=stored.filename,
            input_bytes=stored.size,
            idempotency_key=idempotency_key,
            preset=preset,
            anatomy=anatomy,
            **_describe(ctx, stored, fmt),
        )
        try:
            hit = ctx.jobs.create(
                job_id, spec, fingerprint=stored.fingerprint, max_queued=_queue_limit(ctx)
            )
        except QueueLimitReached as exc:
            raise queue_full(ctx, exc.limit) from exc
    except BaseException as exc:
        ctx.storage.delete(stored.key)
        if is_storage_full(exc):
            raise storage_full() from exc
        raise
    if hit is not None:
        ctx.storage.delete(stored.key)  # the first request's upload is the one kept
        if hit.fingerprint != stored.fingerprint:
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
        ctx.storage.delete(stored.key)
        log.warning(
            "job %s: the queue cannot be reached; nothing was queued", job_id, exc_info=True
        )
        raise Problem(
            503,
            "queue-unavailable",
            "the job queue cannot be reached; nothing was queued, try again later",
            headers={"Retry-After": str(ctx.settings.retry_after_s)},
        ) from exc
    if spec.dicom_study_uid is not None:
        record_study(ctx.jobs, principal, spec.dicom_study_uid, job_id)
    metrics.JOBS_SUBMITTED.labels(card.name).inc()
    metrics.UPLOAD_BYTES.inc(stored.size)
    metrics.UPLOAD_SIZE.observe(stored.size)
    job = ctx.jobs.get(job_id)
    assert job is not None
    return job, False
