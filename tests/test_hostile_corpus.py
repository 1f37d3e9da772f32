"""The hostile corpus (``tests/hostile_corpus.py``) against a real ``midiffusion serve``.

Every case is refused cleanly: 4xx ``application/problem+json`` at once, or, for what only a
worker can judge, a job that ends ``failed`` with ``invalid_input``. No message names a server
path, shows a stack trace or an exception's name. Afterwards the service still translates, and
storage holds no temporary file and no input of a refused request.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import nibabel as nib
import numpy as np
import pytest
from hostile_corpus import HARMLESS, REFUSED, WORKER_REFUSED, HostileCase, build_corpus
from test_service_embedded import serving
from test_service_support import (
    AUTH,
    iter_partials,
    phantom,
    sample_affine,
    wait_for,
    write_nifti,
)

pytestmark = pytest.mark.slow
FINAL = ("succeeded", "failed", "cancelled")
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b|zlib\.error")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_store) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("hostile")
    audit = tmp / "audit.jsonl"
    env = {"MIDIFF_MAX_UPLOAD_MB": "4", "MIDIFF_AUDIT_LOG": str(audit)}
    with serving(tmp, tiny_model_store.root, **env) as running:
        yield {**running, "audit": audit}


def send(base: str, case: HostileCase) -> tuple[int, str, str]:
    """One request on a fresh connection, exactly as built (http.client adds nothing but a
    Content-Length the case does not set itself)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        headers = dict(case.headers)
        if case.body and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(case.body))
        conn.request(case.method, case.path, body=case.body or None, headers=headers)
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        return response.status, response.getheader("content-type") or "", body
    finally:
        conn.close()


def leaks(text: str, storage: Path) -> list[str]:
    """What in a user-facing text tells about the server: paths, traces, exception names."""
    found = [
        marker
        for marker in (
            str(storage),
            str(storage.parent),
            "var/midiffusion",
            ".part-",
            "jobs.sqlite3",
            "Traceback",
            'File "',
            "site-packages",
        )
        if marker in text
    ]
    found += [m.group(0) for m in EXCEPTION_NAME.finditer(text)]
    found += re.findall(r"\b(?:in|out)/[0-9a-f]{32}", text)
    return found


def test_every_hostile_case_is_refused_cleanly(server: dict) -> None:
    base, storage = server["base"], server["storage"]
    corpus = build_corpus()
    assert len(corpus) >= 80
    inputs_before = {p.name.split(".")[0] for p in (storage / "in").iterdir()}
    accepted: dict[str, HostileCase] = {}
    problems: list[str] = []
    for case in corpus:
        status, content_type, body = send(base, case)
        if leaks(body, storage):
            problems.append(f"{case.name}: {status} leaks {leaks(body, storage)}: {body[:300]}")
        if status == 202 and case.expect in (WORKER_REFUSED, HARMLESS):
            accepted[json.loads(body)["id"]] = case
            continue
        if not (400 <= status < 500 and content_type == "application/problem+json"):
            problems.append(f"{case.name}: {status} {content_type}: {body[:300]}")
            continue
        document = json.loads(body)
        if not (document.get("code") and document.get("detail")):
            problems.append(f"{case.name}: a problem without code or detail: {body[:300]}")
        assert case.expect in (REFUSED, WORKER_REFUSED, HARMLESS)

    # What the gateway let through, a worker judges: invalid_input, never internal_error.
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:

        def final(job_id: str) -> dict | None:
            job = client.get(f"/jobs/{job_id}").json()
            return job if job["state"] in FINAL else None

        for job_id, case in accepted.items():
            job = wait_for(lambda j=job_id: final(j), timeout=180, interval=0.2, what=case.name)
            message = json.dumps(job["error"])
            if leaks(message, storage):
                problems.append(f"{case.name}: job error leaks {leaks(message, storage)}")
            if case.expect == HARMLESS and job["state"] == "succeeded":
                continue
            if job["state"] != "failed" or job["error"]["code"] != "invalid_input":
                problems.append(f"{case.name}: job ended {job['state']} {job['error']}")
            elif not job["error"]["message"]:
                problems.append(f"{case.name}: invalid_input without a reason")

        # The service is still up and still translates.
        assert httpx.get(f"{base}/health/ready", timeout=10).status_code == 200
        source = write_nifti(server["tmp"] / "after.nii.gz", (32, 32, 2))
        with open(source, "rb") as fh:
            response = client.post(
                "/translate", files={"file": ("after.nii.gz", fh)}, data={"steps": "2"}
            )
        assert response.status_code == 202, response.text
        good = wait_for(lambda: final(response.json()["id"]), timeout=180, what="a good job")
        assert good["state"] == "succeeded", good["error"]
    assert server["proc"].poll() is None
    assert not problems, "\n".join(problems)

    # No temporary file, and no input except those of the jobs that were accepted.
    assert list(iter_partials(storage)) == []
    kept = {p.name.split(".")[0] for p in (storage / "in").iterdir()}
    assert kept - inputs_before <= set(accepted) | {good["id"]}
    assert "unhandled error" not in server["log"].read_text()  # no request ended in a 500


