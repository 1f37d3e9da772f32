"""The OpenAPI document tells what the gateway really answers: problem+json errors on every
route, the API key on every route that needs one, and the result's binary content types.

FastAPI documents only the success response and its own JSON validation error; a client (or a
contract test such as schemathesis) reading that would expect neither a 401 nor a 413, and a
JSON body where a NIfTI comes back. This fills in what the routes leave out, and keeps whatever
a route documents itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.problems import PROBLEM_JSON

# Routes that answer without a key (probes, scrapers, the docs themselves).
PUBLIC_PREFIXES = ("/health/", "/metrics", "/docs", "/redoc", "/openapi.json")

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
RESULT_TYPES = ("application/gzip", "image/png")


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}}


def _only_json(response: dict[str, Any]) -> bool:
    return list(response.get("content", {"application/json": {}})) == ["application/json"]


def complete_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the completed document (built once, then cached)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
        components.setdefault("securitySchemes", {})["ApiKey"] = {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
        }
        for path, operations in doc.get("paths", {}).items():
            for method, op in operations.items():
                _complete(path, method, op)
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]


def _complete(path: str, method: str, op: dict[str, Any]) -> None:
    responses = op.setdefault("responses", {})
    if "422" in responses and _only_json(responses["422"]):
        responses["422"] = _problem("the request is not valid; the detail says what and why")
    responses.setdefault("default", _problem("an error, as application/problem+json"))
    if not path.startswith(PUBLIC_PREFIXES):
        op["security"] = [{"ApiKey": []}]
        responses.setdefault("401", _problem("the X-API-Key header is missing or not valid"))
    if path == "/jobs/{job_id}/result" and method == "get" and _only_json(responses["200"]):
        responses["200"] = {
            "description": "the output file",
            "content": dict.fromkeys(RESULT_TYPES, _BINARY),
        }
    if path == "/jobs/{job_id}" and method == "delete" and "202" not in responses:
        responses["202"] = {**responses["200"], "description": "the job stops at its next step"}
    if path == "/metrics" and _only_json(responses.get("200", {})):
        responses["200"] = {
            "description": "Prometheus text exposition",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    if path == "/translate" and method == "post":
        for status, what in (
            ("413", "the upload is over MIDIFF_MAX_UPLOAD_MB"),
            ("415", "the body is not multipart/form-data"),
            ("429", "this key has MIDIFF_MAX_QUEUED_PER_KEY jobs queued already"),
            ("503", "the queue cannot be reached; nothing was queued"),
            ("507", "the storage is full; nothing was kept"),
        ):
            responses.setdefault(status, _problem(what))
