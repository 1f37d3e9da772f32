"""Pydantic models at the edge: what clients send and receive."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_validator

from jobs import JobRecord, JobState
from model_store.card import known_input_kind


class OutputFormat(StrEnum):
    NIFTI = "nifti"
    PNG = "png"
    DICOM = "dicom"  # a derived series (the default, and only for, a DICOM input)


class TranslateParams(BaseModel):
    """The form fields of ``POST /translate`` (the file travels beside them)."""

    model: str | None = Field(default=None, max_length=128)
    # a sampling preset the model's card offers (GET /models): "default" or e.g. "fast"
    preset: str | None = Field(default=None, max_length=32)
    steps: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    # what the input shows; unset: judged by its size (a lone section from the top of a head
    # is judged a brain)
    anatomy: str | None = None
    # unset: dicom for a DICOM input, nifti for a NIfTI one
    output_format: OutputFormat | None = None

    @field_validator("anatomy")
    @classmethod
    def _known_anatomy(cls, value: str | None) -> str | None:
        return known_input_kind(value)


class Progress(BaseModel):
    step: int
    total: int | None = Field(description="sampling steps in all; null until the worker starts")
    fraction: float


class ModelRef(BaseModel):
    name: str
    version: int


class JobParams(BaseModel):
    preset: str | None = None
    steps: int | None
    seed: int
    anatomy: str | None = None
    output_format: OutputFormat


class JobInput(BaseModel):
    filename: str
    bytes: int
    shape: list[int]
    voxel_size: list[float]
    kind: str = "nifti"  # or "dicom"
    study_instance_uid: str | None = None  # DICOM input: the study the derived series joins
    series_instance_uid: str | None = None  # DICOM input: the source series
    instances: int | None = None


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_seconds: float | None = Field(description="submission to first start")
    run_seconds: float | None = Field(description="first start to end")


class JobErrorOut(BaseModel):
    code: str
    message: str


class JobResultOut(BaseModel):
    url: str
    filename: str
    content_type: str
    bytes: int


class JobOut(BaseModel):
    id: str
    state: JobState
    progress: Progress
    model: ModelRef
    params: JobParams
    input: JobInput
    timings: Timings
    attempts: int
    cancel_requested: bool
    error: JobErrorOut | None
    result: JobResultOut | None
    # where the input lay outside what the model was trained on: read the result with care
    warnings: list[str] = []
    # how good and how sure the translation is (midiffusion.pipeline.quality), when succeeded
    quality: dict[str, float | None] | None = None
    links: dict[str, str]


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def job_out(job: JobRecord, *, now: float) -> JobOut:
    spec = job.spec
    queue_seconds = None
    if job.started_at is not None:
        queue_seconds = job.started_at - spec.created_at
    elif job.state.value == "queued":
        queue_seconds = now - spec.created_at  # still waiting: how long so far
    run_seconds = None
    if job.started_at is not None:
        run_seconds = (job.finished_at or now) - job.started_at
    total = job.total or None
    fraction = 1.0 if job.state is JobState.SUCCEEDED else (job.step / total if total else 0.0)
    links = {"self": f"/jobs/{job.id}"}
    result = None
    if job.state is JobState.SUCCEEDED and job.output is not None:
        links["result"] = f"/jobs/{job.id}/result"
        if job.output.uncertainty_key:
            links["uncertainty"] = f"/jobs/{job.id}/result?part=uncertainty"
        result = JobResultOut(
            url=links["result"],
            filename=job.output.filename,
            content_type=job.output.content_type,
            bytes=job.output.bytes,
        )
    return JobOut(
        id=job.id,
        state=job.state,
        progress=Progress(step=job.step, total=total, fraction=round(fraction, 4)),
        model=ModelRef(name=spec.model_name, version=spec.model_version),
        params=JobParams(
            preset=spec.preset,
            steps=spec.steps,
            seed=spec.seed,
            anatomy=spec.anatomy,
            output_format=OutputFormat(spec.output_format),
        ),
        input=JobInput(
            filename=spec.input_filename,
            bytes=spec.input_bytes,
            shape=spec.input_shape,
            voxel_size=spec.input_voxel_size,
            kind=spec.input_kind,
            study_instance_uid=spec.dicom_study_uid,
            series_instance_uid=spec.dicom_series_uid,
            instances=spec.dicom_instances,
        ),
        timings=Timings(
            created_at=_ts(spec.created_at),  # type: ignore[arg-type]
            started_at=_ts(job.started_at),
            finished_at=_ts(job.finished_at),
            queue_seconds=None if queue_seconds is None else round(queue_seconds, 3),
            run_seconds=None if run_seconds is None else round(run_seconds, 3),
        ),
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        error=JobErrorOut(code=job.error.code, message=job.error.message) if job.error else None,
        result=result,
        warnings=list(job.output.warnings) if job.output is not None else [],
        quality=job.output.quality if job.output is not None else None,
        links=links,
    )


class ModelsOut(BaseModel):
    default: str | None
    models: list[dict[str, Any]]


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
