"""The worker's runtime records what happened inside a job: quality and the uncertainty map on
the record, and nothing left behind when the result cannot be written."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
from test_service_support import write_nifti
from test_worker_runtime import _runtime

from jobs import JobSpec, JobState
from jobs.storage import LocalStorage
from worker import metrics
from worker.runtime import WorkerRuntime


def _submit(runtime: WorkerRuntime, source: Path, output_format: str = "nifti") -> str:
    job_id = uuid.uuid4().hex
    key = LocalStorage.key("in", job_id, ".nii.gz")
    shutil.copyfile(source, runtime.storage.path(key))
    shape = list(nib.load(source).shape)
    runtime.jobs.create(
        job_id,
        JobSpec(
            created_at=time.time(),
            principal="p",
            model_name="tiny",
            model_version=1,
            steps=2,
            seed=0,
            output_format=output_format,
            input_key=key,
            input_filename=source.name,
            input_bytes=source.stat().st_size,
            input_shape=shape,
            input_voxel_size=[1.0, 1.0, 1.0],
        ),
    )
    return job_id


def _count(histogram: object, **labels: str) -> float:
    for metric in histogram.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_count") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return sample.value
    return 0.0


def test_a_job_records_quality_writes_its_map_and_counts_its_stages(
    tmp_path: Path, tiny_model_store
) -> None:
    runtime = _runtime(tmp_path, tiny_model_store.root)
    before = {s: _count(metrics.STAGE_SECONDS, stage=s) for s in metrics.STAGES}
    slices = metrics.SLICES_TRANSLATED._value.get()
    source = write_nifti(tmp_path / "t2.nii.gz", (32, 32, 2))
    job_id = _submit(runtime, source)
    assert runtime.run_job(job_id) == "succeeded"
    job = runtime.jobs.get(job_id)
    assert job is not None and job.output is not None
    quality = job.output.quality
    assert quality is not None and 0 < quality["nmi_source"] <= 1
    assert quality["sample_spread"] is None  # the tiny card draws once
    assert job.output.uncertainty_key == f"out/{job_id}.uncertainty.nii.gz"
    spread = nib.load(runtime.storage.path(job.output.uncertainty_key))
    assert spread.shape == nib.load(source).shape
    assert not np.asarray(spread.dataobj).any()  # one draw: no spread anywhere
    after = {s: _count(metrics.STAGE_SECONDS, stage=s) for s in metrics.STAGES}
    assert all(after[s] == before[s] + 1 for s in metrics.STAGES), (before, after)
    assert metrics.SLICES_TRANSLATED._value.get() == slices + 2


def test_a_result_that_cannot_be_written_leaves_no_map(tmp_path: Path, tiny_model_store) -> None:
    runtime = _runtime(tmp_path, tiny_model_store.root)
    # png of a two-slice volume: the gateway refuses it; a record that asks for it anyway
    # fails at the write, after the map was written
    job_id = _submit(runtime, write_nifti(tmp_path / "t2.nii.gz", (32, 32, 2)), "png")
    assert runtime.run_job(job_id) == "failed"
    job = runtime.jobs.get(job_id)
    assert job is not None and job.state is JobState.FAILED and job.output is None
    assert job.error is not None and job.error.code == "internal_error"
    assert list((runtime.storage.root / "out").iterdir()) == []
