"""Celery workers: take a job id from the queue, load the model once, run the translation.

Importing this package builds nothing; the app is ``worker.app`` (``celery -A worker.app``).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # `celery -A worker` (the older spelling) looks up `worker.celery`: the same app
    if name == "celery":
        from worker.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
