"""Job records: one interface, a Redis implementation and an SQLite one for the embedded mode.

The record is the single source of truth for a job's state, progress and cancel flag. The gateway
writes it at submission, the worker moves it through its states, and both read it. Celery's own
result backend is not used. Every state change is one atomic step (a Lua script in Redis, an
``IMMEDIATE`` transaction in SQLite), so a cancel and a worker start can never both win.
"""

from __future__ import annotations

from pathlib import Path

from service.jobs.base import (
    TERMINAL_STATES,
    WORKER_LOST,
    IdempotencyHit,
    JobError,
    JobOutput,
    JobRecord,
    JobSpec,
    JobState,
    JobStore,
    StartOutcome,
    StartResult,
    worker_lost_message,
)
from service.jobs.redis_store import RedisJobStore
from service.jobs.sqlite_store import SQLiteJobStore

__all__ = [
    "TERMINAL_STATES",
    "WORKER_LOST",
    "IdempotencyHit",
    "JobError",
    "JobOutput",
    "JobRecord",
    "JobSpec",
    "JobState",
    "JobStore",
    "RedisJobStore",
    "SQLiteJobStore",
    "StartOutcome",
    "StartResult",
    "open_job_store",
    "worker_lost_message",
]


def open_job_store(redis_url: str | None, storage_dir: Path, retention_s: int) -> JobStore:
    """Redis when configured, else SQLite beside the stored files (the embedded mode)."""
    if redis_url:
        return RedisJobStore(redis_url, retention_s)
    return SQLiteJobStore(Path(storage_dir) / "jobs.sqlite3", retention_s)
