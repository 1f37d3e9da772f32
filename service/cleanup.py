"""Remove finished jobs past their retention: input, output, record and idempotency claim.

The gateway runs this every ``MIDIFF_CLEANUP_INTERVAL_S``; ``python -m service.cleanup`` runs it
once (for cron). Running it from several gateways at once is safe: only the call whose
``delete()`` removed a record deletes that job's files.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

from jobs import JobStore, open_job_store
from jobs.settings import CommonSettings
from jobs.storage import LocalStorage

log = logging.getLogger("midiffusion.service")
PARTIAL_MAX_AGE_S = 24 * 3600  # an upload or a result still being written after a day is dead


@dataclass(frozen=True)
class CleanupReport:
    jobs: int
    files: int
    partials: int


def cleanup_expired(
    jobs: JobStore, storage: LocalStorage, *, now: float | None = None
) -> CleanupReport:
    now = time.time() if now is None else now
    removed_jobs = removed_files = 0
    while True:
        batch = jobs.expired(now)
        if not batch:
            break
        progressed = False
        for record in batch:
            if not jobs.delete(record.id):
                continue  # another cleaner got it
            progressed = True
            removed_jobs += 1
            keys = [record.spec.input_key] + ([record.output.key] if record.output else [])
            if record.output is not None and record.output.uncertainty_key:
                keys.append(record.output.uncertainty_key)
            removed_files += sum(storage.delete(k) for k in keys)
        if not progressed:
            break
    partials = storage.sweep_partials(PARTIAL_MAX_AGE_S, now=now)
    if removed_jobs or partials:
        log.info(
            "cleanup: %d expired jobs, %d files, %d stale partial files",
            removed_jobs,
            removed_files,
            partials,
        )
    return CleanupReport(jobs=removed_jobs, files=removed_files, partials=partials)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = CommonSettings()
    store = open_job_store(settings.redis_url, settings.storage_dir, settings.job_retention_s)
    report = cleanup_expired(store, LocalStorage(settings.storage_dir))
    print(f"removed {report.jobs} jobs, {report.files} files, {report.partials} partial files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
