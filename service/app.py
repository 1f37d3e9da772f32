"""``create_app``: the FastAPI gateway. It never imports torch and never waits on Celery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

from celery import Celery
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from jobs import JobStore, open_job_store
from jobs.queue import create_celery_app
from jobs.storage import LocalStorage
from service.audit import open_audit_file
from service.auth import ApiKeyAuth
from service.cleanup import cleanup_expired
from service.context import GatewayContext, ModelCatalog
from service.metrics import RequestMetricsMiddleware
from service.openapi_doc import complete_openapi
from service.problems import install_problem_handlers
from service.queueing import requeue_unsent
from service.routers import dicomweb, health, jobs, metrics, models, translate
from service.settings import GatewaySettings

log = logging.getLogger("midiffusion.service")


async def _every(interval_s: int, what: str, sweep: Callable[[], object]) -> None:
    while True:
        try:
            await run_in_threadpool(sweep)
        except Exception:  # a failed sweep is retried on the next tick
            log.exception("%s failed", what)
        await asyncio.sleep(interval_s)


def _requeue_at_start(ctx: GatewayContext) -> None:
    if not ctx.settings.redis_url:
        # The embedded mode's queue lived in the memory of the process that stopped: every
        # unfinished job's task went with it (a running one counts as a redelivery).
        ctx.jobs.mark_unfinished_unsent()
        requeue_unsent(ctx.celery, ctx.jobs, created_before=math.inf)


def create_app(
    settings: GatewaySettings | None = None,
    *,
    celery_app: Celery | None = None,
    job_store: JobStore | None = None,
) -> FastAPI:
    """Build the gateway. Raises ``AuthConfigError`` when no API key is configured and
    ``MIDIFF_AUTH_DISABLED`` is not set: the server refuses to start open by accident."""
    settings = settings or GatewaySettings()
    if settings.audit_log is not None:
        open_audit_file(settings.audit_log)
    auth = ApiKeyAuth(settings.api_key_list(), disabled=settings.auth_disabled)
    if celery_app is None:
        celery_app = create_celery_app(settings)
    ctx = GatewayContext(
        settings=settings,
        jobs=job_store
        or open_job_store(settings.redis_url, settings.storage_dir, settings.job_retention_s),
        storage=LocalStorage(settings.storage_dir),
        celery=celery_app,
        models=ModelCatalog(settings.model_dir),
        auth=auth,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(_requeue_at_start, ctx)
        tasks = []
        if settings.cleanup_interval_s > 0:
            sweep = partial(cleanup_expired, ctx.jobs, ctx.storage)
            tasks.append(_every(settings.cleanup_interval_s, "cleanup", sweep))
        if settings.requeue_interval_s > 0:
            # a job is requeued once it has gone a whole interval unsent
            def requeue() -> object:
                cutoff = time.time() - settings.requeue_interval_s
                return requeue_unsent(ctx.celery, ctx.jobs, created_before=cutoff)

            tasks.append(_every(settings.requeue_interval_s, "requeue", requeue))
        running = [asyncio.create_task(t) for t in tasks]
        try:
            yield
        finally:
            for task in running:
                task.cancel()
            for task in running:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="MIDiffusion translation service",
        summary="Zero-shot cross-modality medical image translation",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.add_middleware(RequestMetricsMiddleware)
    install_problem_handlers(app)
    complete_openapi(app)
    for module in (translate, jobs, models, health, metrics, dicomweb):
        app.include_router(module.router)
    return app
