"""Putting a job's task on the queue, and back on it when it never got there.

The gateway records a job, sends its task, then marks the record as sent. A gateway that stops
between the record and the send leaves a queued job that no worker will ever see, and so does a
restart of the embedded mode, whose queue lives in memory. The gateway finds such jobs and sends
their tasks (again). A worker that takes a task marks its job as sent too.
"""

from __future__ import annotations

import logging

from celery import Celery

from jobs import JobStore
from jobs.queue import QUEUE, TASK_NAME, TaskMessage

log = logging.getLogger("midiffusion.service")


def enqueue(celery: Celery, jobs: JobStore, job_id: str) -> None:
    """Send the job's task; raises when the broker cannot be reached (nothing was sent)."""
    args = TaskMessage(job_id=job_id).args()
    celery.send_task(TASK_NAME, args=args, task_id=job_id, queue=QUEUE)
    try:
        jobs.mark_sent(job_id)
    except Exception:  # the task is on its way; the worker that takes it marks it as well
        log.warning("job %s: sent, but could not be marked as sent", job_id, exc_info=True)


def requeue_unsent(celery: Celery, jobs: JobStore, *, created_before: float) -> list[str]:
    """Send the tasks of unfinished jobs created before ``created_before`` that were never sent.
    The cut-off leaves alone the jobs that a live gateway is sending right now."""
    requeued = []
    for job_id in jobs.unsent(created_before):
        enqueue(celery, jobs, job_id)
        requeued.append(job_id)
    if requeued:
        log.warning("sent the tasks of %d job(s) that never reached the queue", len(requeued))
    return requeued


def queue_depth(celery: Celery) -> int:
    """Tasks waiting on the queue (on Redis, the length of its list), read from the broker."""
    from kombu.exceptions import ChannelError

    with celery.connection_for_read() as connection:
        try:
            declared = connection.default_channel.queue_declare(queue=QUEUE, passive=True)
        except ChannelError:  # nothing was ever queued (Redis drops an empty list)
            return 0
        return int(declared.message_count)
