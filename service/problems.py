"""Errors as ``application/problem+json`` (RFC 9457), each with a detail a person can act on."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("midiffusion.service")


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document.

    ``code`` is a stable machine-readable slug (it also forms the ``type`` URI); ``detail`` says
    what was wrong and what is accepted; ``extra`` adds members (for example ``accepted``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for this path. Starlette's own 405 names only
    the first matching route's, though GET and DELETE /jobs/{id} are two routes."""
    allowed: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            allowed.update(m.upper() for m in operations)
    return sorted(allowed)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(
            422, "invalid-request", _describe_validation(exc), instance=request.url.path
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            detail = f"{request.method} is not allowed on {request.url.path}"
            if allowed:
                detail += f"; allowed: {', '.join(allowed)}"
                headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return problem_response(
            exc.status_code,
            HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-"),
            detail,
            instance=request.url.path,
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            # Redis restarting: the job records are safe on its disk; the caller retries
            log.warning("the job store is unreachable on %s %s", request.method, request.url.path)
            return problem_response(
                503,
                "job-store-unavailable",
                "the job store cannot be reached just now; nothing was changed, try again later",
                instance=request.url.path,
                headers={"Retry-After": "5"},
            )
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            "internal-error",
            "the server failed while handling this request; it has been logged",
            instance=request.url.path,
        )
