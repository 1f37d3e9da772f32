"""The job record, its states, and the store interface both implementations follow.

The record is the single source of truth for a job's state, progress and cancel flag. The gateway
writes it at submission, the worker moves it through its states, and both read it. Celery's own
result backend is not used. Every state change is one atomic step (a Lua script in Redis, an
``IMMEDIATE`` transaction in SQLite), so a cancel and a worker start can never both win.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class JobSpec(BaseModel):
    """What was asked for; fixed at submission."""

    created_at: float
    principal: str  # a fingerprint of the API key that submitted the job, never the key
    model_name: str
    model_version: int
    steps: int | None
    seed: int
    output_format: str
    input_key: str
    input_filename: str
    input_bytes: int
    input_shape: list[int]
    input_voxel_size: list[float]
    idempotency_key: str | None = None  # the store key of the idempotency claim, if any
    preset: str | None = None  # a sampling preset of the model's card; None: its defaults
    anatomy: str | None = None  # "brain" or "head", as the client said; None: judged by size
    # "nifti", or "dicom": the input is a zip of one series' instances (``jobs.dicom_intake``)
    input_kind: str = "nifti"
    dicom_study_uid: str | None = None
    dicom_series_uid: str | None = None
    dicom_instances: int | None = None


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class JobOutput:
    key: str
    filename: str
    content_type: str
    bytes: int
    # where the input lay outside what the model was trained on (one sentence each)
    warnings: tuple[str, ...] = ()
    # how good and how sure the translation is (name -> figure; None where not defined)
    quality: dict[str, float | None] | None = None
    # the per-voxel spread between the averaged draws, beside the result
    uncertainty_key: str | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    spec: JobSpec
    state: JobState
    attempts: int = 0
    step: int = 0
    total: int = 0
    cancel_requested: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    error: JobError | None = None
    output: JobOutput | None = None
    worker: str | None = None


class StartOutcome(StrEnum):
    RUN = "run"  # the caller owns the job now and must finish it
    SKIP = "skip"  # already finished or cancelled: do nothing
    GAVE_UP = "gave_up"  # too many deliveries: the record is now failed
    MISSING = "missing"  # no such record (expired and cleaned up)


@dataclass(frozen=True)
class StartResult:
    outcome: StartOutcome
    job: JobRecord | None


@dataclass(frozen=True)
class IdempotencyHit:
    """The idempotency key was already used; the job it created and the body it was used with."""

    job_id: str
    fingerprint: str


class QueueLimitReached(Exception):
    """The caller already has ``limit`` jobs waiting (``create(max_queued=...)``); nothing was
    stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs of this caller are already queued")
        self.limit = limit


WORKER_LOST = "worker_lost"


WORKER_LOST_TEMPLATE = (
    "gave up after {n} attempt(s): each time, the worker running this job stopped before it "
    "finished (killed, out of memory, or lost)"
)


def worker_lost_message(attempts: int) -> str:
    return WORKER_LOST_TEMPLATE.replace("{n}", str(attempts))


