"""Which of a caller's jobs belong to a DICOM study (``GET /jobs?study=``).

SQLite reads it from the records themselves (the spec is JSON in its row). Redis keeps one set
per (caller, study), written at submission and expiring with the records; ids whose record is
gone are dropped when read. Study UIDs are stored hashed with the caller, never in key names.
"""

from __future__ import annotations

import hashlib

from jobs.records import JobRecord, JobStore
from jobs.redis_store import RedisJobStore
from jobs.sqlite_store import SQLiteJobStore

MAX_LISTED = 500


def _redis_key(principal: str, study_uid: str) -> str:
    digest = hashlib.sha256(f"{principal}\0{study_uid}".encode()).hexdigest()
    return f"midiff:study:{digest}"


def record_study(store: JobStore, principal: str, study_uid: str, job_id: str) -> None:
    if isinstance(store, RedisJobStore):
        key = _redis_key(principal, study_uid)
        pipe = store.client.pipeline()
        pipe.sadd(key, job_id)
        # a week of retention after the newest job: every member's record expires before it
        pipe.expire(key, store.retention_s + 7 * 24 * 3600)
        pipe.execute()


def jobs_for_study(store: JobStore, principal: str, study_uid: str) -> list[JobRecord]:
    """The caller's jobs on that study, oldest first."""
    if isinstance(store, SQLiteJobStore):
        rows = store._db().execute(
            "SELECT id FROM jobs WHERE json_extract(spec, '$.dicom_study_uid') = ? "
            "AND json_extract(spec, '$.principal') = ? LIMIT ?",
            (study_uid, principal, MAX_LISTED),
        )
        ids = [row["id"] for row in rows]
    elif isinstance(store, RedisJobStore):
        ids = sorted(store.client.smembers(_redis_key(principal, study_uid)))[:MAX_LISTED]
    else:
        ids = []
    found = [job for job in (store.get(i) for i in ids) if job is not None]
    found = [j for j in found if j.spec.principal == principal]
    return sorted(found, key=lambda j: j.spec.created_at)
