"""End to end against a real Redis and real ``celery -A worker.app worker -P solo`` processes.

Submit a small NIfTI, poll to ``succeeded``, download and check geometry; cancel a queued and a
running job; and a job whose worker keeps dying ends ``failed`` with the reason.
"""

from __future__ import annotations

import io
import shutil
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from test_service_support import (
    AUTH,
    WorkerProcess,
    gateway_settings,
    redis_db,
    sample_affine,
    wait_for,
    worker_env,
    write_nifti,
)

from service.app import create_app
from service.queueing import requeue_unsent

pytestmark = pytest.mark.slow
LONG_STEPS = 400  # far more than any test waits for: such a job only ends by cancel or kill


class Service:
    def __init__(self, client: TestClient, storage: Path, tmp: Path) -> None:
        self.client = client
        self.storage = storage
        self.tmp = tmp

    def submit(self, path: Path, **fields: object) -> dict:
        with open(path, "rb") as fh:
            response = self.client.post(
                "/translate",
                files={"file": (path.name, fh)},
                data={k: str(v) for k, v in fields.items()},
                headers=AUTH,
            )
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.client.get(f"/jobs/{job_id}", headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_state(self, job_id: str, *states: str, timeout: float = 120) -> dict:
        return wait_for(
            lambda: (job := self.job(job_id))["state"] in states and job,
            timeout=timeout,
            what=f"job {job_id} to reach {states}",
        )

    def wait_running(self, job_id: str) -> dict:
        return wait_for(
            lambda: (
                (job := self.job(job_id))["state"] == "running"
                and job["progress"]["step"] >= 1
                and job
            ),
            timeout=120,
            what=f"job {job_id} to report progress",
        )


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_store):
    url = redis_db(redis_url, 7)
    redis.Redis.from_url(url).flushdb()
    tmp = tmp_path_factory.mktemp("e2e")
    storage = tmp / "storage"
    settings = gateway_settings(storage, tiny_model_store.root, url)
    worker = WorkerProcess(worker_env(url, storage, tiny_model_store.root), "e2e")
    try:
        with TestClient(create_app(settings)) as client:
            yield Service(client, storage, tmp)
    finally:
        worker.stop()


