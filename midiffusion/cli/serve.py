"""``midiffusion serve``: the REST gateway, plus one embedded worker when no Redis is set.

With ``MIDIFF_REDIS_URL`` set the gateway only enqueues; run workers with
``celery -A worker.app worker``. Without it, one process holds the gateway and a ``solo`` Celery
worker thread on Celery's in-memory transport, with job records in SQLite under
``MIDIFF_STORAGE_DIR``: the same task code path, nothing faked.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

log = logging.getLogger("midiffusion.service")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes (with MIDIFF_REDIS_URL only; the embedded mode is one process)",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.auth import AuthConfigError
    from service.settings import GatewaySettings
    from worker.app import create_worker_app, start_embedded_worker
    from worker.settings import WorkerSettings

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = GatewaySettings()
    embedded = not settings.redis_url
    if embedded and args.workers != 1:
        print(
            "midiffusion serve: --workers needs MIDIFF_REDIS_URL; the embedded mode (no Redis) "
            "keeps its queue in memory and so runs as one process",
            file=sys.stderr,
        )
        return 2
    celery_app = create_worker_app(WorkerSettings()) if embedded else None
    try:
        app = create_app(settings, celery_app=celery_app)
    except AuthConfigError as exc:
        print(f"midiffusion serve: {exc}", file=sys.stderr)
        return 2
    worker = None
    if embedded:
        log.info(
            "embedded mode: gateway and one worker in this process, in-memory queue, "
            "job records in %s",
            settings.storage_dir / "jobs.sqlite3",
        )
        worker, thread = start_embedded_worker(celery_app, args.log_level)
        # /health/ready reports the embedded worker too: without it jobs would wait forever.
        app.state.ctx.extra_checks["embedded_worker"] = lambda: (
            None if thread.is_alive() else "the embedded worker thread has stopped; see the log"
        )
    else:
        log.info(
            "gateway only: jobs go to %s; start workers with `celery -A worker.app worker`",
            settings.redis_url,
        )
    multiproc_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Metrics from several processes: prometheus-client's multiprocess mode, set before
        # uvicorn starts the worker processes (they inherit the environment).
        multiproc_dir = tempfile.mkdtemp(prefix="midiff-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    try:
        if args.workers > 1:  # each process builds its own app from the same environment
            uvicorn.run(
                "service.app:create_app",
                factory=True,
                workers=args.workers,
                host=args.host,
                port=args.port,
                log_level=args.log_level.lower(),
            )
        else:
            uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    finally:
        if worker is not None:
            worker.stop(in_sighandler=False)
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
    return 0
