"""The worker's runtime in this process (SQLite records, real model, real files): models load
once, the job timeout stops a run, and a corrupt model fails the job with the reason."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest
from test_service_support import write_nifti

from jobs import JobSpec, JobState, SQLiteJobStore
from jobs.storage import LocalStorage
from worker.runtime import WorkerRuntime, output_filename
from worker.settings import WorkerSettings


def _submit(
    runtime: WorkerRuntime,
    source: Path,
    steps: int,
    model: str = "tiny",
    anatomy: str | None = None,
) -> str:
    """What the gateway does, minus HTTP: store the input, write a queued record."""
    job_id = uuid.uuid4().hex
    key = LocalStorage.key("in", job_id, ".nii.gz")
    shutil.copyfile(source, runtime.storage.path(key))
    runtime.jobs.create(
        job_id,
        JobSpec(
            created_at=time.time(),
            principal="p",
            model_name=model,
            model_version=1,
            steps=steps,
            seed=0,
            output_format="nifti",
            input_key=key,
            input_filename=source.name,
            input_bytes=source.stat().st_size,
            input_shape=[32, 32, 2],
            input_voxel_size=[1.0, 1.0, 1.0],
            anatomy=anatomy,
        ),
    )
    return job_id


def _runtime(tmp_path: Path, model_dir: Path, **settings: object) -> WorkerRuntime:
    values = {"storage_dir": tmp_path / "storage", "model_dir": model_dir, "device": "cpu"}
    values.update(settings)
    runtime = WorkerRuntime(WorkerSettings(**values))  # type: ignore[arg-type]
    assert isinstance(runtime.jobs, SQLiteJobStore)  # no Redis configured: embedded records
    return runtime


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "t2.nii.gz", (32, 32, 2))


def test_models_load_once_per_process(tmp_path: Path, tiny_model_store, source: Path) -> None:
    runtime = _runtime(tmp_path, tiny_model_store.root)
    first = [_submit(runtime, source, steps=2) for _ in range(2)]
    assert [runtime.run_job(job_id) for job_id in first] == ["succeeded", "succeeded"]
    assert list(runtime._translators) == [("tiny", 1)]
    translator = runtime.translator("tiny", 1)
    assert runtime.translator("tiny", 1) is translator
    job = runtime.jobs.get(first[0])
    assert job is not None and job.output is not None
    assert job.output.filename == output_filename("t2.nii.gz", "tiny", ".nii.gz")
    assert runtime.storage.exists(job.output.key)
    assert not any(".part-" in p.name for p in (runtime.storage.root / "out").iterdir())


def test_the_job_timeout_stops_a_run(tmp_path: Path, tiny_model_store, source: Path) -> None:
    runtime = _runtime(tmp_path, tiny_model_store.root, job_timeout_s=1)
    job_id = _submit(runtime, source, steps=900)
    assert runtime.run_job(job_id) == "failed"
    job = runtime.jobs.get(job_id)
    assert job is not None and job.state is JobState.FAILED
    assert job.error is not None and job.error.code == "timeout"
    assert "MIDIFF_JOB_TIMEOUT_S" in job.error.message
    assert job.output is None and job.step < 900  # stopped long before the end


def test_corrupt_weights_fail_the_job_with_the_reason(
    tmp_path: Path, tiny_model_store, source: Path
) -> None:
    store_copy = tmp_path / "store"
    shutil.copytree(tiny_model_store.root, store_copy)
    (weights,) = store_copy.rglob("weights.safetensors")
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    runtime = _runtime(tmp_path, store_copy)
    job_id = _submit(runtime, source, steps=2)
    assert runtime.run_job(job_id) == "failed"
    job = runtime.jobs.get(job_id)
    assert job is not None and job.error is not None
    assert job.error.code == "model_integrity" and "sha256" in job.error.message
    assert str(tmp_path) not in job.error.message  # no server path reaches the user
    assert runtime.storage.exists(job.spec.input_key)  # a failing job keeps its input


def test_an_input_outside_the_training_data_is_translated_with_warnings_on_the_record(
    tmp_path: Path, tiny_model_store
) -> None:
    import nibabel as nib
    import numpy as np
    from test_translate_inputs import phantom

    from service.schemas import job_out

    # one sagittal slice of 4 mm pixels: two ways outside what the tiny model was trained on
    sagittal = np.array([[0, 0, 1.0, 0], [4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 0, 1]])
    source = tmp_path / "sag.nii.gz"
    nib.save(nib.Nifti1Image(phantom((40, 40, 1)), sagittal), source)  # 16 cm across
    runtime = _runtime(tmp_path, tiny_model_store.root)
    job_id = _submit(runtime, source, steps=2)
    assert runtime.run_job(job_id) == "succeeded"
    job = runtime.jobs.get(job_id)
    assert job is not None and job.output is not None
    warnings = job_out(job, now=time.time()).warnings
    assert len(warnings) == 2
    assert "sagittal slice" in warnings[0] and "4.0 mm" in warnings[1]
    plain = _submit(runtime, write_nifti(tmp_path / "t2.nii.gz", (32, 32, 2)), steps=2)
    assert runtime.run_job(plain) == "succeeded"
    assert job_out(runtime.jobs.get(plain), now=time.time()).warnings == []


def test_what_the_client_says_the_input_shows_reaches_the_translation(
    tmp_path: Path, tiny_model_store, source: Path
) -> None:
    import nibabel as nib
    import numpy as np

    from model_store import ModelStore

    v = tiny_model_store.verified("tiny")
    card = v.card.model_dump(exclude={"version", "sha256"})
    card["sampling"] |= {"anchor_mean": 0.7, "anchor_mean_head": 0.3}
    store = ModelStore(tmp_path / "store")
    store.publish(card, v.weights_path)
    runtime = _runtime(tmp_path, store.root)
    means = {}
    for anatomy in (None, "head"):  # a 32 mm input: judged a brain by its size
        job_id = _submit(runtime, source, steps=2, anatomy=anatomy)
        assert runtime.run_job(job_id) == "succeeded"
        job = runtime.jobs.get(job_id)
        assert job is not None and job.output is not None
        out = np.asarray(nib.load(runtime.storage.path(job.output.key)).dataobj)
        means[anatomy] = out[out > 0].mean()
    assert means[None] > means["head"] + 0.2  # the brain's anchor, then the head's
