"""Shared fixtures: real services, started here when the machine does not already have them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_DATA = Path(__file__).resolve().parent / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: ``MIDIFF_TEST_REDIS_URL`` if set, else a private server on a free port."""
    url = os.environ.get("MIDIFF_TEST_REDIS_URL")
    if url:
        if not _redis_ping(url):
            pytest.fail(f"MIDIFF_TEST_REDIS_URL={url} is set but Redis does not answer there")
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed (apt-get install redis-server), "
            "and MIDIFF_TEST_REDIS_URL is not set"
        )
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while not _redis_ping(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"could not start redis-server on port {port}")
        time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Data files the tests ship with (``tests/data``; see its README)."""
    return TEST_DATA


def _tiny_training_set(directory: Path, grid: int = 32, n: int = 12) -> Path:
    """Synthetic 'brain' slices: an ellipse of tissue with a darker core, on zero background."""
    import nibabel as nib
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:grid, :grid]
    vol = np.zeros((grid, grid, n), np.float32)
    for k in range(n):
        r = grid * (0.25 + 0.02 * (k % 4))
        d2 = (yy - grid / 2) ** 2 + ((xx - grid / 2) * 1.2) ** 2
        vol[:, :, k] = 0.8 * (d2 < r * r) - 0.5 * (d2 < (r / 2) ** 2)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), directory / "train.nii.gz")
    return directory


@pytest.fixture(scope="session")
def tiny_training_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_training_set(tmp_path_factory.mktemp("tinyset"))


@pytest.fixture(scope="session")
def tiny_model_store(tmp_path_factory: pytest.TempPathFactory, tiny_training_set: Path):
    """A temporary ModelStore with one small, really trained (briefly) model, 'tiny' v1.

    The network is real and runs fast on the CPU: translation of a small volume takes a second.
    """
    from midiffusion.training.config import TrainConfig
    from midiffusion.training.data import load_training_slices
    from midiffusion.training.export import export_model
    from midiffusion.training.trainer import Trainer
    from model_store import ModelStore

    config = TrainConfig.load("tiny")
    data, manifest = load_training_slices(tiny_training_set, config.grid_size)
    run_dir = tmp_path_factory.mktemp("tinyrun")
    trainer = Trainer(config, data, run_dir, manifest)
    trainer.fit(10, progress=False)
    weights = run_dir / "weights.safetensors"
    card = export_model(
        run_dir,
        name="tiny",
        target_modality="T1w",
        out_weights=weights,
        sampling={
            "sampler": "ddim",
            "steps": 4,
            "guidance": 1.0,
            "presets": {"fast": {"steps": 2, "note": "half the steps"}},
        },
    )
    store = ModelStore(tmp_path_factory.mktemp("store"))
    store.publish(card, weights)
    return store


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc with DICOMweb on free loopback ports (``tests/orthanc_support.py``)."""
    from orthanc_support import missing, running_orthanc

    reason = missing()
    if reason is not None:
        pytest.fail(reason)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
