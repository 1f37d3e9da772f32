"""The gateway against a real Redis and a real Celery app (no worker: jobs stay queued here).

What a PACS integration sees: 202 + Location, job JSON, problem+json errors (401, 404, 413, 422),
idempotency, cancelling a queued job, and what lands in storage and on the queue.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from test_service_support import (
    API_KEY,
    AUTH,
    OTHER_KEY,
    REPO,
    files_under,
    gateway_settings,
    iter_partials,
    redis_db,
    with_sform,
    write_nifti,
)

from jobs.queue import QUEUE
from service.app import create_app
from service.auth import AuthConfigError
from service.settings import GatewaySettings

PROBLEM = "application/problem+json"


@dataclass
class Gateway:
    client: TestClient
    settings: GatewaySettings
    redis: redis.Redis
    storage: Path
    sample: Path  # a valid 3D NIfTI (.nii.gz)

    def submit(self, path: Path | None = None, headers: dict | None = None, **fields):
        path = path or self.sample
        with open(path, "rb") as fh:
            return self.client.post(
                "/translate",
                files={"file": (path.name, fh, "application/octet-stream")},
                data={k: str(v) for k, v in fields.items()},
                headers={**AUTH, **(headers or {})},
            )

    def queued_messages(self) -> list[dict]:
        return [json.loads(m) for m in self.redis.lrange(QUEUE, 0, -1)]


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path, tiny_model_store) -> Iterator[Gateway]:
    url = redis_db(redis_url, 6)
    client = redis.Redis.from_url(url)
    client.flushdb()
    settings = gateway_settings(tmp_path / "storage", tiny_model_store.root, url, max_upload_mb=1)
    sample = write_nifti(tmp_path / "scan.nii.gz", (32, 32, 3))
    with TestClient(create_app(settings)) as test_client:
        yield Gateway(test_client, settings, client, tmp_path / "storage", sample)
    client.close()


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["detail"] and body["title"]
    return body


def test_submit_answers_202_with_location_and_the_job(gateway: Gateway) -> None:
    response = gateway.submit(steps=7, seed=11)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert int(response.headers["retry-after"]) >= 1
    assert job["state"] == "queued" and job["attempts"] == 0
    assert job["model"] == {"name": "tiny", "version": 1}
    assert job["params"] == {
        "preset": None,
        "steps": 7,
        "seed": 11,
        "anatomy": None,
        "output_format": "nifti",
    }
    assert job["input"]["shape"] == [32, 32, 3]
    assert job["input"]["filename"] == "scan.nii.gz"
    assert job["progress"]["step"] == 0 and job["error"] is None and job["result"] is None


def test_what_the_input_shows_is_kept_with_the_job(gateway: Gateway) -> None:
    job = gateway.submit(anatomy="head").json()
    polled = gateway.client.get(f"/jobs/{job['id']}", headers=AUTH).json()
    assert job["params"]["anatomy"] == polled["params"]["anatomy"] == "head"

    polled = gateway.client.get(f"/jobs/{job['id']}", headers=AUTH)
    assert polled.status_code == 200
    assert polled.headers["retry-after"]
    same_fields = ("id", "state", "model", "params", "input", "attempts", "progress")
    assert {k: polled.json()[k] for k in same_fields} == {k: job[k] for k in same_fields}

    # The upload sits under a server-made key; the task carries the job id, not the image.
    assert files_under(gateway.storage / "in") == [f"{job['id']}.nii.gz"]
    (message,) = gateway.queued_messages()
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [job["id"]] and kwargs == {}
    assert message["headers"]["id"] == job["id"]
    assert len(json.dumps(message)) < 4096


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/jobs/0123456789abcdef0123456789abcdef"), ("get", "/models"), ("delete", "/jobs/x")],
)
def test_missing_or_wrong_api_key_is_401(gateway: Gateway, method: str, path: str) -> None:
    missing = getattr(gateway.client, method)(path)
    assert_problem(missing, 401, "missing-api-key")
    wrong = getattr(gateway.client, method)(path, headers={"X-API-Key": API_KEY + "x"})
    assert_problem(wrong, 401, "invalid-api-key")


def test_submit_without_key_is_401_and_stores_nothing(gateway: Gateway) -> None:
    response = gateway.submit(headers={"X-API-Key": "nope"})
    assert_problem(response, 401, "invalid-api-key")
    assert files_under(gateway.storage) == []
    assert gateway.queued_messages() == []


def test_health_and_metrics_need_no_key(gateway: Gateway) -> None:
    assert gateway.client.get("/health/live").json() == {"status": "ok"}
    ready = gateway.client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "broker": "ok",
        "job_store": "ok",
        "model_store": "ok",
        "storage": "ok",
    }
    assert gateway.client.get("/metrics").status_code == 200


def test_refuses_to_start_without_keys(tmp_path: Path, tiny_model_store) -> None:
    settings = gateway_settings(tmp_path, tiny_model_store.root, None, api_keys=SecretStr(""))
    with pytest.raises(AuthConfigError, match="MIDIFF_API_KEYS"):
        create_app(settings)


def test_auth_disabled_warns_and_accepts_anyone(
    tmp_path: Path, tiny_model_store, caplog: pytest.LogCaptureFixture
) -> None:
    settings = gateway_settings(
        tmp_path, tiny_model_store.root, None, api_keys=SecretStr(""), auth_disabled=True
    )
    with caplog.at_level(logging.WARNING, logger="midiffusion.service"):
        app = create_app(settings)
    assert "AUTHENTICATION IS DISABLED" in caplog.text
    with TestClient(app) as client:
        assert client.get("/models").status_code == 200


def test_api_keys_never_reach_the_logs(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        gateway.submit()
        gateway.client.get("/models", headers={"X-API-Key": "wrong-key-123"})
    assert API_KEY not in caplog.text and "wrong-key-123" not in caplog.text
    assert API_KEY not in repr(gateway.settings) and OTHER_KEY not in repr(gateway.settings)


def test_oversized_upload_is_413_and_leaves_nothing(gateway: Gateway, tmp_path: Path) -> None:
    big = write_nifti(tmp_path / "big.nii", (128, 128, 20))  # 1.3 MB > the 1 MiB cap
    declared = gateway.submit(big)  # Content-Length known: refused before reading
    body = assert_problem(declared, 413, "upload-too-large")
    assert body["limit_bytes"] == 1024 * 1024

    # Chunked (no Content-Length): the cap is enforced while the bytes stream in.
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.nii"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    payload = big.read_bytes()

    def chunks() -> Iterator[bytes]:
        yield head
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]
        yield f"\r\n--{boundary}--\r\n".encode()

    streamed = gateway.client.post(
        "/translate",
        content=chunks(),
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_problem(streamed, 413, "upload-too-large")
    assert files_under(gateway.storage) == []
    assert gateway.queued_messages() == []


def test_not_a_nifti_is_422_with_what_is_accepted(gateway: Gateway, tmp_path: Path) -> None:
    fake = tmp_path / "notes.nii"
    fake.write_bytes(b"patient notes, not an image\n" * 30)
    body = assert_problem(gateway.submit(fake), 422, "invalid-nifti")
    assert "not a readable NIfTI" in body["detail"] and "NIfTI-1 or NIfTI-2" in body["accepted"]
    assert files_under(gateway.storage) == []
    assert gateway.queued_messages() == []


def test_truncated_nifti_is_422(gateway: Gateway, tmp_path: Path) -> None:
    whole = write_nifti(tmp_path / "whole.nii", (32, 32, 4)).read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(whole[:-500])
    body = assert_problem(gateway.submit(cut), 422, "invalid-nifti")
    assert "truncated" in body["detail"]


@pytest.mark.parametrize(
    ("data", "sform", "needle"),
    [
        (np.full((64, 64, 3), 5.0, np.float32), np.eye(4), "constant (every voxel is 5)"),
        (None, np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "degenerate"),
    ],
    ids=["constant", "singular affine"],
)
def test_constant_images_and_degenerate_affines_are_422(
    gateway: Gateway, tmp_path: Path, data, sform, needle
) -> None:
    data = np.random.default_rng(0).random((64, 64, 3), np.float32) if data is None else data
    for name in ("bad.nii", "bad.nii.gz"):
        with_sform(data, sform, tmp_path / name)
        body = assert_problem(gateway.submit(tmp_path / name), 422, "invalid-nifti")
        assert needle in body["detail"]
    assert files_under(gateway.storage) == []
    assert gateway.queued_messages() == []


@pytest.mark.parametrize(
    ("fields", "code", "needle"),
    [
        ({"steps": "many"}, "invalid-parameters", "steps"),
        ({"steps": "0"}, "invalid-parameters", "steps"),
        ({"steps": "100000"}, "invalid-parameters", "above the limit"),
        ({"output_format": "jpeg"}, "invalid-parameters", "nifti or png"),
        ({"output_format": "png"}, "invalid-nifti", "only for 2D"),
        ({"preset": "turbo"}, "invalid-parameters", "accepted: default, fast"),
        ({"anatomy": "skull"}, "invalid-parameters", "anatomy = brain or head"),
        ({"model": "nope"}, "unknown-model", "tiny:1"),
        ({"model": "tiny:9"}, "unknown-model", "tiny:1"),
        ({"colour": "blue"}, "invalid-form", "unknown form field `colour`"),
    ],
)
def test_bad_fields_are_422(gateway: Gateway, fields: dict, code: str, needle: str) -> None:
    body = assert_problem(gateway.submit(**fields), 422, code)
    assert needle in body["detail"]
    assert files_under(gateway.storage) == []


def test_missing_file_and_wrong_content_type(gateway: Gateway) -> None:
    no_file = gateway.client.post("/translate", data={"steps": "3"}, headers=AUTH)
    # An all-text form is sent url-encoded by httpx: refused with how to send it.
    assert no_file.status_code in (415, 422)
    json_body = gateway.client.post("/translate", json={"file": "x"}, headers=AUTH)
    assert_problem(json_body, 415, "unsupported-media-type")
    boundary = uuid.uuid4().hex
    only_fields = gateway.client.post(
        "/translate",
        content=(
            f'--{boundary}\r\nContent-Disposition: form-data; name="steps"\r\n\r\n3\r\n'
            f"--{boundary}--\r\n"
        ).encode(),
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "field `file`" in assert_problem(only_fields, 422, "invalid-form")["detail"]


def test_unknown_job_is_404(gateway: Gateway) -> None:
    for path in ("/jobs/0123456789abcdef0123456789abcdef", "/jobs/../etc", "/jobs/nothex"):
        response = gateway.client.get(path, headers=AUTH)
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM
    body = assert_problem(
        gateway.client.get(f"/jobs/{uuid.uuid4().hex}/result", headers=AUTH), 404, "job-not-found"
    )
    assert "no job" in body["detail"]


def test_a_job_is_visible_only_to_its_own_key(gateway: Gateway) -> None:
    job_id = gateway.submit().json()["id"]
    other = {"X-API-Key": OTHER_KEY}
    assert_problem(gateway.client.get(f"/jobs/{job_id}", headers=other), 404, "job-not-found")
    assert_problem(gateway.client.delete(f"/jobs/{job_id}", headers=other), 404, "job-not-found")
    assert gateway.client.get(f"/jobs/{job_id}", headers=AUTH).json()["state"] == "queued"


def test_idempotency_key_same_body_same_job_other_body_422(
    gateway: Gateway, tmp_path: Path
) -> None:
    key = {"Idempotency-Key": "order-1234"}
    first = gateway.submit(headers=key, steps=5)
    again = gateway.submit(headers=key, steps=5)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(gateway.queued_messages()) == 1  # enqueued once
    assert files_under(gateway.storage / "in") == [f"{first.json()['id']}.nii.gz"]

    other_fields = gateway.submit(headers=key, steps=6)
    assert (
        "different request body"
        in assert_problem(other_fields, 422, "idempotency-key-reused")["detail"]
    )
    other_file = write_nifti(tmp_path / "scan.nii.gz", (32, 32, 4))  # same name, other bytes
    assert_problem(gateway.submit(other_file, headers=key, steps=5), 422, "idempotency-key-reused")

    # Keys are per API key: another client using the same key string gets its own job.
    with open(gateway.sample, "rb") as fh:
        theirs = gateway.client.post(
            "/translate",
            files={"file": ("scan.nii.gz", fh)},
            data={"steps": "5"},
            headers={"X-API-Key": OTHER_KEY, **key},
        )
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    assert_problem(
        gateway.submit(headers={"Idempotency-Key": "has space"}), 422, "invalid-idempotency-key"
    )


def test_cancel_a_queued_job(gateway: Gateway) -> None:
    job_id = gateway.submit().json()["id"]
    result = gateway.client.get(f"/jobs/{job_id}/result", headers=AUTH)
    assert assert_problem(result, 409, "result-not-ready")["state"] == "queued"

    cancelled = gateway.client.delete(f"/jobs/{job_id}", headers=AUTH)
    assert cancelled.status_code == 200
    job = cancelled.json()
    assert job["state"] == "cancelled" and job["timings"]["finished_at"] is not None
    assert job["timings"]["started_at"] is None and job["attempts"] == 0
    assert gateway.client.get(f"/jobs/{job_id}", headers=AUTH).json()["state"] == "cancelled"
    assert gateway.client.delete(f"/jobs/{job_id}", headers=AUTH).status_code == 200
    late = gateway.client.get(f"/jobs/{job_id}/result", headers=AUTH)
    assert assert_problem(late, 409, "result-not-ready")["state"] == "cancelled"


def test_models_lists_the_store(gateway: Gateway) -> None:
    body = gateway.client.get("/models", headers=AUTH).json()
    assert body["default"] == "tiny"
    assert [(m["name"], m["version"]) for m in body["models"]] == [("tiny", 1)]
    assert body["models"][0]["grid_size"] > 0


def _metric(text: str, name: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


def test_metrics_count_jobs_by_state_and_upload_bytes(gateway: Gateway) -> None:
    before = _metric(gateway.client.get("/metrics").text, "midiff_upload_bytes_total")
    ids = [gateway.submit().json()["id"] for _ in range(2)]
    gateway.client.delete(f"/jobs/{ids[0]}", headers=AUTH)
    text = gateway.client.get("/metrics").text
    assert 'midiff_jobs{state="queued"} 1.0' in text
    assert 'midiff_jobs{state="cancelled"} 1.0' in text
    uploaded = _metric(text, "midiff_upload_bytes_total") - before
    assert uploaded == 2 * gateway.sample.stat().st_size
    assert 'route="/jobs/{job_id}"' in text  # route templates, not raw paths with job ids
    assert ids[0] not in text


def test_ready_is_503_when_the_broker_is_down(tmp_path: Path, tiny_model_store) -> None:
    settings = gateway_settings(tmp_path, tiny_model_store.root, "redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        response = client.get("/health/ready")
    body = assert_problem(response, 503, "not-ready")
    assert body["checks"]["broker"].startswith("broker unreachable")
    assert body["checks"]["model_store"] == "ok"


def test_no_partial_files_after_many_requests(gateway: Gateway, tmp_path: Path) -> None:
    fake = tmp_path / "x.nii"
    fake.write_bytes(b"junk" * 100)
    for _ in range(3):
        gateway.submit()
        gateway.submit(fake)
    assert list(iter_partials(gateway.storage)) == []


def test_gateway_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from service.app import create_app\n"
        "from midiffusion.cli.serve import configure\n"
        "import service.cleanup, worker, worker.app, worker.tasks\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "False"


def test_a_bare_model_name_is_the_stores_serving_version(tiny_model_store, tmp_path) -> None:
    """The gateway resolves `tiny` as the store does: its default alias, not the highest."""
    from model_store import ModelStore
    from service.context import ModelCatalog

    store = ModelStore(tmp_path / "s")
    v = tiny_model_store.verified("tiny")
    card = v.card.model_dump(exclude={"version", "sha256"})
    store.publish(card, v.weights_path)
    store.publish(card, v.weights_path)
    assert ModelCatalog(store.root, ttl_s=0).resolve("tiny").version == 2  # no alias: latest
    store.set_default("tiny", 1)
    catalog = ModelCatalog(store.root, ttl_s=0)
    assert catalog.resolve(None).version == 1
    assert catalog.resolve("tiny").version == 1
    assert catalog.resolve("tiny:2").version == 2
