"""DICOM through the service, end to end: the real gateway (``create_app``), real Redis, a real
``celery -A worker.app worker`` process and the tiny model. A generated, shuffled, oblique MR
series goes in as `file` parts, as one zip and through STOW-RS; the derived series comes back as
a zip and as DICOMweb multipart, and its tags are checked slice by slice. Refusals are 422
problem documents, and the patient's name and ID appear in no log, metric or message."""

from __future__ import annotations

import gzip
import io
import logging
import zipfile
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import redis
from dicom_support import (
    PATIENT_BIRTH,
    PATIENT_ID,
    PATIENT_NAME,
    check_derived,
    make_series,
    oblique,
)
from fastapi.testclient import TestClient
from test_service_support import (
    AUTH,
    OTHER_KEY,
    WorkerProcess,
    gateway_settings,
    redis_db,
    wait_for,
    worker_env,
)

from jobs.dicom_intake import plan_upload
from service.app import create_app

pytestmark = pytest.mark.slow
SECRETS = (PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_NAME.split("^")[0], PATIENT_ID)


class Service:
    def __init__(self, client: TestClient, worker: WorkerProcess, storage: Path) -> None:
        self.client = client
        self.worker = worker
        self.storage = storage

    def wait(self, job_id: str) -> dict:
        def finished() -> dict | None:
            job = self.client.get(f"/jobs/{job_id}", headers=AUTH).json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(finished, timeout=180, interval=0.2, what=f"job {job_id}")

    def result_zip(self, job_id: str) -> list[pydicom.Dataset]:
        response = self.client.get(f"/jobs/{job_id}/result", headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            names = archive.namelist()
            assert all(n.endswith(".dcm") for n in names)
            return [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in names]


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_store):
    url = redis_db(redis_url, 9)
    redis.Redis.from_url(url).flushdb()
    storage = tmp_path_factory.mktemp("dicom-service") / "storage"
    settings = gateway_settings(storage, tiny_model_store.root, url)
    worker = WorkerProcess(worker_env(url, storage, tiny_model_store.root), "dicom")
    try:
        with TestClient(create_app(settings)) as client:
            yield Service(client, worker, storage)
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def series():
    return make_series(slices=12, size=(128, 128), orientation=oblique(22), slice_spacing=3.5)


def _no_patient_data(text: str) -> None:
    for secret in (*SECRETS, PATIENT_BIRTH):
        assert secret not in text


