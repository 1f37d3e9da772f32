"""A succeeded job's quality figures and uncertainty map on its record, in both job stores, and
gone with the job when its retention ends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from test_service_jobs import RETENTION, new_id, spec, store  # noqa: F401 (store: a fixture)

from jobs import JobOutput, JobState, JobStore, SQLiteJobStore
from jobs.storage import InvalidKeyError, LocalStorage
from service.cleanup import cleanup_expired
from service.schemas import job_out

QUALITY = {"nmi_source": 0.31, "lmi_source": 0.52, "sample_spread": None}


def _succeed(jobs: JobStore, job_id: str, output: JobOutput, end: float = 1000.0) -> None:
    jobs.create(job_id, spec(job_id))
    jobs.start(job_id, max_attempts=3, worker="w", now=end - 1)
    jobs.finish(job_id, JobState.SUCCEEDED, now=end, output=output)


def _output(job_id: str, **extra: object) -> JobOutput:
    return JobOutput(
        key=f"out/{job_id}.nii.gz", filename="o.nii.gz", content_type="a/b", bytes=6, **extra
    )


def test_quality_and_the_map_round_trip(store: JobStore) -> None:  # noqa: F811
    job_id = new_id()
    key = f"out/{job_id}.uncertainty.nii.gz"
    _succeed(store, job_id, _output(job_id, quality=QUALITY, uncertainty_key=key))
    record = store.get(job_id)
    assert record is not None and record.output is not None
    assert record.output.quality == QUALITY  # None stays None (one draw: no spread)
    assert record.output.uncertainty_key == key
    shown = job_out(record, now=2000.0)
    assert shown.quality == QUALITY
    assert shown.links["uncertainty"] == f"/jobs/{job_id}/result?part=uncertainty"


def test_a_job_without_them_shows_none(store: JobStore) -> None:  # noqa: F811
    job_id = new_id()
    _succeed(store, job_id, _output(job_id))
    record = store.get(job_id)
    assert record is not None and record.output is not None
    assert record.output.quality is None and record.output.uncertainty_key is None
    shown = job_out(record, now=2000.0)
    assert shown.quality is None and "uncertainty" not in shown.links


def test_cleanup_deletes_the_map_with_the_job(store: JobStore, tmp_path: Path) -> None:  # noqa: F811
    storage = LocalStorage(tmp_path / "files")
    job_id = new_id()
    key = storage.key("out", job_id, ".uncertainty.nii.gz")
    for k in (f"in/{job_id}.nii.gz", f"out/{job_id}.nii.gz", key):
        storage.path(k).write_bytes(b"x")
    _succeed(store, job_id, _output(job_id, quality=QUALITY, uncertainty_key=key))
    report = cleanup_expired(store, storage, now=1000.0 + RETENTION + 1)
    assert (report.jobs, report.files) == (1, 3)
    assert not any(storage.root.rglob(f"{job_id}*"))


def test_only_the_server_made_map_key_is_a_key(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    job_id = new_id()
    assert storage.key("out", job_id, ".uncertainty.nii.gz").endswith(".uncertainty.nii.gz")
    for bad in (f"out/{job_id}.other.nii.gz", f"out/{job_id}.uncertainty", "out/../x.nii.gz"):
        try:
            storage.path(bad)
        except InvalidKeyError:
            continue
        raise AssertionError(f"{bad} was accepted as a storage key")


def test_a_job_file_from_before_the_quality_columns_is_upgraded(tmp_path: Path) -> None:
    from jobs.sqlite_store import _SCHEMA

    old_schema = _SCHEMA.replace("    output_quality TEXT,\n    output_uncertainty_key TEXT,\n", "")
    assert "output_quality" not in old_schema
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO jobs (id, spec, state, output_key, output_filename, "
            "output_content_type, output_bytes) VALUES (?, ?, 'succeeded', ?, 'o', 'a/b', 6)",
            ("j1", spec("j1").model_dump_json(), "out/" + "0" * 32 + ".nii.gz"),
        )
    upgraded = SQLiteJobStore(path, RETENTION)
    try:
        record = upgraded.get("j1")
        assert record is not None and record.output is not None
        assert record.output.quality is None and record.output.uncertainty_key is None
        job_id = new_id()
        _succeed(upgraded, job_id, _output(job_id, quality=QUALITY))
        assert upgraded.get(job_id).output.quality == QUALITY  # type: ignore[union-attr]
    finally:
        upgraded.close()
