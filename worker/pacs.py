"""Push a finished DICOM job's derived series to the configured PACS, and record the outcome
on the job (``jobs.push_status``). Runs in the worker right after the job is finished, so the
result is downloadable while the push is still being tried."""

from __future__ import annotations

import logging
import zipfile
from typing import Any

from jobs import JobOutput, JobStore
from jobs.pacs_push import StoreTarget, StowTarget, Target, push_with_retry
from jobs.push_status import set_push
from jobs.storage import LocalStorage
from worker.settings import WorkerSettings

log = logging.getLogger("midiffusion.worker")


def target_from(settings: WorkerSettings) -> Target | None:
    if settings.pacs_stow_url:
        auth = settings.pacs_stow_auth.get_secret_value() or None
        return StowTarget(settings.pacs_stow_url, auth)
    if settings.pacs_ae:
        return StoreTarget(
            settings.pacs_ae, settings.pacs_host, settings.pacs_port, settings.pacs_calling_ae
        )
    return None


def push_result(
    settings: WorkerSettings, jobs: JobStore, storage: LocalStorage, job_id: str, output: JobOutput
) -> str | None:
    """Push the series; returns the final error, or None when pushed (or nothing to push to)."""
    target = target_from(settings)
    if target is None:
        return None
    with zipfile.ZipFile(storage.path(output.key)) as archive:
        instances = [archive.read(info) for info in archive.infolist()]
    status: dict[str, Any] = {
        "state": "pending",
        "destination": target.describe(),
        "attempts": 0,
        "last_error": None,
    }
    set_push(jobs, job_id, status)

    def attempted(n: int, error: str | None) -> None:
        status.update(attempts=n, last_error=error)
        set_push(jobs, job_id, status)
        if error:
            log.warning(
                "job %s: push attempt %d to %s failed: %s", job_id, n, target.describe(), error
            )

    error = push_with_retry(
        target,
        instances,
        attempts=settings.push_attempts,
        backoff_s=settings.push_backoff_s,
        on_attempt=attempted,
    )
    status["state"] = "failed" if error else "pushed"
    set_push(jobs, job_id, status)
    log.info("job %s: push to %s %s", job_id, target.describe(), status["state"])
    return error
