"""The one atomic write: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import pytest

from model_store.files import atomic_path, sha256_file, write_bytes_atomic, write_text_atomic


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]
    assert target.stat().st_mode & 0o777 == 0o644  # readable by others, whatever mkstemp made


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "w.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_the_temporary_keeps_the_suffix_and_the_folder(tmp_path):
    with atomic_path(tmp_path / "out.nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz")
        assert tmp.name.startswith(".")  # hidden: loaders that glob for volumes skip it
        tmp.write_bytes(b"x")
    assert sha256_file(tmp_path / "out.nii.gz") == (
        "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    )
