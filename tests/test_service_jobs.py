"""The job-record store: the same contract for Redis (real server) and SQLite (embedded mode)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from test_service_support import redis_db

from jobs import (
    WORKER_LOST,
    JobError,
    JobOutput,
    JobSpec,
    JobState,
    JobStore,
    RedisJobStore,
    SQLiteJobStore,
    StartOutcome,
)
from jobs.storage import LocalStorage
from service.cleanup import cleanup_expired

RETENTION = 3600


@pytest.fixture(params=["redis", "sqlite"])
def store(request, redis_url: str, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "redis":
        url = redis_db(redis_url, 5)
        redis.Redis.from_url(url).flushdb()
        s: JobStore = RedisJobStore(url, RETENTION)
    else:
        s = SQLiteJobStore(tmp_path / "jobs.sqlite3", RETENTION)
    yield s
    s.close()


def new_id() -> str:
    return uuid.uuid4().hex


def spec(job_id: str, idem: str | None = None, created: float = 1000.0) -> JobSpec:
    return JobSpec(
        created_at=created,
        principal="p1",
        model_name="tiny",
        model_version=1,
        steps=4,
        seed=0,
        output_format="nifti",
        input_key=f"in/{job_id}.nii.gz",
        input_filename="scan.nii.gz",
        input_bytes=1234,
        input_shape=[32, 32, 3],
        input_voxel_size=[1.0, 1.0, 3.0],
        idempotency_key=idem,
    )


def test_create_and_read_back(store: JobStore) -> None:
    job_id = new_id()
    assert store.create(job_id, spec(job_id)) is None
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.step, job.total) == (JobState.QUEUED, 0, 0, 0)
    assert job.spec == spec(job_id)
    assert job.started_at is None and job.error is None and job.output is None
    assert store.get(new_id()) is None


def test_idempotency_claim_returns_the_first_job(store: JobStore) -> None:
    first, second = new_id(), new_id()
    assert store.create(first, spec(first, idem="k"), fingerprint="fp1") is None
    hit = store.create(second, spec(second, idem="k"), fingerprint="fp2")
    assert hit is not None and (hit.job_id, hit.fingerprint) == (first, "fp1")
    assert store.get(second) is None  # nothing stored for the losing request


def test_run_to_success(store: JobStore) -> None:
    job_id = new_id()
    store.create(job_id, spec(job_id))
    started = store.start(job_id, max_attempts=3, worker="w1", now=1010.0)
    assert started.outcome is StartOutcome.RUN
    assert started.job is not None and started.job.state is JobState.RUNNING
    assert (started.job.attempts, started.job.started_at, started.job.worker) == (1, 1010.0, "w1")
    store.set_progress(job_id, 3, 8)
    out = JobOutput(key=f"out/{job_id}.nii.gz", filename="x.nii.gz", content_type="a/b", bytes=9)
    done = store.finish(job_id, JobState.SUCCEEDED, now=1020.0, output=out)
    assert done is not None
    assert (done.state, done.step, done.total, done.finished_at) == (
        JobState.SUCCEEDED,
        3,
        8,
        1020.0,
    )
    assert done.output == out
    # A late duplicate delivery (the worker died after finishing, before acking) does nothing.
    again = store.start(job_id, max_attempts=3, worker="w2", now=1030.0)
    assert again.outcome is StartOutcome.SKIP
    assert again.job is not None and again.job.attempts == 1 and again.job.worker == "w1"
    # Progress after the end is ignored, and a second finish cannot overwrite the first.
    store.set_progress(job_id, 1, 8)
    store.finish(job_id, JobState.FAILED, now=1040.0, error=JobError("x", "y"))
    final = store.get(job_id)
    assert final is not None and final.state is JobState.SUCCEEDED and final.step == 3


def test_finish_takes_only_terminal_states_and_only_running_jobs(store: JobStore) -> None:
    job_id = new_id()
    store.create(job_id, spec(job_id))
    with pytest.raises(ValueError, match="terminal state"):
        store.finish(job_id, JobState.RUNNING, now=1001.0)
    # A job no worker has started cannot be finished: it stays queued.
    unchanged = store.finish(job_id, JobState.FAILED, now=1002.0, error=JobError("x", "y"))
    assert unchanged is not None
    assert (unchanged.state, unchanged.error, unchanged.finished_at) == (
        JobState.QUEUED,
        None,
        None,
    )
    assert store.finish(new_id(), JobState.SUCCEEDED, now=1003.0) is None


def test_unsent_jobs_are_listed_until_sent_or_taken_by_a_worker(store: JobStore) -> None:
    old, taken, new = new_id(), new_id(), new_id()
    store.create(old, spec(old, created=1000.0))
    store.create(taken, spec(taken, created=1000.0))
    store.create(new, spec(new, created=2000.0))
    assert store.unsent(1500.0) == sorted([old, taken])  # the cut-off spares recent jobs
    store.mark_sent(old)
    store.start(taken, max_attempts=3, worker="w1", now=1010.0)  # a worker got its task
    assert store.unsent(1500.0) == []
    assert store.unsent(3000.0) == [new]
    store.mark_sent(new_id())  # an unknown job is not created by marking it
    assert store.unsent(3000.0) == [new]


def test_a_lost_queue_makes_every_unfinished_job_unsent(store: JobStore) -> None:
    queued, running, done = new_id(), new_id(), new_id()
    for job_id in (queued, running, done):
        store.create(job_id, spec(job_id))
        store.mark_sent(job_id)
    store.start(running, max_attempts=3, worker="w1", now=1010.0)
    store.start(done, max_attempts=3, worker="w1", now=1010.0)
    store.finish(done, JobState.SUCCEEDED, now=1020.0)
    assert store.unsent(float("inf")) == []
    assert store.mark_unfinished_unsent() == 2
    assert store.unsent(float("inf")) == sorted([queued, running])
    assert store.get(done).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_cancel_queued_job_never_starts(store: JobStore) -> None:
    job_id = new_id()
    store.create(job_id, spec(job_id))
    cancelled = store.request_cancel(job_id, now=1005.0)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    started = store.start(job_id, max_attempts=3, worker="w1", now=1010.0)
    assert started.outcome is StartOutcome.SKIP
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.started_at) == (JobState.CANCELLED, 0, None)


def test_cancel_running_job_sets_the_flag_the_worker_reads(store: JobStore) -> None:
    job_id = new_id()
    store.create(job_id, spec(job_id))
    store.start(job_id, max_attempts=3, worker="w1", now=1010.0)
    assert store.cancel_requested(job_id) is False
    flagged = store.request_cancel(job_id, now=1011.0)
    assert flagged is not None and flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert store.cancel_requested(job_id) is True
    done = store.finish(job_id, JobState.CANCELLED, now=1012.0)
    assert done is not None and done.state is JobState.CANCELLED


def test_redelivery_cap_fails_the_job_with_the_reason(store: JobStore) -> None:
    job_id = new_id()
    store.create(job_id, spec(job_id))
    for attempt in (1, 2):  # each delivery's worker "dies": no finish()
        result = store.start(job_id, max_attempts=2, worker=f"w{attempt}", now=1000.0 + attempt)
        assert result.outcome is StartOutcome.RUN
        assert result.job is not None and result.job.attempts == attempt
    result = store.start(job_id, max_attempts=2, worker="w3", now=1003.0)
    assert result.outcome is StartOutcome.GAVE_UP
    job = result.job
    assert job is not None and job.state is JobState.FAILED and job.attempts == 2
    assert job.error is not None and job.error.code == WORKER_LOST
    assert "after 2 attempt(s)" in job.error.message
    assert job.started_at == 1001.0  # the first start, kept across redeliveries


def test_counts_by_state(store: JobStore) -> None:
    ids = [new_id() for _ in range(3)]
    for job_id in ids:
        store.create(job_id, spec(job_id))
    store.start(ids[0], max_attempts=3, worker="w", now=1.0)
    store.request_cancel(ids[1], now=2.0)
    counts = store.count_by_state()
    assert counts[JobState.QUEUED] == 1
    assert counts[JobState.RUNNING] == 1
    assert counts[JobState.CANCELLED] == 1
    assert counts[JobState.SUCCEEDED] == 0


def test_cleanup_removes_expired_jobs_files_and_frees_the_key(
    store: JobStore, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "files")
    old, fresh, running = new_id(), new_id(), new_id()
    for job_id in (old, fresh, running):
        store.create(job_id, spec(job_id, idem=f"key-{job_id}"), fingerprint="fp")
        (storage.root / "in" / f"{job_id}.nii.gz").write_bytes(b"input")
    out = JobOutput(key=f"out/{old}.nii.gz", filename="o.nii.gz", content_type="a/b", bytes=6)
    (storage.root / "out" / f"{old}.nii.gz").write_bytes(b"output")
    for job_id, end in ((old, 1000.0), (fresh, 5000.0)):
        store.start(job_id, max_attempts=3, worker="w", now=end - 1)
        store.finish(job_id, JobState.SUCCEEDED, now=end, output=out if job_id == old else None)
    store.start(running, max_attempts=3, worker="w", now=10.0)

    report = cleanup_expired(store, storage, now=1000.0 + RETENTION + 1)

    assert (report.jobs, report.files) == (1, 2)
    assert store.get(old) is None
    assert not (storage.root / "in" / f"{old}.nii.gz").exists()
    assert not (storage.root / "out" / f"{old}.nii.gz").exists()
    assert store.get(fresh) is not None and store.get(running) is not None  # not expired
    assert (storage.root / "in" / f"{fresh}.nii.gz").exists()
    # The expired job's idempotency key is free again; the live ones are still claimed.
    reused = new_id()
    assert store.create(reused, spec(reused, idem=f"key-{old}"), fingerprint="fp") is None
    assert store.create(new_id(), spec(new_id(), idem=f"key-{fresh}"), fingerprint="fp")
    assert store.count_by_state()[JobState.SUCCEEDED] == 1


def test_a_job_file_from_before_the_sent_column_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    from jobs.sqlite_store import _SCHEMA

    old_schema = _SCHEMA.replace(",\n    sent INTEGER NOT NULL DEFAULT 1", "")
    assert "sent" not in old_schema
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO jobs (id, spec, state) VALUES (?, ?, 'queued')",
            ("j1", spec("j1").model_dump_json()),
        )
    store = SQLiteJobStore(path, RETENTION)
    try:
        assert store.unsent(float("inf")) == []  # its task was sent by the code of its time
        assert store.mark_unfinished_unsent() == 1
        assert store.unsent(float("inf")) == ["j1"]
    finally:
        store.close()
