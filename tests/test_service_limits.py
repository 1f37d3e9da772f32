"""Fairness and accountability: the per-key queued-job limit (429 + Retry-After), on both job
stores and through the gateway, and the audit log (one JSON line per submission, download and
deletion, with the key's hash, never the key)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from test_service_jobs import new_id, spec
from test_service_jobs import store as store  # the Redis and SQLite store fixture
from test_service_support import (
    API_KEY,
    AUTH,
    OTHER_KEY,
    gateway_settings,
    iter_partials,
    redis_db,
    write_nifti,
)

from jobs import JobState, JobStore, QueueLimitReached
from service.app import create_app
from service.auth import ApiKeyAuth

PROBLEM = "application/problem+json"


def spec_of(job_id: str, principal: str, idem: str | None = None):
    return spec(job_id, idem=idem).model_copy(update={"principal": principal})


def test_the_store_refuses_a_callers_job_over_the_limit(store: JobStore) -> None:
    first, second = new_id(), new_id()
    store.create(first, spec_of(first, "p1"), max_queued=2)
    store.create(second, spec_of(second, "p1"), max_queued=2)
    assert store.count_queued("p1") == 2
    third = new_id()
    with pytest.raises(QueueLimitReached) as refused:
        store.create(third, spec_of(third, "p1"), max_queued=2)
    assert refused.value.limit == 2
    assert store.get(third) is None  # nothing stored

    other = new_id()  # another caller is not held up by p1's queue
    assert store.create(other, spec_of(other, "p2"), max_queued=2) is None

    # a job that starts leaves the queue, and so does a cancelled one: room again
    assert store.start(first, max_attempts=3, worker="w", now=1.0).job is not None
    store.create(third, spec_of(third, "p1"), max_queued=2)
    store.request_cancel(second, now=2.0)
    fourth = new_id()
    store.create(fourth, spec_of(fourth, "p1"), max_queued=2)
    assert store.count_queued("p1") == 2
    assert store.get(fourth).state is JobState.QUEUED


def test_a_replay_is_answered_even_at_the_limit(store: JobStore) -> None:
    first = new_id()
    store.create(first, spec_of(first, "p1", idem="k1"), fingerprint="fp", max_queued=1)
    again = new_id()
    hit = store.create(again, spec_of(again, "p1", idem="k1"), fingerprint="fp", max_queued=1)
    assert hit is not None and hit.job_id == first
    fresh = new_id()
    with pytest.raises(QueueLimitReached):
        store.create(fresh, spec_of(fresh, "p1", idem="k2"), max_queued=1)
    # the refused request did not claim its idempotency key: it can be sent again later
    store.start(first, max_attempts=3, worker="w", now=1.0)
    assert store.create(fresh, spec_of(fresh, "p1", idem="k2"), max_queued=1) is None


@pytest.fixture
def limited(redis_url: str, tmp_path: Path, tiny_model_store) -> Iterator[dict]:
    """A gateway on a real Redis with no worker (jobs stay queued), at most 2 queued per key."""
    url = redis_db(redis_url, 9)
    redis.Redis.from_url(url).flushdb()
    audit_log = tmp_path / "audit" / "audit.jsonl"
    settings = gateway_settings(
        tmp_path / "storage",
        tiny_model_store.root,
        url,
        max_queued_per_key=2,
        queue_full_retry_after_s=17,
        audit_log=audit_log,
    )
    with TestClient(create_app(settings)) as client:
        yield {
            "client": client,
            "storage": tmp_path / "storage",
            "audit": audit_log,
            "sample": write_nifti(tmp_path / "scan.nii.gz", (32, 32, 3)),
        }


def _submit(gw: dict, key: str = API_KEY):
    with open(gw["sample"], "rb") as fh:
        return gw["client"].post(
            "/translate", files={"file": ("scan.nii.gz", fh)}, headers={"X-API-Key": key}
        )


def test_a_noisy_key_gets_429_and_the_others_still_get_in(limited: dict) -> None:
    client = limited["client"]
    accepted = [_submit(limited) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    inputs_before = sorted(p.name for p in (limited["storage"] / "in").iterdir())

    refused = _submit(limited)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == PROBLEM
    assert refused.headers["retry-after"] == "17"
    body = refused.json()
    assert body["code"] == "too-many-queued-jobs" and body["limit"] == 2
    assert "MIDIFF_MAX_QUEUED_PER_KEY" in body["detail"]
    # refused before the upload was read: nothing new in storage, no temporary file
    assert sorted(p.name for p in (limited["storage"] / "in").iterdir()) == inputs_before
    assert list(iter_partials(limited["storage"])) == []

    assert _submit(limited, OTHER_KEY).status_code == 202  # another integration is not starved

    cancelled = client.delete(f"/jobs/{accepted[0].json()['id']}", headers=AUTH)
    assert cancelled.status_code == 200
    assert _submit(limited).status_code == 202  # room again


def test_the_audit_log_has_one_line_per_action_and_no_key(limited: dict) -> None:
    client = limited["client"]
    job_id = _submit(limited).json()["id"]
    client.get(f"/jobs/{job_id}/result", headers=AUTH)  # 409: not ready
    client.delete(f"/jobs/{job_id}", headers=AUTH)
    client.delete(f"/jobs/{job_id}", headers=AUTH)  # cancelled already: 200 again
    client.get(f"/jobs/{'0' * 32}/result", headers=AUTH)  # 404
    client.post("/translate", content=b"x", headers={**AUTH, "Content-Type": "text/plain"})
    client.get(f"/jobs/{job_id}", headers=AUTH)  # a poll is not audited

    lines = [json.loads(line) for line in limited["audit"].read_text().splitlines()]
    principal = ApiKeyAuth([API_KEY], disabled=False).principal_for(API_KEY)
    assert [(e["event"], e["job"], e["outcome"], e["status"]) for e in lines] == [
        ("submit", job_id, "accepted", 202),
        ("download", job_id, "result-not-ready", 409),
        ("delete", job_id, "cancelled", 200),
        ("delete", job_id, "cancelled", 200),
        ("download", "0" * 32, "job-not-found", 404),
        ("submit", None, "unsupported-media-type", 415),
    ]
    assert {e["key"] for e in lines} == {principal}
    assert API_KEY not in limited["audit"].read_text()
    for entry in lines:
        assert set(entry) == {"time", "event", "key", "job", "outcome", "status"}
        stamp = time.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S")
        assert stamp.tm_year >= 2024
