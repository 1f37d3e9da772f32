"""Job records: one interface, a Redis implementation and an SQLite one for the embedded mode.

The record is the single source of truth for a job's state, progress and cancel flag. The gateway
writes it at submission, the worker moves it through its states, and both read it. Celery's own
result backend is not used. Every state change is one atomic step (a Lua script in Redis, an
``IMMEDIATE`` transaction in SQLite), so a cancel and a worker start can never both win.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
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


WORKER_LOST = "worker_lost"


_WORKER_LOST_TEMPLATE = (
    "gave up after {n} attempt(s): each time, the worker running this job stopped before it "
    "finished (killed, out of memory, or lost)"
)


def worker_lost_message(attempts: int) -> str:
    return _WORKER_LOST_TEMPLATE.replace("{n}", str(attempts))


class JobStore(ABC):
    """Where job records live. ``retention_s``: how long a finished job is kept."""

    def __init__(self, retention_s: int) -> None:
        self.retention_s = retention_s

    @abstractmethod
    def create(
        self, job_id: str, spec: JobSpec, *, fingerprint: str | None = None
    ) -> IdempotencyHit | None:
        """Store a new queued job. With ``spec.idempotency_key`` set, claim that key at the same
        time; if it was already claimed, store nothing and return what claimed it."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def start(self, job_id: str, *, max_attempts: int, worker: str, now: float) -> StartResult:
        """A worker took the job's task (first delivery or a redelivery after a lost worker)."""

    @abstractmethod
    def set_progress(self, job_id: str, step: int, total: int) -> None: ...

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool: ...

    @abstractmethod
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


# --- Redis ---------------------------------------------------------------------------------

_PREFIX = "midiff:"

# KEYS: job, queued-set, idem (or "" when none). ARGV: id, spec, fingerprint.
_LUA_CREATE = """
if KEYS[3] ~= '' then
  local hit = redis.call('GET', KEYS[3])
  if hit then return hit end
  redis.call('SET', KEYS[3], ARGV[1] .. ' ' .. ARGV[3])
end
redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'state', 'queued', 'attempts', 0, 'step', 0,
           'total', 0, 'cancel', 0)
redis.call('SADD', KEYS[2], ARGV[1])
return false
"""

# KEYS: job, expiry-zset. ARGV: id, max_attempts, worker, now, retention, prefix, lost_message.
_LUA_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state ~= 'queued' and state ~= 'running' then return {'skip'} end
local function finish(to, code, message)
  redis.call('HSET', KEYS[1], 'state', to, 'finished_at', ARGV[4])
  if code then redis.call('HSET', KEYS[1], 'error_code', code, 'error_message', message) end
  redis.call('SMOVE', ARGV[6] .. 'state:' .. state, ARGV[6] .. 'state:' .. to, ARGV[1])
  redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[5]), ARGV[1])
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  finish('cancelled', false, nil)
  return {'skip'}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts'))
if attempts >= tonumber(ARGV[2]) then
  finish('failed', 'worker_lost', (string.gsub(ARGV[7], '{n}', tostring(attempts))))
  return {'gave_up'}
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[4])
  redis.call('SMOVE', ARGV[6] .. 'state:queued', ARGV[6] .. 'state:running', ARGV[1])
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[3], 'step', 0)
return {'run'}
"""

# KEYS: job. ARGV: step, total.
_LUA_PROGRESS = """
if redis.call('HGET', KEYS[1], 'state') == 'running' then
  redis.call('HSET', KEYS[1], 'step', ARGV[1], 'total', ARGV[2])
end
return 0
"""

# KEYS: job, expiry-zset. ARGV: id, to_state, now, retention, prefix, fields-json.
_LUA_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'finished_at', ARGV[3])
for k, v in pairs(cjson.decode(ARGV[6])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('SMOVE', ARGV[5] .. 'state:running', ARGV[5] .. 'state:' .. ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
return 1
"""

