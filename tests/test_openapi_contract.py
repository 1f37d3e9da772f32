"""The gateway against its own OpenAPI document, with schemathesis: generated requests to every
operation get no 5xx, and every response matches the document (status, content type, schema).
Every route outside ``/health``, ``/metrics`` and the docs refuses a request without a key.

Bounded: a fixed number of examples per operation, derandomised, so it runs in seconds.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import checks
from test_service_support import AUTH, gateway_settings

from service.app import create_app
from service.openapi_doc import PUBLIC_PREFIXES


def _gateway():  # type: ignore[no-untyped-def]
    """The embedded gateway (SQLite records, in-memory queue) with no worker: jobs stay queued,
    and nothing leaves the process. The shipped model store: only its cards are read. Built at
    import, as schemathesis needs the app to build its tests (its fixture loader does not work
    with this pytest)."""
    storage = Path(tempfile.mkdtemp(prefix="midiff-contract-")) / "storage"
    atexit.register(shutil.rmtree, storage.parent, ignore_errors=True)
    return create_app(gateway_settings(storage, None, None, max_upload_mb=1))


APP = _gateway()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module")
def app():  # type: ignore[no-untyped-def]
    return APP


@schema.parametrize()
@settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_operation_conforms_to_the_document(case) -> None:
    # A random file part is schema-valid but not a NIfTI or DICOM: refusing it (415, 422) is
    # right, so the check that schema-valid data must be accepted does not apply to uploads.
    uploads = ("/translate", "/dicomweb/studies")
    excluded = [checks.positive_data_acceptance] if case.path in uploads else []
    if case.path == "/jobs":  # unknown query parameters are ignored, as HTTP APIs commonly do
        excluded.append(checks.negative_data_rejection)
    case.call_and_validate(headers=AUTH, excluded_checks=excluded)


def test_every_route_that_needs_a_key_refuses_without_one(app) -> None:
    doc = app.openapi()
    client = TestClient(app)
    checked = 0
    for path, operations in doc["paths"].items():
        concrete = path.replace("{job_id}", "0" * 32)
        for method, op in operations.items():
            if path.startswith(PUBLIC_PREFIXES):
                assert "security" not in op
                continue
            assert op["security"] == [{"ApiKey": []}]
            for headers in ({}, {"X-API-Key": "not-a-key"}):
                response = client.request(method.upper(), concrete, headers=headers)
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.headers["www-authenticate"] == "ApiKey"
            checked += 1
    assert checked >= 5  # translate, job, result, cancel, models


def test_the_document_declares_the_result_binary_and_the_problems(app) -> None:
    doc = app.openapi()
    result = doc["paths"]["/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]
    assert "application/gzip" in result and "application/json" not in result
    translate = doc["paths"]["/translate"]["post"]["responses"]
    assert {"401", "413", "415", "429", "507", "default"} <= set(translate)
