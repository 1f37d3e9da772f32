"""The one Celery task: it carries a job id, never image bytes (``jobs.queue``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from celery import Celery, signals

from jobs.queue import TASK_NAME, TaskMessage
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

_runtime_lock = threading.Lock()


def get_runtime(app: Celery) -> WorkerRuntime:
    """The process's runtime for this app, made on first use (models then load lazily)."""
    with _runtime_lock:
        runtime = getattr(app, "midiff_runtime", None)
        if runtime is None:
            from worker.runtime import WorkerRuntime

            settings = getattr(app, "midiff_settings", None) or WorkerSettings()
            runtime = WorkerRuntime(settings)
            app.midiff_runtime = runtime
        return runtime


def register_tasks(app: Celery, settings: WorkerSettings | None) -> None:
    app.midiff_settings = settings
    app.midiff_runtime = None

    @app.task(name=TASK_NAME, bind=True, ignore_result=True, shared=False)
    def translate(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
        message = TaskMessage(job_id=job_id)
        return get_runtime(app).run_job(message.job_id, worker=self.request.hostname)


@signals.worker_init.connect
def _start_metrics_exporter(sender: object = None, **_: object) -> None:
    from worker.metrics import start_exporter

    app = getattr(sender, "app", None)
    settings = getattr(app, "midiff_settings", None) or WorkerSettings()
    start_exporter(settings.worker_metrics_port)
