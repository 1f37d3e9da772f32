"""Worker metrics (prometheus-client), served by a small HTTP exporter when
``MIDIFF_WORKER_METRICS_PORT`` is set. In the embedded mode they share the gateway's registry
and appear on its ``/metrics``."""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("midiffusion.worker")

_WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_RUN_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)

JOBS_FINISHED = Counter(
    "midiff_worker_jobs_total",
    "Jobs this worker took off the queue, by outcome",
    ["outcome"],  # succeeded, failed, cancelled, skipped, gave_up
)
QUEUE_WAIT = Histogram(
    "midiff_job_queue_wait_seconds",
    "Time from submission to the first start",
    buckets=_WAIT_BUCKETS,
)
RUN_TIME = Histogram(
    "midiff_job_run_seconds",
    "Time from start to end of a run, by outcome",
    ["outcome"],
    buckets=_RUN_BUCKETS,
)
PROGRESS = Gauge(
    "midiff_worker_job_progress_ratio", "Progress of the job this worker is running (0 to 1)"
)
BUSY = Gauge("midiff_worker_busy", "1 while this worker runs a job")
MODEL_LOAD = Histogram(
    "midiff_worker_model_load_seconds", "Time to load and verify a model (once per process)"
)
MODELS_LOADED = Gauge("midiff_worker_models_loaded", "Models held in this worker's memory")

_started_on: int | None = None
_lock = threading.Lock()


def start_exporter(port: int) -> bool:
    """Serve the default registry on ``port`` (once per process; 0 = off)."""
    global _started_on
    with _lock:
        if port <= 0 or _started_on is not None:
            return False
        start_http_server(port)
        _started_on = port
    log.info("worker metrics on :%d/metrics", port)
    return True