# KEYS: job, expiry-zset. ARGV: id, now, retention, prefix.
_LUA_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2], 'cancel', 1)
  redis.call('SMOVE', ARGV[4] .. 'state:queued', ARGV[4] .. 'state:cancelled', ARGV[1])
  redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
elseif state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', 1)
end
return state
"""

# KEYS: job, expiry-zset. ARGV: id, prefix.
_LUA_DELETE = """
local state = redis.call('HGET', KEYS[1], 'state')
local spec = redis.call('HGET', KEYS[1], 'spec')
redis.call('ZREM', KEYS[2], ARGV[1])
if not state then return 0 end
if spec then
  local idem = cjson.decode(spec)['idempotency_key']
  if type(idem) == 'string' then redis.call('DEL', idem) end
end
redis.call('SREM', ARGV[2] .. 'state:' .. state, ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""


def _opt_float(value: Any) -> float | None:
    return None if value in (None, b"", "") else float(value)


def _record_from_fields(job_id: str, f: dict[str, Any]) -> JobRecord:
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
        )
    return JobRecord(
        id=job_id,
        spec=JobSpec.model_validate_json(f["spec"]),
        state=JobState(f["state"]),
        attempts=int(f.get("attempts") or 0),
        step=int(f.get("step") or 0),
        total=int(f.get("total") or 0),
        cancel_requested=str(f.get("cancel")) == "1",
        started_at=_opt_float(f.get("started_at")),
        finished_at=_opt_float(f.get("finished_at")),
        error=error,
        output=output,
        worker=f.get("worker") or None,
    )


def _finish_fields(error: JobError | None, output: JobOutput | None) -> dict[str, str]:
    fields: dict[str, str] = {}
    if error is not None:
        fields.update(error_code=error.code, error_message=error.message)
    if output is not None:
        fields.update(
            output_key=output.key,
            output_filename=output.filename,
            output_content_type=output.content_type,
            output_bytes=str(output.bytes),
        )
    return fields


class RedisJobStore(JobStore):
    """Job records as Redis hashes, kept apart from anything Celery writes (prefix ``midiff:``)."""

    def __init__(self, url: str, retention_s: int) -> None:
        super().__init__(retention_s)
        self.client = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
        )
        self._create = self.client.register_script(_LUA_CREATE)
        self._start = self.client.register_script(_LUA_START)
        self._progress = self.client.register_script(_LUA_PROGRESS)
        self._finish = self.client.register_script(_LUA_FINISH)
        self._cancel = self.client.register_script(_LUA_CANCEL)
        self._delete = self.client.register_script(_LUA_DELETE)

    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"{_PREFIX}job:{job_id}"

    @staticmethod
    def idempotency_store_key(scoped_key: str) -> str:
        return f"{_PREFIX}idem:{scoped_key}"

    _expiry_key = f"{_PREFIX}expiry"

    def create(
        self, job_id: str, spec: JobSpec, *, fingerprint: str | None = None
    ) -> IdempotencyHit | None:
        if spec.idempotency_key is not None:
            spec = spec.model_copy(
                update={"idempotency_key": self.idempotency_store_key(spec.idempotency_key)}
            )
        hit = self._create(
            keys=[self._job_key(job_id), f"{_PREFIX}state:queued", spec.idempotency_key or ""],
            args=[job_id, spec.model_dump_json(), fingerprint or ""],
        )
        if hit:
            other_id, _, other_fingerprint = hit.partition(" ")
            return IdempotencyHit(job_id=other_id, fingerprint=other_fingerprint)
        return None

    def get(self, job_id: str) -> JobRecord | None:
        fields = self.client.hgetall(self._job_key(job_id))
        return _record_from_fields(job_id, fields) if fields else None

    def start(self, job_id: str, *, max_attempts: int, worker: str, now: float) -> StartResult:
        (outcome,) = self._start(
            keys=[self._job_key(job_id), self._expiry_key],
            args=[
                job_id,
                max_attempts,
                worker,
                repr(now),
                self.retention_s,
                _PREFIX,
                _WORKER_LOST_TEMPLATE,
            ],
        )
        return StartResult(StartOutcome(outcome), self.get(job_id))

    def set_progress(self, job_id: str, step: int, total: int) -> None:
        self._progress(keys=[self._job_key(job_id)], args=[step, total])

    def cancel_requested(self, job_id: str) -> bool:
        return self.client.hget(self._job_key(job_id), "cancel") == "1"

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        now: float,
        error: JobError | None = None,
        output: JobOutput | None = None,
    ) -> JobRecord | None:
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish() needs a terminal state, not {state}")
        self._finish(
            keys=[self._job_key(job_id), self._expiry_key],
            args=[
                job_id,
                state.value,
                repr(now),
                self.retention_s,
                _PREFIX,
                json.dumps(_finish_fields(error, output)),
            ],
        )
        return self.get(job_id)

    def request_cancel(self, job_id: str, *, now: float) -> JobRecord | None:
        before = self._cancel(
            keys=[self._job_key(job_id), self._expiry_key],
            args=[job_id, repr(now), self.retention_s, _PREFIX],
        )
        return self.get(job_id) if before else None

    def expired(self, now: float, limit: int = 500) -> list[JobRecord]:
        ids = self.client.zrangebyscore(self._expiry_key, "-inf", now, start=0, num=limit)
        records = []
        for job_id in ids:
            record = self.get(job_id)
            if record is None:  # the record is gone already: forget its expiry entry
                self.client.zrem(self._expiry_key, job_id)
            else:
                records.append(record)
        return records

    def delete(self, job_id: str) -> bool:
        return bool(
            self._delete(keys=[self._job_key(job_id), self._expiry_key], args=[job_id, _PREFIX])
        )

    def count_by_state(self) -> dict[JobState, int]:
        pipe = self.client.pipeline(transaction=False)
        for state in JobState:
            pipe.scard(f"{_PREFIX}state:{state.value}")
        return dict(zip(JobState, (int(n) for n in pipe.execute()), strict=True))

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self.client.close()


