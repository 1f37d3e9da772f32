"""Jobs: what the gateway and the workers share, and nothing else of theirs.

- job records (``records``; Redis for deployments, SQLite for the embedded mode): the single
  source of truth for a job's state, progress and cancel flag. Every state change is one atomic
  step (a Lua script in Redis, an ``IMMEDIATE`` transaction in SQLite), so a cancel and a
  worker start can never both win. Celery's own result backend is not used;
- the files of uploads and results (``storage``);
- the queue contract: task name, message, Celery configuration (``queue``);
- the settings both sides read (``settings``).

Torch-free, and it imports nothing of the gateway, the workers or the science.
"""

from __future__ import annotations

from pathlib import Path

from jobs.records import (
    TERMINAL_STATES,
    WORKER_LOST,
    IdempotencyHit,
    JobError,
    JobOutput,
    JobRecord,
    JobSpec,
    JobState,
    JobStore,
    QueueLimitReached,
    StartOutcome,
    StartResult,
    worker_lost_message,
)
from jobs.redis_store import RedisJobStore
from jobs.sqlite_store import SQLiteJobStore

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
    "QueueLimitReached",
    "RedisJobStore",
    "SQLiteJobStore",
    "StartOutcome",
    "StartResult",
    "open_job_store",
    "worker_lost_message",
]


def open_job_store(
    redis_url: str | None, storage_dir: Path, retention_s: int, *, outage_s: float = 0
) -> JobStore:
    """Redis when configured, else SQLite beside the stored files (the embedded mode).
    ``outage_s``: how long a Redis command is retried while the server is unreachable."""
    if redis_url:
        return RedisJobStore(redis_url, retention_s, outage_s=outage_s)
    return SQLiteJobStore(Path(storage_dir) / "jobs.sqlite3", retention_s)