def test_twelve_file_parts_come_back_as_a_derived_series(service: Service, series, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    files = [("file", (f"{PATIENT_NAME}_{n}.dcm", blob)) for n, blob in enumerate(series.instances)]
    response = service.client.post("/translate", files=files, data={"steps": "2"}, headers=AUTH)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["output_format"] == "dicom"
    assert job["input"]["kind"] == "dicom" and job["input"]["instances"] == 12
    assert job["input"]["study_instance_uid"] == series.study_uid
    assert job["input"]["shape"] == [128, 128, 12]
    assert job["input"]["filename"] == "dicom-series.zip"  # never the client's file names
    done = service.wait(job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["content_type"] == "application/zip"
    check_derived(series, service.result_zip(job["id"]), "tiny", 1)

    # the same series as DICOMweb multipart
    accept = 'multipart/related; type="application/dicom"'
    response = service.client.get(f"/jobs/{job['id']}/result", headers={**AUTH, "Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    raw = b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(raw + response.content)
    parts = [p for p in message.iter_parts()]
    assert {p.get_content_type() for p in parts} == {"application/dicom"}
    datasets = [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in parts]
    check_derived(series, datasets, "tiny", 1)

    # the study lists the job; another caller sees nothing of it
    listed = service.client.get(f"/jobs?study={series.study_uid}", headers=AUTH).json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]
    other = service.client.get(f"/jobs?study={series.study_uid}", headers={"X-API-Key": OTHER_KEY})
    assert other.status_code == 200 and other.json()["jobs"] == []

    # no patient data in the gateway's or the worker's log, nor in /metrics
    _no_patient_data(caplog.text)
    _no_patient_data(service.worker.log())
    _no_patient_data(service.client.get("/metrics").text)
    _no_patient_data(service.client.get(f"/jobs/{job['id']}", headers=AUTH).text)


def test_one_zip_comes_back_as_a_derived_series_or_as_nifti(service: Service, series) -> None:
    upload = {"file": ("study.zip", series.zip_bytes(), "application/zip")}
    response = service.client.post("/translate", files=upload, data={"steps": "2"}, headers=AUTH)
    assert response.status_code == 202, response.text
    nifti_job = service.client.post(
        "/translate",
        files=upload,
        data={"steps": "2", "output_format": "nifti"},
        headers=AUTH,
    )
    assert nifti_job.status_code == 202, nifti_job.text
    done = service.wait(response.json()["id"])
    assert done["state"] == "succeeded", done["error"]
    check_derived(series, service.result_zip(done["id"]), "tiny", 1)

    done = service.wait(nifti_job.json()["id"])
    assert done["state"] == "succeeded", done["error"]
    accept = {**AUTH, "Accept": 'multipart/related; type="application/dicom"'}
    refused = service.client.get(f"/jobs/{done['id']}/result", headers=accept)
    assert refused.status_code == 406 and "output_format=dicom" in refused.json()["detail"]
    result = service.client.get(f"/jobs/{done['id']}/result", headers=AUTH)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(result.content))
    expected = plan_upload(series.instances).affine_ras()
    assert image.shape == (128, 128, 12)
    np.testing.assert_allclose(image.affine, expected, atol=1e-4)


def _problem(response) -> dict:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    _no_patient_data(response.text)
    return response.json()


def test_refusals_are_problem_documents(service: Service) -> None:
    a, b = make_series(slices=3, size=(32, 32), seed=1), make_series(slices=3, size=(32, 32))
    files = [("file", ("x.dcm", blob)) for blob in a.instances + b.instances]
    body = _problem(service.client.post("/translate", files=files, headers=AUTH))
    assert body["code"] == "invalid-dicom" and "2 studies" in body["detail"]
    assert "accepted" in body

    s = make_series(slices=6, size=(32, 32), shuffle=False)
    files = [("file", ("x.dcm", blob)) for blob in s.instances[:2] + s.instances[3:]]
    body = _problem(service.client.post("/translate", files=files, headers=AUTH))
    assert "not evenly spaced" in body["detail"]

    three = [("file", ("x.dcm", blob)) for blob in s.instances[:3]]
    body = _problem(
        service.client.post("/translate", files=three, data={"output_format": "png"}, headers=AUTH)
    )
    assert "output_format=png is only for a single slice" in body["detail"]

    nifti_as_dicom = service.client.post(
        "/translate",
        files={"file": ("x.zip", b"PK\x03\x04 not really a zip")},
        headers=AUTH,
    )
    assert _problem(nifti_as_dicom)["code"] == "invalid-dicom"


def _stow_body(blobs: list[bytes], boundary: str = "stow-boundary") -> tuple[bytes, str]:
    chunks = []
    for blob in blobs:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(blob + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_rs_makes_one_job_per_series(service: Service) -> None:
    first = make_series(slices=4, size=(48, 48), seed=3)
    second = make_series(slices=5, size=(48, 48), study_uid=first.study_uid, seed=4)
    body, content_type = _stow_body(first.instances + second.instances)
    response = service.client.post(
        "/dicomweb/studies?steps=2&preset=fast",
        content=body,
        headers={**AUTH, "Content-Type": content_type},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    referenced = response.json()["00081199"]["Value"]
    assert {r["00081155"]["Value"][0] for r in referenced} == set(first.sop_uids + second.sop_uids)
    jobs = {r["00081190"]["Value"][0].rsplit("/", 1)[1] for r in referenced}
    assert len(jobs) == 2
    listed = service.client.get(f"/jobs?study={first.study_uid}", headers=AUTH).json()["jobs"]
    assert jobs <= {j["id"] for j in listed}
    for job_id in jobs:
        done = service.wait(job_id)
        assert done["state"] == "succeeded", done["error"]
        assert done["params"]["preset"] == "fast"
    results = [service.result_zip(job_id) for job_id in jobs]
    assert sorted(len(r) for r in results) == [4, 5]

    # one good series and one that is not an image: 202, the failures listed
    broken = make_series(slices=3, size=(32, 32), seed=6)
    body, content_type = _stow_body([*broken.instances, b"\0" * 300])
    response = service.client.post(
        "/dicomweb/studies", content=body, headers={**AUTH, "Content-Type": content_type}
    )
    assert response.status_code == 202, response.text
    answer = response.json()
    assert len(answer["00081199"]["Value"]) == 3 and len(answer["00081198"]["Value"]) == 1
    assert answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    # it runs to the end here, so that later tests see a storage at rest
    taken = answer["00081199"]["Value"][0]["00081190"]["Value"][0].rsplit("/", 1)[1]
    assert service.wait(taken)["state"] == "succeeded"

    # nothing stored: 409; the wrong media type: 415
    s = make_series(slices=6, size=(32, 32), shuffle=False, seed=7)
    body, content_type = _stow_body(s.instances[:2] + s.instances[3:])
    response = service.client.post(
        "/dicomweb/studies", content=body, headers={**AUTH, "Content-Type": content_type}
    )
    assert response.status_code == 409
    assert "not evenly spaced" in response.json()["00000902"]["Value"][0]
    wrong = service.client.post(
        "/dicomweb/studies", content=b"x", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert wrong.status_code == 415


def test_stow_rs_refuses_a_preset_the_model_does_not_offer(service: Service) -> None:
    s = make_series(slices=3, size=(32, 32), seed=9)
    body, content_type = _stow_body(s.instances)
    before = sorted(p.name for p in service.storage.rglob("*") if p.is_file())
    response = service.client.post(
        "/dicomweb/studies?preset=turbo",
        content=body,
        headers={**AUTH, "Content-Type": content_type},
    )
    assert response.status_code == 422, response.text
    assert "accepted: default, fast" in response.json()["detail"]
    assert sorted(p.name for p in service.storage.rglob("*") if p.is_file()) == before


def test_a_malformed_stow_body_is_refused_and_leaves_nothing(service: Service) -> None:
    """The STOW-RS body goes through the same part streaming as the form upload: a body cut off
    inside a part is a 422 in the project's words (not the parser's), with nothing stored."""
    s = make_series(slices=3, size=(32, 32), seed=8)
    body, content_type = _stow_body(s.instances)
    before = sorted(p.name for p in service.storage.rglob("*") if p.is_file())
    response = service.client.post(
        "/dicomweb/studies",
        content=body[: len(body) // 2].replace(b"--", b"-x"),
        headers={**AUTH, "Content-Type": content_type},
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("invalid-multipart")
    assert "multipart/related" in problem["detail"] and "Error" not in problem["detail"]
    assert sorted(p.name for p in service.storage.rglob("*") if p.is_file()) == before
