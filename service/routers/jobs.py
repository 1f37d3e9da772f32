"""``/jobs/{id}``: poll, download, cancel. A caller sees only its own jobs."""

from __future__ import annotations

import re
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from jobs import TERMINAL_STATES, JobRecord, JobState
from jobs.push_status import get_push
from jobs.study_index import jobs_for_study
from service.audit import DELETE, DOWNLOAD, audit
from service.context import Ctx, GatewayContext, Principal
from service.problems import Problem
from service.result_parts import result_part
from service.routers.dicomweb import multipart_series, wants_dicomweb
from service.schemas import JobOut, job_out

router = APIRouter(prefix="/jobs", tags=["jobs"])
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def _load(ctx: GatewayContext, job_id: str, principal: str) -> JobRecord:
    job = ctx.jobs.get(job_id) if _JOB_ID.match(job_id) else None
    if job is None or job.spec.principal != principal:
        raise Problem(
            404,
            "job-not-found",
            f"no job `{job_id[:64]}` (job ids are 32 hex characters, from the Location header of "
            "POST /translate; finished jobs are removed after their retention period)",
        )
    return job


def _job_response(ctx: GatewayContext, job: JobRecord, status: int = 200) -> JSONResponse:
    headers = {}
    if job.state not in TERMINAL_STATES:
        headers["Retry-After"] = str(ctx.settings.retry_after_s)
    body = job_out(job, now=time.time()).model_dump(mode="json")
    push = get_push(ctx.jobs, job.id)
    if push is not None:  # a DICOM job sent on to a PACS: state, attempts, last error
        body["push"] = push
    return JSONResponse(body, status_code=status, headers=headers)


@router.get("", summary="The caller's jobs on one DICOM study")
def list_jobs(
    principal: Principal,
    ctx: Ctx,
    study: str = Query(
        ..., min_length=1, max_length=64, pattern=r"^[0-9.]+$", description="StudyInstanceUID"
    ),
) -> JSONResponse:
    now = time.time()
    found = jobs_for_study(ctx.jobs, principal, study)
    return JSONResponse({"jobs": [job_out(j, now=now).model_dump(mode="json") for j in found]})


@router.get("/{job_id}", response_model=JobOut, summary="A job's state, progress and timings")
def get_job(
    job_id: str,
    principal: Principal,
    ctx: Ctx,
) -> JSONResponse:
    return _job_response(ctx, _load(ctx, job_id, principal))


@router.get("/{job_id}/result", summary="Download the output (when the job succeeded)")
def get_result(
    job_id: str,
    principal: Principal,
    ctx: Ctx,
    request: Request,
    part: str | None = None,
) -> Response:
    try:
        response = _result(ctx, job_id, principal, request, part)
    except Problem as problem:
        audit(DOWNLOAD, principal, job_id[:64], problem.code, problem.status)
        raise
    audit(DOWNLOAD, principal, job_id, "ok", 200)
    return response


def _result(
    ctx: GatewayContext, job_id: str, principal: str, request: Request, part: str | None
) -> Response:
    job = _load(ctx, job_id, principal)
    if job.state is not JobState.SUCCEEDED or job.output is None:
        hint = (
            f"poll GET /jobs/{job_id} until its state is succeeded"
            if job.state not in TERMINAL_STATES
            else "it has no result"
        )
        raise Problem(
            409,
            "result-not-ready",
            f"the job is {job.state.value}; {hint}",
            state=job.state.value,
            headers={"Retry-After": str(ctx.settings.retry_after_s)}
            if job.state not in TERMINAL_STATES
            else None,
        )
    if part is not None:  # ?part=uncertainty: the spread between the averaged draws
        return result_part(ctx, job.output, part)
    path = ctx.storage.path(job.output.key)
    if not path.is_file():
        raise Problem(410, "result-gone", "the job's result file is no longer stored")
    if wants_dicomweb(request.headers.get("accept", "")):
        if job.output.content_type != "application/zip":
            raise Problem(
                406,
                "not-acceptable",
                f"this job's result is {job.output.content_type}; DICOMweb multipart is for "
                "jobs with output_format=dicom",
            )
        body, media_type = multipart_series(path)  # the derived series, as DICOMweb
        return StreamingResponse(body, media_type=media_type)
    return FileResponse(path, media_type=job.output.content_type, filename=job.output.filename)


@router.delete("/{job_id}", response_model=JobOut, summary="Cancel a queued or running job")
def cancel_job(
    job_id: str,
    principal: Principal,
    ctx: Ctx,
) -> JSONResponse:
    try:
        response = _cancel(ctx, job_id, principal)
    except Problem as problem:
        audit(DELETE, principal, job_id[:64], problem.code, problem.status)
        raise
    outcome = "stopping" if response.status_code == 202 else "cancelled"
    audit(DELETE, principal, job_id, outcome, response.status_code)
    return response


def _cancel(ctx: GatewayContext, job_id: str, principal: str) -> JSONResponse:
    job = _load(ctx, job_id, principal)
    if job.state in (JobState.SUCCEEDED, JobState.FAILED):
        raise Problem(
            409,
            "job-finished",
            f"the job already {job.state.value}; there is nothing to cancel",
            state=job.state.value,
        )
    job = ctx.jobs.request_cancel(job_id, now=time.time()) or job
    # 202 while a running job has yet to stop at its next sampling step; 200 once cancelled.
    return _job_response(ctx, job, status=202 if job.state is JobState.RUNNING else 200)
