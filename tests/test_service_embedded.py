"""``midiffusion serve`` without Redis: gateway and one worker in one process, end to end over
a real socket (uvicorn), with Celery's in-memory transport and SQLite job records."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from test_service_support import (
    API_KEY,
    AUTH,
    REPO,
    files_under,
    stop_process,
    wait_for,
    wait_until_ready,
    write_nifti,
)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDIFF_")}
    env.update(values, PYTHONPATH=str(REPO))
    return env


@contextlib.contextmanager
def serving(tmp: Path, model_root: Path, **extra_env: str) -> Iterator[dict]:
    """``midiffusion serve`` in embedded mode on a free port, storage under ``tmp``."""
    port = _free_port()
    log_path = tmp / f"serve-{port}.log"
    env = _env(
        **{
            "MIDIFF_STORAGE_DIR": str(tmp / "storage"),
            "MIDIFF_MODEL_DIR": str(model_root),
            "MIDIFF_API_KEYS": API_KEY,
            "MIDIFF_MAX_UPLOAD_MB": "1",
            "MIDIFF_DEVICE": "cpu",
            **extra_env,
        }
    )
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "midiffusion.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, base, log_path, "midiffusion serve")
        yield {"base": base, "tmp": tmp, "storage": tmp / "storage", "log": log_path, "proc": proc}
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_store) -> Iterator[dict]:
    with serving(tmp_path_factory.mktemp("embedded"), tiny_model_store.root) as running:
        yield running


def test_embedded_mode_translates_end_to_end(server: dict) -> None:
    source = write_nifti(server["tmp"] / "scan.nii.gz", (32, 32, 3))
    with httpx.Client(base_url=server["base"], headers=AUTH, timeout=30) as client:
        with open(source, "rb") as fh:
            response = client.post(
                "/translate", files={"file": ("scan.nii.gz", fh)}, data={"steps": "3"}
            )
        assert response.status_code == 202, response.text
        location = response.headers["location"]

        def finished() -> dict | None:
            job = client.get(location).json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, timeout=120, interval=0.2, what="the embedded job")
        assert job["state"] == "succeeded", job["error"]
        result = client.get(f"{location}/result")
        assert result.status_code == 200
    out_path = server["tmp"] / "out.nii.gz"
    out_path.write_bytes(result.content)
    out, src = nib.load(out_path), nib.load(source)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    assert "embedded mode" in server["log"].read_text()
    checks = httpx.get(f"{server['base']}/health/ready").json()["checks"]
    assert checks["embedded_worker"] == "ok" and checks["broker"] == "ok"
    assert (server["storage"] / "jobs.sqlite3").is_file()
    assert API_KEY not in server["log"].read_text()


def test_a_job_samples_with_the_preset_it_names(server: dict) -> None:
    """``preset=fast`` reaches the worker: the tiny card's fast preset halves its 4 steps."""
    source = write_nifti(server["tmp"] / "preset.nii.gz", (32, 32, 3))
    totals = {}
    with httpx.Client(base_url=server["base"], headers=AUTH, timeout=30) as client:
        for preset in ("default", "fast"):
            with open(source, "rb") as fh:
                response = client.post(
                    "/translate", files={"file": ("scan.nii.gz", fh)}, data={"preset": preset}
                )
            assert response.status_code == 202, response.text
            assert response.json()["params"]["preset"] == preset
            location = response.headers["location"]

            def finished(location: str = location) -> dict | None:
                job = client.get(location).json()
                return job if job["state"] in ("succeeded", "failed", "cancelled") else None

            job = wait_for(finished, timeout=120, interval=0.2, what=f"the {preset} job")
            assert job["state"] == "succeeded", job["error"]
            totals[preset] = job["progress"]["total"]
    assert totals == {"default": 4, "fast": 2}


def test_embedded_mode_caps_a_streamed_upload(server: dict) -> None:
    boundary = uuid.uuid4().hex
    block = os.urandom(256 * 1024)

    def body() -> Iterator[bytes]:  # chunked: no Content-Length, 2 MiB against a 1 MiB cap
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.nii"\r\n\r\n'
        ).encode()
        for _ in range(8):
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    before = files_under(server["storage"])
    with httpx.Client(base_url=server["base"], headers=AUTH, timeout=30) as client:
        response = client.post(
            "/translate",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        # The connection stays usable for the next request.
        assert client.get("/health/live").status_code == 200
    after = [f for f in files_under(server["storage"]) if not f.startswith("jobs.sqlite3")]
    assert after == [f for f in before if not f.startswith("jobs.sqlite3")]  # nothing kept


def test_jobs_survive_a_killed_embedded_server(tmp_path: Path, tiny_model_store) -> None:
    """The in-memory queue dies with the process; the job records in SQLite do not. The next
    start sends the unfinished jobs' tasks again: the running one as a second attempt."""
    source = write_nifti(tmp_path / "scan.nii.gz", (32, 32, 2))

    def submit(client: httpx.Client, steps: int) -> str:
        with open(source, "rb") as fh:
            response = client.post(
                "/translate", files={"file": ("scan.nii.gz", fh)}, data={"steps": str(steps)}
            )
        assert response.status_code == 202, response.text
        return response.json()["id"]

    with (
        serving(tmp_path, tiny_model_store.root) as first,
        httpx.Client(base_url=first["base"], headers=AUTH, timeout=30) as client,
    ):
        running = submit(client, 40)
        queued = submit(client, 2)
        wait_for(
            lambda: client.get(f"/jobs/{running}").json()["progress"]["step"] >= 1,
            timeout=120,
            what="the first job to report progress",
        )
        first["proc"].kill()  # no shutdown: the queue and the worker vanish mid-job
        first["proc"].wait()

    with (
        serving(tmp_path, tiny_model_store.root) as second,
        httpx.Client(base_url=second["base"], headers=AUTH, timeout=30) as client,
    ):

        def finished(job_id: str) -> dict | None:
            job = client.get(f"/jobs/{job_id}").json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        jobs = {
            job_id: wait_for(lambda j=job_id: finished(j), timeout=180, what=job_id)
            for job_id in (running, queued)
        }
    assert jobs[running]["state"] == "succeeded", jobs[running]["error"]
    assert jobs[queued]["state"] == "succeeded", jobs[queued]["error"]
    assert (jobs[running]["attempts"], jobs[queued]["attempts"]) == (2, 1)
    assert "never reached the queue" in second["log"].read_text()


def test_serve_refuses_to_start_without_api_keys(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "midiffusion.cli", "serve", "--port", str(_free_port())],
        cwd=REPO,
        env=_env(MIDIFF_STORAGE_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no API keys configured" in result.stderr and "MIDIFF_AUTH_DISABLED=1" in result.stderr
