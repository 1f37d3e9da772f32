"""The worker's Celery app: the queue's app (``jobs.queue``) plus the translation task.

Start a worker with ``celery -A worker.app worker -P solo``: Celery asks this module for ``app``,
which is built from the ``MIDIFF_*`` variables on that first access, not on import. Building it
is torch-free; running a job is not.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from celery import Celery

from jobs.queue import create_celery_app
from jobs.settings import CommonSettings
from worker.settings import WorkerSettings

_app: Celery | None = None
_app_lock = threading.Lock()


def create_worker_app(settings: CommonSettings | None = None) -> Celery:
    """The Celery app of a worker process; ``settings`` default to ``WorkerSettings()``."""
    from worker.tasks import register_tasks

    settings = settings or WorkerSettings()
    app = create_celery_app(settings)
    register_tasks(app, settings if isinstance(settings, WorkerSettings) else None)
    return app


def __getattr__(name: str) -> Any:
    # `celery -A worker.app` looks up `worker.app.app`: build it once, on that first access
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global _app
    with _app_lock:
        if _app is None:
            _app = create_worker_app()
        return _app


def start_embedded_worker(celery_app: Celery, loglevel: str) -> tuple[Any, threading.Thread]:
    """A ``solo`` worker for ``celery_app`` in a daemon thread of this process (the embedded
    mode of ``midiffusion serve``); returns the worker (``stop()`` it) and its thread."""
    # Celery's task tracer looks tasks up on the *current* app: make it this one.
    celery_app.set_current()
    celery_app.set_default()
    worker = celery_app.WorkController(
        pool_cls="solo",
        concurrency=1,
        hostname=f"embedded@{socket.gethostname()}",
        loglevel=loglevel.upper(),
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    thread = threading.Thread(target=worker.start, name="embedded-worker", daemon=True)
    thread.start()
    return worker, thread
