"""Building sets: a small mni-synth from the real nilearn files, determinism, the sets API.

The nilearn files come from the `data` extra (installed by `make install`).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from midiffusion.cli.main import main
from midiffusion.data.build import build_set, write_set
from midiffusion.data.recipe import Recipe
from midiffusion.data.sets import load_volumes, set_dir, training_slices
from midiffusion.data.sources import fetch_source, source_by_name
from midiffusion.data.volumes import BuiltSet, Volume

SMALL = Recipe(grid=64, synth_slices=8)


@pytest.fixture(scope="module")
def mni_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    fetch_source(root, source_by_name("mni152"))
    return root


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_small_mni_synth_from_real_files(mni_root: Path, tmp_path: Path) -> None:
    path = build_set("mni-synth", mni_root, SMALL, log=lambda _m: None)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "evaluation" and manifest["recipe"]["grid"] == 64
    assert manifest["counts"] == {"volumes": 4, "slices": 32}
    vols = load_volumes("mni-synth", mni_root)
    assert list(vols) == ["t1", "t2w", "pdw", "flair", "mask"]
    mask = np.asarray(vols["mask"].dataobj)
    assert mask.dtype == np.uint8 and mask.shape == (64, 64, 8)
    for key in ("t1", "t2w", "pdw", "flair"):
        img = vols[key]
        data = np.asarray(img.dataobj)
        assert data.dtype == np.float32 and data.shape == (64, 64, 8)
        assert data.min() == 0.0 and data.max() == 1.0
        assert np.all(data[mask == 0] == 0)  # zero outside the brain
        assert np.percentile(data[mask > 0], 99.5) == pytest.approx(1.0, abs=0.01)
        np.testing.assert_array_equal(img.affine, vols["mask"].affine)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    # Every slice holds a good part of the brain; the grid is in MNI mm space.
    area = mask.sum((0, 1))
    assert area.min() > 0.1 * area.max()
    centre = nib.affines.apply_affine(vols["t1"].affine, [31.5, 31.5, 3.5])
    assert np.all(np.abs(centre) < 40)
    # The contrasts are what the sequences say: CSF (ventricles) bright in T2w, dark in FLAIR.
    t1, t2, fl = (np.asarray(vols[k].dataobj) for k in ("t1", "t2w", "flair"))
    inside = mask > 0
    dark_t1 = inside & (t1 < np.percentile(t1[inside], 10))
    bright_t1 = inside & (t1 > np.percentile(t1[inside], 90))
    assert t2[dark_t1].mean() > t2[bright_t1].mean()
    assert fl[dark_t1].mean() < fl[bright_t1].mean()


def test_build_is_byte_identical_and_idempotent(mni_root: Path, tmp_path: Path) -> None:
    first = _files(build_set("mni-synth", mni_root, SMALL, force=True, log=lambda _m: None))
    second = _files(build_set("mni-synth", mni_root, SMALL, force=True, log=lambda _m: None))
    assert first.keys() == second.keys() and "contact_sheet.png" in first
    assert first == second
    lines: list[str] = []
    build_set("mni-synth", mni_root, SMALL, log=lines.append)
    assert lines and lines[0].startswith("mni-synth: up to date")
    # Another seed changes the sources, not the ground truth.
    other = _files(build_set("mni-synth", mni_root, Recipe(grid=64, synth_slices=8, synth_seed=1)))
    assert other["t1.nii.gz"] == first["t1.nii.gz"] and other["t2w.nii.gz"] != first["t2w.nii.gz"]


def test_missing_source_fails_cleanly_with_one_line(tmp_path: Path, capsys) -> None:
    root = tmp_path / "empty"
    code = main(["data", "build", "--sets", "t1-train", "--data-dir", str(root)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert err.startswith("error: source colin27") and "midiffusion data fetch" in err
    # Nothing half-built: no set directory, no leftover temporary directory.
    assert list((root / "sets").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="run `midiffusion data build --sets t1-train"):
        set_dir("t1-train", root)


def test_cli_rejects_unknown_sets(tmp_path: Path, capsys) -> None:
    assert main(["data", "build", "--sets", "foo", "--data-dir", str(tmp_path)]) == 1
    assert "unknown set(s) foo" in capsys.readouterr().err


def test_training_slices_order_and_evaluation_sets_are_refused(tmp_path: Path) -> None:
    affine = np.diag([1.5, 1.5, 1.0, 1.0])
    a = np.zeros((8, 8, 3), np.float32)
    b = np.zeros((8, 8, 2), np.float32)
    for k in range(3):
        a[1, 2, k] = (k + 1) / 10
    b[:, :, 1] = 1.0
    built = BuiltSet(
        "training",
        [
            Volume("vola", "image", "T1w", a, affine, "s"),
            Volume("vola_mask", "mask", "mask", (a > 0).astype(np.uint8), affine, "s"),
            Volume("volb", "image", "T1w", b, affine, "s"),
        ],
        [],
    )
    out = tmp_path / "sets" / "tiny"
    out.mkdir(parents=True)
    write_set(out, "tiny", built, Recipe())
    slices = training_slices("tiny", tmp_path)
    assert slices.shape == (5, 8, 8) and slices.dtype == np.float32
    np.testing.assert_allclose(slices[:3, 1, 2], [0.1, 0.2, 0.3])  # slice k == vol[:, :, k]
    assert slices[4].max() == 1.0 and slices[3].max() == 0.0  # volumes in manifest order

    evaluation = BuiltSet("evaluation", built.volumes[:1], [])
    out = tmp_path / "sets" / "evalset"
    out.mkdir()
    write_set(out, "evalset", evaluation, Recipe())
    with pytest.raises(ValueError, match="not a training set"):
        training_slices("evalset", tmp_path)
