"""``GET /metrics`` in the Prometheus text format (no API key: Prometheus scrapes it)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.context import Ctx
from service.metrics import JOBS_BY_STATE

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
def prometheus_metrics(ctx: Ctx) -> Response:
    try:
        for state, count in ctx.jobs.count_by_state().items():
            JOBS_BY_STATE.labels(state.value).set(count)
    except Exception:  # the job store being down must not hide the other metrics
        pass
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
