"""The queue contract between gateway and workers: the task's name and queue, the message it
carries, and the Celery app both sides build from the shared settings.

A message holds a job id, never image bytes: the job record (``jobs.records``) holds the rest.
The gateway only sends tasks by name, so its app registers none; a worker's app is this one plus
its task (``worker.app.create_worker_app``). Without ``MIDIFF_REDIS_URL`` the broker is Celery's
in-memory transport (the embedded mode).
"""

from __future__ import annotations

from celery import Celery
from pydantic import BaseModel, Field

from jobs.settings import CommonSettings

TASK_NAME = "midiffusion.translate"
QUEUE = "midiffusion"


class TaskMessage(BaseModel):
    """The task's arguments: the id of a job whose record is already stored."""

    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")

    def args(self) -> list[str]:
        return [self.job_id]


def create_celery_app(settings: CommonSettings | None = None) -> Celery:
    """A Celery app configured for the queue, with no tasks (what the gateway sends with)."""
    settings = settings or CommonSettings()
    app = Celery("midiffusion", broker=settings.redis_url or "memory://", set_as_current=False)
    app.conf.update(
        # A task is acknowledged only after it ran, and requeued if its worker dies: a killed
        # worker loses no job. The job record's start() counts deliveries and gives up on a job
        # that keeps killing workers (MIDIFF_MAX_DELIVERIES).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job at a time per process (one process per GPU): nothing waits behind a long job
        # in one worker's prefetch buffer while another worker is idle.
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        # Redis redelivers an unacknowledged task after this; it must exceed the longest job,
        # which the worker itself stops at MIDIFF_JOB_TIMEOUT_S.
        broker_transport_options={"visibility_timeout": settings.effective_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        # Job state lives in the job record, not in Celery results.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
