"""The load benchmark's invariants, at a size a test run affords (``bench/load.py``).

Real processes: Redis, the gateway with two uvicorn processes, two Celery workers with the tiny
model, eight concurrent clients each with its own key. Every submission is accepted once, every
job ends, none is lost and none runs twice. Speed is printed by the benchmark, not asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from load import run_load

pytestmark = pytest.mark.slow


def test_concurrent_submissions_all_end_once(tmp_path: Path) -> None:
    report = run_load(tmp_path, submissions=48, clients=8, drain_timeout=600)
    assert set(report.statuses) <= {202, 429}, report.statuses
    assert len(report.accepted) == 48
    assert report.records == 48  # one record per submission
    assert report.lost() == []
    assert report.duplicated() == 0
    assert report.succeeded() == 48 == report.outputs
    assert all(job["attempts"] == 1 for job in report.jobs.values())
