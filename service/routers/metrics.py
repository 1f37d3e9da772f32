"""``GET /metrics`` in the Prometheus text format (no API key: Prometheus scrapes it)."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from service.context import Ctx
from service.metrics import JOBS_BY_STATE, QUEUE_DEPTH
from service.queueing import queue_depth

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
def prometheus_metrics(ctx: Ctx) -> Response:
    try:
        for state, count in ctx.jobs.count_by_state().items():
            JOBS_BY_STATE.labels(state.value).set(count)
    except Exception:  # the job store being down must not hide the other metrics
        pass
    try:
        QUEUE_DEPTH.set(queue_depth(ctx.celery))
    except Exception:  # nor the broker being down: the depth is then unknown
        QUEUE_DEPTH.set(float("nan"))
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several gateway processes (serve --workers N): add up what all of them recorded.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
