"""Celery workers: take a job id from the queue, load the model once, run the translation.

``celery -A worker worker`` uses ``worker.celery``, built from ``MIDIFF_*`` variables.
"""

from worker.app import create_celery_app

celery = create_celery_app()

__all__ = ["celery", "create_celery_app"]
