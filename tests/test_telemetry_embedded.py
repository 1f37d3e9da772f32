"""One job through ``midiffusion serve`` without Redis: the worker's telemetry on the gateway's
``/metrics``, ``quality`` on the job record, and the uncertainty map as a result part."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from telemetry_support import WORKER_METRICS, has, scrape, store_with_two_draws, value
from test_service_embedded import serving
from test_service_support import AUTH, wait_for, write_nifti

pytestmark = pytest.mark.slow
FIGURES = {"nmi_source", "lmi_source", "sample_spread", "outside_training_fraction"}


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory: pytest.TempPathFactory, tiny_model_store) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("telemetry-embedded")
    store = store_with_two_draws(tiny_model_store.root, tmp / "models")
    with (
        serving(tmp, store) as server,
        httpx.Client(base_url=server["base"], headers=AUTH, timeout=30) as client,
    ):
        source = write_nifti(tmp / "scan.nii.gz", (32, 32, 3))
        with open(source, "rb") as fh:
            response = client.post(
                "/translate", files={"file": ("scan.nii.gz", fh)}, data={"steps": "3"}
            )
        assert response.status_code == 202, response.text
        location = response.headers["location"]
        job = wait_for(
            lambda: (
                (j := client.get(location).json())["state"] != "queued"
                and j["state"] != "running"
                and j
            ),
            timeout=120,
            interval=0.2,
            what="the embedded job",
        )
        assert job["state"] == "succeeded", job["error"]
        yield {"client": client, "job": job, "source": source, "tmp": tmp, "server": server}


def test_the_job_record_carries_its_quality(finished_job: dict) -> None:
    quality = finished_job["job"]["quality"]
    assert set(quality) == FIGURES
    assert 0 < quality["nmi_source"] <= 1 and 0 < quality["lmi_source"] <= 1
    assert quality["sample_spread"] > 0  # two draws were averaged, and they differ
    assert quality["outside_training_fraction"] == 0.0  # axial 1.25 x 1.1 mm slices of a brain


def test_the_uncertainty_map_comes_in_the_input_geometry(finished_job: dict) -> None:
    client, job = finished_job["client"], finished_job["job"]
    assert job["links"]["uncertainty"] == f"/jobs/{job['id']}/result?part=uncertainty"
    response = client.get(job["links"]["uncertainty"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert 'filename="scan_tiny_uncertainty.nii.gz"' in response.headers["content-disposition"]
    path: Path = finished_job["tmp"] / "uncertainty.nii.gz"
    path.write_bytes(response.content)
    spread, source = nib.load(path), nib.load(finished_job["source"])
    assert spread.shape == source.shape
    np.testing.assert_allclose(spread.affine, source.affine, atol=1e-5)
    data, inside = spread.get_fdata(), source.get_fdata() > 0
    assert not data[~inside].any() and data[inside].max() > 0
    # the translation itself is still the plain result
    result = client.get(f"/jobs/{job['id']}/result")
    assert result.headers["content-disposition"].endswith('filename="scan_tiny.nii.gz"')


def test_an_unknown_part_is_refused_with_what_is_accepted(finished_job: dict) -> None:
    client, job = finished_job["client"], finished_job["job"]
    response = client.get(f"/jobs/{job['id']}/result", params={"part": "variance"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "accepted: uncertainty" in response.json()["detail"]


def test_every_worker_metric_has_samples_on_the_gateway(finished_job: dict) -> None:
    client, job = finished_job["client"], finished_job["job"]
    samples = scrape(client.get("/metrics").text)
    for name, (label, values) in WORKER_METRICS.items():
        assert has(samples, name) or has(samples, f"{name}_count"), name
        for wanted in values:
            assert value(samples, f"{name}_count", **{label: wanted}) >= 1, (name, wanted)
    steps = job["progress"]["total"]
    assert value(samples, "midiff_sampling_step_seconds_count") == steps > 0
    assert value(samples, "midiff_slices_translated_total") == 3
    assert value(samples, "midiff_gpu_memory_bytes") == 0  # a CPU
    assert has(samples, "midiff_queue_depth")
    assert value(samples, "midiff_queue_depth") == 0  # the one job was taken
    spread_sum = value(samples, "midiff_translation_quality_sum", metric="sample_spread")
    assert spread_sum == pytest.approx(job["quality"]["sample_spread"])