# --- SQLite (embedded mode) ----------------------------------------------------------------

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
    worker TEXT,
    idem_key TEXT UNIQUE,
    fingerprint TEXT
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
        return _record_from_fields(row["id"], fields)

    def create(
        self, job_id: str, spec: JobSpec, *, fingerprint: str | None = None
    ) -> IdempotencyHit | None:
        with self._tx() as db:
            if spec.idempotency_key is not None:
                hit = db.execute(
                    "SELECT id, fingerprint FROM jobs WHERE idem_key = ?", (spec.idempotency_key,)
                ).fetchone()
                if hit:
                    return IdempotencyHit(job_id=hit["id"], fingerprint=hit["fingerprint"] or "")
            db.execute(
                "INSERT INTO jobs (id, spec, state, idem_key, fingerprint) VALUES (?, ?, ?, ?, ?)",
                (job_id, spec.model_dump_json(), "queued", spec.idempotency_key, fingerprint),
            )
        return None

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
                    "worker = ?, started_at = COALESCE(started_at, ?) WHERE id = ?",
                    (worker, now, job_id),
                )
                outcome = StartOutcome.RUN
        return StartResult(outcome, self.get(job_id))

    def set_progress(self, job_id: str, step: int, total: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET step = ?, total = ? WHERE id = ? AND state = 'running'",
                (step, total, job_id),
            )

    def cancel_requested(self, job_id: str) -> bool:
        row = self._db().execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel"])

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        now: float,
        error: JobError | None = None,
        output: JobOutput | None = None,
    ) -> JobRecord | None:
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish() needs a terminal state, not {state}")
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row and row["state"] == "running":
                self._finish_in(db, job_id, state, now, **_finish_fields(error, output))
        return self.get(job_id)

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


def open_job_store(redis_url: str | None, storage_dir: Path, retention_s: int) -> JobStore:
    """Redis when configured, else SQLite beside the stored files (the embedded mode)."""
    if redis_url:
        return RedisJobStore(redis_url, retention_s)
    return SQLiteJobStore(Path(storage_dir) / "jobs.sqlite3", retention_s)


def now() -> float:
    return time.time()
