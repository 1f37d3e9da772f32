"""Worker metrics (prometheus-client), served by a small HTTP exporter when
``MIDIFF_WORKER_METRICS_PORT`` is set. In the embedded mode they share the gateway's registry
and appear on its ``/metrics``."""

from __future__ import annotations

import logging
import os
import threading

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

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
# multiprocess_mode: how the exporter combines the processes of a worker's pool
PROGRESS = Gauge(
    "midiff_worker_job_progress_ratio",
    "Progress of the job this worker is running (0 to 1)",
    multiprocess_mode="livemax",
)
BUSY = Gauge("midiff_worker_busy", "1 while this worker runs a job", multiprocess_mode="livesum")
MODEL_LOAD = Histogram(
    "midiff_worker_model_load_seconds", "Time to load and verify a model (once per process)"
)
MODELS_LOADED = Gauge(
    "midiff_worker_models_loaded",
    "Models held in this worker's memory",
    multiprocess_mode="livesum",
)

# What happened inside a job: its stages, its sampling steps, and how good the result is.
STAGES = ("queue", "load", "preprocess", "sample", "write")
STAGE_SECONDS = Histogram(
    "midiff_job_stage_seconds",
    "Time a succeeded job spent in each stage: queue (first delivery only), load (the model on "
    "first use, and the input), preprocess (reading, planning, quality figures, mapping back), "
    "sample (guided sampling), write (the result files)",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
STEP_SECONDS = Histogram(
    "midiff_sampling_step_seconds",
    "Duration of one sampling step of one batch of slices",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
SLICES_TRANSLATED = Counter("midiff_slices_translated_total", "Foreground slices translated")
GPU_MEMORY = Gauge(
    "midiff_gpu_memory_bytes",
    "Peak GPU memory of the last job (0 on a CPU)",
    multiprocess_mode="max",
)
QUALITY_METRICS = ("nmi_source", "lmi_source", "sample_spread")
QUALITY = Histogram(
    "midiff_translation_quality",
    "Per-job translation quality, by metric (midiffusion.pipeline.quality): NMI and mean "
    "clean-LMI of output and source, and the mean spread between the averaged draws",
    ["metric"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
# every series exists from the start, so rates and alerts see the first job as an increase
for _outcome in ("succeeded", "failed", "cancelled", "skipped", "gave_up"):
    JOBS_FINISHED.labels(_outcome)
for _outcome in ("succeeded", "failed", "cancelled"):
    RUN_TIME.labels(_outcome)
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)
for _metric in QUALITY_METRICS:
    QUALITY.labels(_metric)

_started_on: int | None = None
_lock = threading.Lock()


def start_exporter(port: int) -> bool:
    """Serve the default registry on ``port`` (once per process; 0 = off)."""
    global _started_on
    with _lock:
        if port <= 0 or _started_on is not None:
            return False
        start_http_server(port, registry=exporter_registry())
        _started_on = port
    log.info("worker metrics on :%d/metrics", port)
    return True


def exporter_registry() -> CollectorRegistry:
    """This process's metrics, or, with ``PROMETHEUS_MULTIPROC_DIR`` set (a worker whose pool
    runs several processes), the sum over every process that wrote into that folder."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry
