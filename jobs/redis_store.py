"""Job records in Redis: hashes under ``midiff:``, apart from anything Celery writes; every
state change is one Lua script."""

from __future__ import annotations

import json

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs.records import (
    WORKER_LOST_TEMPLATE,
    IdempotencyHit,
    JobRecord,
    JobSpec,
    JobState,
    JobStore,
    QueueLimitReached,
    StartOutcome,
    StartResult,
    record_from_fields,
)

_PREFIX = "midiff:"

# A caller's set of the ids of its jobs that were queued when made (kept only under a limit).
# Ids no longer queued are dropped whenever the set is counted, so it stays about the limit's
# size. KEYS: the caller's set. ARGV: prefix.
_LUA_COUNT_QUEUED = """
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('HGET', ARGV[1] .. 'job:' .. id, 'state') == 'queued' then
    n = n + 1
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return n
"""

# KEYS: job, queued-set, idem (or "" when none), principal's queued set.
# ARGV: id, spec, fingerprint, max queued (-1: no limit), prefix.
_LUA_CREATE = (
    "local function count_queued()\n"
    + _LUA_COUNT_QUEUED.replace("KEYS[1]", "KEYS[4]").replace("ARGV[1]", "ARGV[5]")
    + "end\n"
    + """
if KEYS[3] ~= '' then
  local hit = redis.call('GET', KEYS[3])
  if hit then return hit end
end
if tonumber(ARGV[4]) >= 0 and count_queued() >= tonumber(ARGV[4]) then
  return {'limit'}
end
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], ARGV[1] .. ' ' .. ARGV[3]) end
if tonumber(ARGV[4]) >= 0 then redis.call('SADD', KEYS[4], ARGV[1]) end
redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'state', 'queued', 'attempts', 0, 'step', 0,
           'total', 0, 'cancel', 0, 'sent', 0)
redis.call('SADD', KEYS[2], ARGV[1])
return false
"""
)

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
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[3], 'step', 0, 'sent', 1)
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

# KEYS: job. Only an existing record is marked (a deleted job must not come back as a stub).
_LUA_MARK_SENT = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'sent', 1) end
return 0
"""

# KEYS: queued-set, running-set. ARGV: prefix.
_LUA_MARK_UNSENT = """
local n = 0
for _, id in ipairs(redis.call('SUNION', KEYS[1], KEYS[2])) do
  local key = ARGV[1] .. 'job:' .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'sent', 0)
    n = n + 1
  end
end
return n
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


class RedisJobStore(JobStore):
    """Job records as Redis hashes, kept apart from anything Celery writes (prefix ``midiff:``)."""

    def __init__(self, url: str, retention_s: int, *, outage_s: float = 0) -> None:
        """``outage_s``: keep retrying a command for about this long while Redis is unreachable
        (a worker rides out a Redis restart mid-job); 0 = redis-py's few quick retries."""
        super().__init__(retention_s)
        options: dict = {}
        if outage_s > 0:
            # waits of 0.05 s doubling to 1 s: about outage_s seconds in all
            options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), int(outage_s) + 5)
        self.client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            health_check_interval=30,
            **options,
        )
        self._create = self.client.register_script(_LUA_CREATE)
        self._count_queued = self.client.register_script(_LUA_COUNT_QUEUED)
        self._start = self.client.register_script(_LUA_START)
        self._progress = self.client.register_script(_LUA_PROGRESS)
        self._finish = self.client.register_script(_LUA_FINISH)
        self._cancel = self.client.register_script(_LUA_CANCEL)
        self._mark_sent = self.client.register_script(_LUA_MARK_SENT)
        self._mark_unsent = self.client.register_script(_LUA_MARK_UNSENT)
        self._delete = self.client.register_script(_LUA_DELETE)

    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"{_PREFIX}job:{job_id}"

    @staticmethod
    def idempotency_store_key(scoped_key: str) -> str:
        return f"{_PREFIX}idem:{scoped_key}"

    _expiry_key = f"{_PREFIX}expiry"

    @staticmethod
    def _queued_set(principal: str) -> str:
        return f"{_PREFIX}queued_by:{principal}"

    def count_queued(self, principal: str) -> int:
        return int(self._count_queued(keys=[self._queued_set(principal)], args=[_PREFIX]))

    def create(
        self,
        job_id: str,
        spec: JobSpec,
        *,
        fingerprint: str | None = None,
        max_queued: int | None = None,
    ) -> IdempotencyHit | None:
        if spec.idempotency_key is not None:
            spec = spec.model_copy(
                update={"idempotency_key": self.idempotency_store_key(spec.idempotency_key)}
            )
        hit = self._create(
            keys=[
                self._job_key(job_id),
                f"{_PREFIX}state:queued",
                spec.idempotency_key or "",
                self._queued_set(spec.principal),
            ],
            args=[
                job_id,
                spec.model_dump_json(),
                fingerprint or "",
                -1 if max_queued is None else max_queued,
                _PREFIX,
            ],
        )
        if hit == ["limit"]:
            raise QueueLimitReached(max_queued or 0)
        if hit:
            other_id, _, other_fingerprint = hit.partition(" ")
            return IdempotencyHit(job_id=other_id, fingerprint=other_fingerprint)
        return None

    def get(self, job_id: str) -> JobRecord | None:
        fields = self.client.hgetall(self._job_key(job_id))
        return record_from_fields(job_id, fields) if fields else None

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
                WORKER_LOST_TEMPLATE,
            ],
        )
        return StartResult(StartOutcome(outcome), self.get(job_id))

    def mark_sent(self, job_id: str) -> None:
        self._mark_sent(keys=[self._job_key(job_id)])

    def unsent(self, created_before: float) -> list[str]:
        ids = sorted(self.client.sunion(f"{_PREFIX}state:queued", f"{_PREFIX}state:running"))
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._job_key(job_id), "sent", "spec")
        found = []
        for job_id, (sent, spec) in zip(ids, pipe.execute(), strict=True):
            # a record without the field predates it, and its task was sent when it was made
            if sent == "0" and spec and json.loads(spec)["created_at"] < created_before:
                found.append(job_id)
        return found

    def mark_unfinished_unsent(self) -> int:
        return int(
            self._mark_unsent(
                keys=[f"{_PREFIX}state:queued", f"{_PREFIX}state:running"], args=[_PREFIX]
            )
        )

    def set_progress(self, job_id: str, step: int, total: int) -> None:
        self._progress(keys=[self._job_key(job_id)], args=[step, total])

    def cancel_requested(self, job_id: str) -> bool:
        return self.client.hget(self._job_key(job_id), "cancel") == "1"

    def _finish_if_running(
        self, job_id: str, state: JobState, now: float, fields: dict[str, str]
    ) -> None:
        self._finish(
            keys=[self._job_key(job_id), self._expiry_key],
            args=[job_id, state.value, repr(now), self.retention_s, _PREFIX, json.dumps(fields)],
        )

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
