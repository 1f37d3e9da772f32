"""Job records in one SQLite file, for the embedded mode (no Redis)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from jobs.records import (
    WORKER_LOST,
    IdempotencyHit,
    JobRecord,
    JobSpec,
    JobState,
    JobStore,
    QueueLimitReached,
    StartOutcome,
    StartResult,
    record_from_fields,
    worker_lost_message,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    error_code TEXT,
    error_message TEXT,
    output_key TEXT,
    output_filename TEXT,
    output_content_type TEXT,
    output_bytes INTEGER,
    output_warnings TEXT,
    output_quality TEXT,
    output_uncertainty_key TEXT,
    worker TEXT,
    idem_key TEXT UNIQUE,
    fingerprint TEXT,
    sent INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_expires_at ON jobs (expires_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""


class SQLiteJobStore(JobStore):
    """Job records in one SQLite file, for the embedded mode (gateway and worker in one process,
    or a few processes on one machine). WAL mode lets readers poll while the worker writes."""

    def __init__(self, path: Path, retention_s: int) -> None:
        super().__init__(retention_s)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)  # executescript manages its own transaction
        columns = {row["name"] for row in self._db().execute("PRAGMA table_info(jobs)")}
        if "sent" not in columns:  # a file from before the column: its jobs' tasks were sent
            self._db().execute("ALTER TABLE jobs ADD COLUMN sent INTEGER NOT NULL DEFAULT 1")
        if "output_warnings" not in columns:  # a file from before the column: no warnings
            self._db().execute("ALTER TABLE jobs ADD COLUMN output_warnings TEXT")
        for column in ("output_quality", "output_uncertainty_key"):  # from before telemetry
            if column not in columns:
                self._db().execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")

    def _db(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared across threads.
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, *_: object) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> SQLiteJobStore._Tx:
        return self._Tx(self._db())

    @staticmethod
    def _record(row: sqlite3.Row) -> JobRecord:
        fields = {k: row[k] for k in row.keys()}  # noqa: SIM118 (sqlite3.Row is not a Mapping)
        return record_from_fields(row["id"], fields)

    def create(
        self,
        job_id: str,
        spec: JobSpec,
        *,
        fingerprint: str | None = None,
        max_queued: int | None = None,
    ) -> IdempotencyHit | None:
        with self._tx() as db:
            if spec.idempotency_key is not None:
                hit = db.execute(
                    "SELECT id, fingerprint FROM jobs WHERE idem_key = ?", (spec.idempotency_key,)
                ).fetchone()
                if hit:
                    return IdempotencyHit(job_id=hit["id"], fingerprint=hit["fingerprint"] or "")
            if max_queued is not None and self._queued_of(db, spec.principal) >= max_queued:
                raise QueueLimitReached(max_queued)
            db.execute(
                "INSERT INTO jobs (id, spec, state, idem_key, fingerprint, sent) "
                "VALUES (?, ?, ?, ?, ?, 0)",
                (job_id, spec.model_dump_json(), "queued", spec.idempotency_key, fingerprint),
            )
        return None

    @staticmethod
    def _queued_of(db: sqlite3.Connection, principal: str) -> int:
        return db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' "
            "AND json_extract(spec, '$.principal') = ?",
            (principal,),
        ).fetchone()[0]

    def count_queued(self, principal: str) -> int:
        return self._queued_of(self._db(), principal)

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._record(row) if row else None

    def _finish_in(
        self, db: sqlite3.Connection, job_id: str, state: JobState, now: float, **fields: Any
    ) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        db.execute(
            f"UPDATE jobs SET state = ?, finished_at = ?, expires_at = ?{', ' if sets else ''}"
            f"{sets} WHERE id = ?",
            (state.value, now, now + self.retention_s, *fields.values(), job_id),
        )

    def start(self, job_id: str, *, max_attempts: int, worker: str, now: float) -> StartResult:
        with self._tx() as db:
            row = db.execute(
                "SELECT state, attempts, cancel FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return StartResult(StartOutcome.MISSING, None)
            if row["state"] not in ("queued", "running"):
                outcome = StartOutcome.SKIP
            elif row["cancel"]:
                self._finish_in(db, job_id, JobState.CANCELLED, now)
                outcome = StartOutcome.SKIP
            elif row["attempts"] >= max_attempts:
                self._finish_in(
                    db,
                    job_id,
                    JobState.FAILED,
                    now,
                    error_code=WORKER_LOST,
                    error_message=worker_lost_message(row["attempts"]),
                )
                outcome = StartOutcome.GAVE_UP
            else:
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, step = 0, "
                    "sent = 1, worker = ?, started_at = COALESCE(started_at, ?) WHERE id = ?",
                    (worker, now, job_id),
                )
                outcome = StartOutcome.RUN
        return StartResult(outcome, self.get(job_id))

    def mark_sent(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET sent = 1 WHERE id = ?", (job_id,))

    def unsent(self, created_before: float) -> list[str]:
        rows = self._db().execute(
            "SELECT id, spec FROM jobs WHERE sent = 0 AND state IN ('queued', 'running') "
            "ORDER BY id"
        )
        return [
            row["id"]
            for row in rows
            if JobSpec.model_validate_json(row["spec"]).created_at < created_before
        ]

    def mark_unfinished_unsent(self) -> int:
        with self._tx() as db:
            return db.execute(
                "UPDATE jobs SET sent = 0 WHERE state IN ('queued', 'running')"
            ).rowcount

    def set_progress(self, job_id: str, step: int, total: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET step = ?, total = ? WHERE id = ? AND state = 'running'",
                (step, total, job_id),
            )

    def cancel_requested(self, job_id: str) -> bool:
        row = self._db().execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel"])

    def _finish_if_running(
        self, job_id: str, state: JobState, now: float, fields: dict[str, str]
    ) -> None:
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row and row["state"] == "running":
                self._finish_in(db, job_id, state, now, **fields)

    def request_cancel(self, job_id: str, *, now: float) -> JobRecord | None:
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                self._finish_in(db, job_id, JobState.CANCELLED, now, cancel=1)
            elif row["state"] == "running":
                db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)

    def expired(self, now: float, limit: int = 500) -> list[JobRecord]:
        rows = (
            self._db()
            .execute(
                "SELECT * FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        return [self._record(r) for r in rows]

    def delete(self, job_id: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def count_by_state(self) -> dict[JobState, int]:
        rows = self._db().execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        counts = dict.fromkeys(JobState, 0)
        for row in rows:
            counts[JobState(row["state"])] = row["n"]
        return counts

    def ping(self) -> bool:
        try:
            self._db().execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
