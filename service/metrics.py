"""Gateway metrics (prometheus-client) and the middleware that counts requests."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "midiff_http_requests_total",
    "HTTP requests, by route and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "midiff_http_request_duration_seconds",
    "HTTP request duration, by route",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOAD_BYTES = Counter("midiff_upload_bytes_total", "Bytes of accepted uploads")
UPLOAD_SIZE = Histogram(
    "midiff_upload_size_bytes",
    "Size of accepted uploads",
    buckets=tuple(2**n for n in range(16, 31)),  # 64 KiB .. 1 GiB
)
JOBS_SUBMITTED = Counter("midiff_jobs_submitted_total", "Jobs queued, by model", ["model"])
SUBMISSIONS_REJECTED = Counter(
    "midiff_submissions_rejected_total", "Refused submissions, by problem code", ["code"]
)
# Every gateway process reads the same store, so across processes the latest value is right.
JOBS_BY_STATE = Gauge(
    "midiff_jobs",
    "Job records, by state (read from the job store at scrape time)",
    ["state"],
    multiprocess_mode="mostrecent",
)


class RequestMetricsMiddleware:
    """Pure ASGI (no per-request task or body copy): labels use the route template, never the
    raw path, so job ids do not explode the label space."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(method, label, str(status[0])).inc()
            HTTP_LATENCY.labels(method, label).observe(time.perf_counter() - started)


# Read from the broker (a Redis list) at scrape time; every gateway sees the same queue.
QUEUE_DEPTH = Gauge(
    "midiff_queue_depth",
    "Tasks waiting in the queue, not yet taken by a worker (read from the broker at scrape time)",
    multiprocess_mode="mostrecent",
)