# A patient's name and record number, as a scanner's export might put them in a file name and
# in the NIfTI header's free-text fields.
PATIENT_NAME, PATIENT_ID = "Doe^Johanna", "MRN48151623"


def _identified(path: Path, data: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, sample_affine())
    img.header["descrip"] = f"{PATIENT_NAME} {PATIENT_ID}".encode()
    img.header["aux_file"] = PATIENT_ID.encode()
    img.header["intent_name"] = b"Johanna"
    nib.save(img, path)
    return path


def test_patient_data_stays_out_of_logs_metrics_and_errors(server: dict) -> None:
    tmp, base = server["tmp"], server["base"]
    stem = f"{PATIENT_NAME.replace('^', '_')}_{PATIENT_ID}"
    good = _identified(tmp / f"{stem}.nii.gz", phantom((32, 32, 3)))
    nan = phantom((32, 32, 3))
    nan[4, 4, 1] = np.nan
    bad = _identified(tmp / f"{stem}_nan.nii.gz", nan)
    flat = _identified(tmp / f"{stem}_flat.nii.gz", np.full((32, 32, 3), 7.0, np.float32))
    messages: list[str] = []
    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as client:

        def submit(path: Path) -> httpx.Response:
            with open(path, "rb") as fh:
                return client.post(
                    "/translate", files={"file": (path.name, fh)}, data={"steps": "2"}
                )

        refused = submit(flat)
        assert refused.status_code == 422
        messages.append(refused.text)
        ids = [submit(good).json()["id"], submit(bad).json()["id"]]
        jobs = [
            wait_for(
                lambda j=j: (job := client.get(f"/jobs/{j}").json())["state"] in FINAL and job,
                timeout=180,
                what="the identified job",
            )
            for j in ids
        ]
        assert [j["state"] for j in jobs] == ["succeeded", "failed"]
        assert jobs[1]["error"]["code"] == "invalid_input"
        messages += [json.dumps(j["error"]) for j in jobs]
        assert client.get(f"/jobs/{ids[0]}/result").status_code == 200
        messages.append(client.delete(f"/jobs/{ids[0]}").text)  # 409: finished
        messages.append(client.get(f"/jobs/{ids[1]}/result").text)  # 409: no result
        metrics = client.get("/metrics").text
    audit = server["audit"].read_text()
    assert any(json.loads(line)["job"] == ids[0] for line in audit.splitlines())
    log = server["log"].read_text()
    assert ids[1] in log and "invalid_input" in log  # the worker did log the failure
    for what, text in [("log", log), ("audit log", audit), ("metrics", metrics)] + [
        ("message", m) for m in messages
    ]:
        for secret in ("Doe", "Johanna", PATIENT_ID, "48151623"):
            assert secret not in text, f"{secret!r} appears in the {what}"