def test_translate_a_volume_and_download_it(service: Service) -> None:
    source = write_nifti(service.tmp / "brain_t2.nii.gz", (32, 32, 3))
    job = service.submit(source, steps=3, seed=5)
    done = service.wait_state(job["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 1 and done["error"] is None
    assert done["progress"]["step"] == done["progress"]["total"] > 0
    assert done["progress"]["fraction"] == 1.0
    timings = done["timings"]
    assert timings["queue_seconds"] >= 0 and timings["run_seconds"] > 0
    assert done["result"]["filename"] == "brain_t2_tiny.nii.gz"

    response = service.client.get(f"/jobs/{job['id']}/result", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    assert 'filename="brain_t2_tiny.nii.gz"' in response.headers["content-disposition"]
    out_path = service.tmp / "downloaded.nii.gz"
    out_path.write_bytes(response.content)
    out = nib.load(out_path)
    source_img = nib.load(source)
    assert out.shape == source_img.shape
    np.testing.assert_allclose(out.affine, source_img.affine, atol=1e-5)
    data = out.get_fdata()
    assert np.isfinite(data).all() and data.max() > data.min()


def test_translate_a_slice_to_png(service: Service) -> None:
    source = write_nifti(service.tmp / "slice.nii", (40, 36))
    job = service.submit(source, output_format="png", steps=2)
    done = service.wait_state(job["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done["error"]
    response = service.client.get(f"/jobs/{job['id']}/result", headers=AUTH)
    assert response.headers["content-type"] == "image/png"
    assert 'filename="slice_tiny.png"' in response.headers["content-disposition"]
    image = Image.open(io.BytesIO(response.content))
    assert image.size in ((40, 36), (36, 40))  # PNG orientation is imaging.save_png's choice


def test_cancel_a_running_job_and_a_queued_one(service: Service) -> None:
    source = write_nifti(service.tmp / "long.nii.gz", (32, 32, 2))
    running = service.submit(source, steps=LONG_STEPS)
    queued = service.submit(source, steps=2)
    service.wait_running(running["id"])

    # Queued behind the running job (one solo worker): cancelled at once, it never starts.
    response = service.client.delete(f"/jobs/{queued['id']}", headers=AUTH)
    assert response.status_code == 200 and response.json()["state"] == "cancelled"

    response = service.client.delete(f"/jobs/{running['id']}", headers=AUTH)
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    # Any step reported from now on began before the cancel was seen; at most one more ends.
    step_after_cancel = service.job(running["id"])["progress"]["step"]
    stopped = service.wait_state(running["id"], "cancelled", "failed", "succeeded")
    assert stopped["state"] == "cancelled"
    assert stopped["progress"]["step"] <= step_after_cancel + 1
    assert stopped["progress"]["step"] < stopped["progress"]["total"]
    assert stopped["result"] is None

    # A later job runs, so the worker has already taken and dropped the cancelled one.
    after = service.submit(source, steps=2)
    assert service.wait_state(after["id"], "succeeded", "failed")["state"] == "succeeded"
    never = service.job(queued["id"])
    assert never["state"] == "cancelled"
    assert never["attempts"] == 0 and never["timings"]["started_at"] is None
    assert not (service.storage / "out" / f"{queued['id']}.nii.gz").exists()


def test_a_job_recorded_but_never_sent_is_requeued_and_runs(service: Service) -> None:
    """As if a gateway stopped between recording a job and sending its task."""
    ctx = service.client.app.state.ctx
    source = write_nifti(service.tmp / "stranded.nii.gz", (32, 32, 2))
    template = service.wait_state(service.submit(source, steps=2)["id"], "succeeded", "failed")
    recorded = ctx.jobs.get(template["id"])
    job_id = uuid.uuid4().hex
    key = ctx.storage.key("in", job_id, ".nii.gz")
    partial = ctx.storage.partial_path(key)
    shutil.copyfile(source, partial)
    ctx.storage.commit(partial, key)
    ctx.jobs.create(
        job_id, recorded.spec.model_copy(update={"input_key": key, "created_at": time.time() - 60})
    )
    assert ctx.jobs.unsent(time.time() - 30) == [job_id]
    assert service.job(job_id)["state"] == "queued"

    assert requeue_unsent(ctx.celery, ctx.jobs, created_before=time.time() - 30) == [job_id]
    done = service.wait_state(job_id, "succeeded", "failed")
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 1
    assert ctx.jobs.unsent(time.time()) == []


def test_a_bad_image_fails_with_the_translators_reason(service: Service) -> None:
    data = np.full((32, 32, 2), np.nan, np.float32)
    bad = write_nifti(service.tmp / "nan.nii.gz", data=data, affine=sample_affine())
    job = service.submit(bad, steps=2)
    failed = service.wait_state(job["id"], "failed", "succeeded")
    assert failed["state"] == "failed"
    assert failed["error"]["code"] == "invalid_input"
    assert "NaN" in failed["error"]["message"]
    assert (service.storage / "in" / f"{job['id']}.nii.gz").exists()  # kept for inspection


def test_a_job_that_keeps_killing_its_worker_ends_failed(
    redis_url: str, tmp_path: Path, tiny_model_store
) -> None:
    url = redis_db(redis_url, 8)
    redis.Redis.from_url(url).flushdb()
    storage = tmp_path / "storage"
    # A short visibility timeout so Redis hands the task to the next worker quickly.
    env = worker_env(
        url,
        storage,
        tiny_model_store.root,
        MIDIFF_VISIBILITY_TIMEOUT_S="1",
        MIDIFF_MAX_DELIVERIES="1",
    )
    settings = gateway_settings(storage, tiny_model_store.root, url)
    with TestClient(create_app(settings)) as client:
        service = Service(client, storage, tmp_path)
        source = write_nifti(tmp_path / "killer.nii.gz", (32, 32, 2))
        job = service.submit(source, steps=LONG_STEPS)

        first = WorkerProcess(env, "first")
        service.wait_running(job["id"])
        first.kill()  # SIGKILL mid-job: the task was never acknowledged
        assert service.job(job["id"])["state"] == "running"

        second = WorkerProcess(env, "second")
        try:
            failed = service.wait_state(job["id"], "failed", "succeeded", "cancelled")
        finally:
            second.stop()
    assert failed["state"] == "failed"
    assert failed["error"]["code"] == "worker_lost"
    assert "after 1 attempt(s)" in failed["error"]["message"]
    assert failed["attempts"] == 1
    assert "not run: gave_up" in second.log()
