"""``midiffusion serve`` without Redis: gateway and one worker in one process, end to end over
a real socket (uvicorn), with Celery's in-memory transport and SQLite job records."""

from __future__ import annotations

import os
import signal
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
from test_service_support import API_KEY, AUTH, REPO, files_under, wait_for, write_nifti

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDIFF_")}
    env.update(values, PYTHONPATH=str(REPO))
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_store) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("embedded")
    port = _free_port()
    log_path = tmp / "serve.log"
    env = _env(
        MIDIFF_STORAGE_DIR=str(tmp / "storage"),
        MIDIFF_MODEL_DIR=str(tiny_model_store.root),
        MIDIFF_API_KEYS=API_KEY,
        MIDIFF_MAX_UPLOAD_MB="1",
        MIDIFF_DEVICE="cpu",
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

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError("serve exited:\n" + log_path.read_text())
        try:
            return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, timeout=90, interval=0.2, what="midiffusion serve to be ready")
        yield {"base": base, "tmp": tmp, "storage": tmp / "storage", "log": log_path}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
