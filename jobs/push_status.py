"""The outcome of pushing a job's derived series to a PACS (``push`` on the job): its state
(``pending``, ``pushed``, ``failed``), the attempts made, the last error and the destination.

Kept beside the job records, not in them: a Redis hash ``midiff:push:<job id>`` expiring with
the records, or a table in the same SQLite file.
"""

from __future__ import annotations

import json
import sqlite3
import weakref
from typing import Any

from jobs.records import JobStore
from jobs.redis_store import RedisJobStore
from jobs.sqlite_store import SQLiteJobStore

_TABLE = "CREATE TABLE IF NOT EXISTS job_push (job_id TEXT PRIMARY KEY, status TEXT NOT NULL)"


_READY: weakref.WeakSet[SQLiteJobStore] = weakref.WeakSet()  # stores whose table exists


def _sqlite(store: SQLiteJobStore) -> sqlite3.Connection:
    db = store._db()
    if store not in _READY:
        db.execute(_TABLE)
        _READY.add(store)
    return db


def set_push(store: JobStore, job_id: str, status: dict[str, Any]) -> None:
    text = json.dumps(status)
    if isinstance(store, RedisJobStore):
        key = f"midiff:push:{job_id}"
        store.client.set(key, text, ex=store.retention_s + 24 * 3600)
    elif isinstance(store, SQLiteJobStore):
        _sqlite(store).execute(
            "INSERT INTO job_push (job_id, status) VALUES (?, ?) "
            "ON CONFLICT(job_id) DO UPDATE SET status = excluded.status",
            (job_id, text),
        )


def get_push(store: JobStore, job_id: str) -> dict[str, Any] | None:
    text = None
    if isinstance(store, RedisJobStore):
        text = store.client.get(f"midiff:push:{job_id}")
    elif isinstance(store, SQLiteJobStore):
        row = (
            _sqlite(store)
            .execute("SELECT status FROM job_push WHERE job_id = ?", (job_id,))
            .fetchone()
        )
        text = row["status"] if row else None
    return json.loads(text) if text else None