class JobStore(ABC):
    """Where job records live. ``retention_s``: how long a finished job is kept."""

    def __init__(self, retention_s: int) -> None:
        self.retention_s = retention_s

    @abstractmethod
    def create(
        self,
        job_id: str,
        spec: JobSpec,
        *,
        fingerprint: str | None = None,
        max_queued: int | None = None,
    ) -> IdempotencyHit | None:
        """Store a new queued job. With ``spec.idempotency_key`` set, claim that key at the same
        time; if it was already claimed, store nothing and return what claimed it. With
        ``max_queued``, raise :class:`QueueLimitReached` instead when ``spec.principal`` already
        has that many queued jobs (checked in the same atomic step, after the key)."""

    @abstractmethod
    def count_queued(self, principal: str) -> int:
        """How many of this caller's jobs wait in the queue (not yet started)."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def start(self, job_id: str, *, max_attempts: int, worker: str, now: float) -> StartResult:
        """A worker took the job's task (first delivery or a redelivery after a lost worker)."""

    @abstractmethod
    def mark_sent(self, job_id: str) -> None:
        """The job's task reached the queue (the gateway sent it, or a worker took it)."""

    @abstractmethod
    def unsent(self, created_before: float) -> list[str]:
        """Queued or running jobs, created before ``created_before``, whose task is not known to
        have reached the queue."""

    @abstractmethod
    def mark_unfinished_unsent(self) -> int:
        """Forget that the tasks of queued and running jobs were sent (the queue that held them
        is gone, as the embedded mode's in-memory one is after a restart). Returns how many."""

    @abstractmethod
    def set_progress(self, job_id: str, step: int, total: int) -> None: ...

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool: ...

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        now: float,
        error: JobError | None = None,
        output: JobOutput | None = None,
    ) -> JobRecord | None:
        """Running -> terminal. Returns the record, unchanged if it was no longer running."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish() needs a terminal state, not {state}")
        self._finish_if_running(job_id, state, now, finish_fields(error, output))
        return self.get(job_id)

    @abstractmethod
    def _finish_if_running(
        self, job_id: str, state: JobState, now: float, fields: dict[str, str]
    ) -> None:
        """Atomically: if the job is running, make it ``state`` and store ``fields``."""

    @abstractmethod
    def request_cancel(self, job_id: str, *, now: float) -> JobRecord | None:
        """Queued -> cancelled at once; running -> flagged, the worker stops at its next step."""

    @abstractmethod
    def expired(self, now: float, limit: int = 500) -> list[JobRecord]:
        """Finished jobs whose retention has passed."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a record and its idempotency claim. True if this call removed it."""

    @abstractmethod
    def count_by_state(self) -> dict[JobState, int]: ...

    @abstractmethod
    def ping(self) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...


def opt_float(value: Any) -> float | None:
    return None if value in (None, b"", "") else float(value)


def record_from_fields(job_id: str, f: dict[str, Any]) -> JobRecord:
    """Build a record from flat fields (Redis hash values or an SQLite row, as str)."""
    error = None
    if f.get("error_code"):
        error = JobError(code=f["error_code"], message=f.get("error_message") or "")
    output = None
    if f.get("output_key"):
        output = JobOutput(
            key=f["output_key"],
            filename=f["output_filename"],
            content_type=f["output_content_type"],
            bytes=int(f["output_bytes"]),
            warnings=tuple(json.loads(f.get("output_warnings") or "[]")),
            quality=json.loads(f["output_quality"]) if f.get("output_quality") else None,
            uncertainty_key=f.get("output_uncertainty_key") or None,
        )
    return JobRecord(
        id=job_id,
        spec=JobSpec.model_validate_json(f["spec"]),
        state=JobState(f["state"]),
        attempts=int(f.get("attempts") or 0),
        step=int(f.get("step") or 0),
        total=int(f.get("total") or 0),
        cancel_requested=str(f.get("cancel")) == "1",
        started_at=opt_float(f.get("started_at")),
        finished_at=opt_float(f.get("finished_at")),
        error=error,
        output=output,
        worker=f.get("worker") or None,
    )


def finish_fields(error: JobError | None, output: JobOutput | None) -> dict[str, str]:
    fields: dict[str, str] = {}
    if error is not None:
        fields.update(error_code=error.code, error_message=error.message)
    if output is not None:
        fields.update(
            output_key=output.key,
            output_filename=output.filename,
            output_content_type=output.content_type,
            output_bytes=str(output.bytes),
            output_warnings=json.dumps(list(output.warnings)),
        )
        if output.quality is not None:
            fields["output_quality"] = json.dumps(output.quality)
        if output.uncertainty_key is not None:
            fields["output_uncertainty_key"] = output.uncertainty_key
    return fields
