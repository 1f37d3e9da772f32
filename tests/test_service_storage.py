"""Storage under server-made keys: no client-chosen paths, no half-written files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jobs.storage import InvalidKeyError, LocalStorage

JOB = "0123456789abcdef0123456789abcdef"


def test_keys_are_server_made_and_checked(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.key("in", JOB, ".nii.gz") == f"in/{JOB}.nii.gz"
    for bad in ("../etc/passwd", f"in/{JOB}.exe", f"in/../{JOB}.nii", "in/scan.nii", "/abs.nii"):
        with pytest.raises(InvalidKeyError):
            storage.path(bad)
    with pytest.raises(InvalidKeyError):
        storage.key("in", "../x", ".nii")


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    key = storage.key("out", JOB, ".nii.gz")
    with pytest.raises(RuntimeError), storage.writer(key) as fh:
        fh.write(b"half")
        raise RuntimeError("disk full")
    assert not storage.exists(key)
    assert list((tmp_path / "out").iterdir()) == []
    with storage.writer(key) as fh:
        fh.write(b"whole")
    assert storage.path(key).read_bytes() == b"whole"


def test_partial_names_keep_the_suffix_and_are_swept_when_stale(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    partial = storage.partial_path(storage.key("out", JOB, ".nii.gz"))
    assert partial.name.startswith(JOB + ".part-") and partial.name.endswith(".nii.gz")
    partial.write_bytes(b"x")
    fresh = storage.partial_path(storage.key("in", JOB, ".nii"))
    fresh.write_bytes(b"y")
    old = time.time() - 2 * 86400
    os.utime(partial, (old, old))
    assert storage.sweep_partials(86400) == 1
    assert not partial.exists() and fresh.exists()
    assert list(storage.keys()) == []  # partial files are never listed as objects
