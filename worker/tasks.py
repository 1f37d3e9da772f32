"""The one Celery task: it carries a job id, never image bytes (``jobs.queue``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from celery import Celery, signals
from celery.exceptions import Reject

from jobs.queue import TASK_NAME, TaskMessage
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

_runtime_lock = threading.Lock()
_runtimes: list[WorkerRuntime] = []  # this process's runtimes (one per app; usually one)


def get_runtime(app: Celery) -> WorkerRuntime:
    """The process's runtime for this app, made on first use (models then load lazily)."""
    with _runtime_lock:
        runtime = getattr(app, "midiff_runtime", None)
        if runtime is None:
            from worker.runtime import WorkerRuntime

            settings = getattr(app, "midiff_settings", None) or WorkerSettings()
            runtime = WorkerRuntime(settings)
            app.midiff_runtime = runtime
            _runtimes.append(runtime)
        return runtime


def register_tasks(app: Celery, settings: WorkerSettings | None) -> None:
    app.midiff_settings = settings
    app.midiff_runtime = None

    @app.task(name=TASK_NAME, bind=True, ignore_result=True, shared=False)
    def translate(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
        from worker.runtime import JobReleased

        message = TaskMessage(job_id=job_id)
        try:
            return get_runtime(app).run_job(message.job_id, worker=self.request.hostname)
        except JobReleased as exc:
            # back on the queue at once (no wait for the visibility timeout); the next start
            # counts as a new attempt
            raise Reject("released by a stopping worker", requeue=True) from exc


@signals.worker_shutting_down.connect
def _release_running_jobs(**_: object) -> None:
    """Warm shutdown (SIGTERM): the running job stops at its next sampling step and goes back
    to the queue, rather than holding the worker until it ends."""
    for runtime in _runtimes:
        runtime.stopping.set()


@signals.worker_init.connect
def _start_metrics_exporter(sender: object = None, **_: object) -> None:
    from worker.metrics import start_exporter

    app = getattr(sender, "app", None)
    settings = getattr(app, "midiff_settings", None) or WorkerSettings()
    start_exporter(settings.worker_metrics_port)
