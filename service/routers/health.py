"""Liveness and readiness (no API key: probes and load balancers call these)."""

from __future__ import annotations

import logging
import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.context import Ctx, GatewayContext
from service.problems import PROBLEM_JSON

router = APIRouter(prefix="/health", tags=["health"])
log = logging.getLogger("midiffusion.service")


@router.get("/live", summary="The process answers")
def live() -> dict[str, str]:
    return {"status": "ok"}


def _broker_ok(ctx: GatewayContext) -> str | None:
    try:
        with ctx.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return None
    except Exception:
        # the probe needs no key: hosts, ports and exception texts go to the log only
        log.warning("readiness: the broker is unreachable", exc_info=True)
        return "broker unreachable (details in the gateway log)"


def _models_ok(ctx: GatewayContext) -> str | None:
    try:
        return None if ctx.models.cards() else "model store holds no models"
    except Exception:
        log.warning("readiness: the model store is unreadable", exc_info=True)
        return "model store unreadable (details in the gateway log)"


@router.get("/ready", summary="Broker reachable, job store answering, model store readable")
def ready(ctx: Ctx) -> JSONResponse:
    failures = {
        "broker": _broker_ok(ctx),
        "job_store": None if ctx.jobs.ping() else "job store does not answer",
        "model_store": _models_ok(ctx),
        "storage": None
        if os.access(ctx.storage.root, os.W_OK)
        else "storage is not writable (MIDIFF_STORAGE_DIR)",
    }
    failures.update({name: check() for name, check in ctx.extra_checks.items()})
    checks = {name: problem or "ok" for name, problem in failures.items()}
    if any(failures.values()):
        detail = "; ".join(p for p in failures.values() if p)
        body = {
            "type": "/problems/not-ready",
            "title": "Service Unavailable",
            "status": 503,
            "code": "not-ready",
            "detail": detail,
            "checks": checks,
        }
        return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON)
    return JSONResponse({"status": "ready", "checks": checks})
