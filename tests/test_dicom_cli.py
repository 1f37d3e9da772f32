"""``midiffusion translate`` on a DICOM series: a folder or a zip in; a derived series (zip or
folder) or a NIfTI out; and one clear line for a series the intake refuses."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from dicom_support import SAGITTAL, check_derived, make_series, oblique

from jobs.dicom_intake import plan_upload
from midiffusion.cli.main import main


def _args(store, source: Path, out: Path) -> list[str]:
    base = ["translate", str(source), "-o", str(out), "--store", str(store.root)]
    return [*base, "-m", "tiny", "--steps=2", "--quiet"]


def test_a_folder_in_and_a_zip_out(tiny_model_store, tmp_path: Path) -> None:
    series = make_series(slices=12, size=(64, 64), orientation=oblique(15), slice_spacing=2.0)
    folder = tmp_path / "series"
    folder.mkdir()
    for n, blob in enumerate(series.instances):
        (folder / f"IM{n}").write_bytes(blob)
    out = tmp_path / "derived.zip"
    assert main([*_args(tiny_model_store, folder, out), "--preset=fast", "--anatomy=head"]) == 0
    with zipfile.ZipFile(out) as zf:
        datasets = [pydicom.dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist()]
    check_derived(series, datasets, "tiny", 1)
    # the settings the command ran with are on every derived instance
    said = ("fast sampling preset", "2 steps", "translated as a head")
    assert all(n in d.DerivationDescription for d in datasets for n in said)


def test_a_zip_in_and_a_folder_or_a_nifti_out(tiny_model_store, tmp_path: Path) -> None:
    series = make_series(slices=20, size=(48, 40), orientation=SAGITTAL, multiframe=True)
    source = tmp_path / "series.zip"
    source.write_bytes(series.zip_bytes())
    folder = tmp_path / "derived"
    assert main(_args(tiny_model_store, source, folder)) == 0
    check_derived(series, [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))], "tiny", 1)
    nifti = tmp_path / "derived.nii.gz"
    assert main(_args(tiny_model_store, source, nifti)) == 0
    expected = plan_upload(series.instances).affine_ras()
    np.testing.assert_allclose(nib.load(nifti).affine, expected, atol=1e-4)


def test_a_refused_series_is_one_error_line(tiny_model_store, tmp_path: Path, capsys) -> None:
    series = make_series(slices=5, size=(32, 32), shuffle=False)
    folder = tmp_path / "gap"
    folder.mkdir()
    for n, blob in enumerate(series.instances[:2] + series.instances[3:]):
        (folder / f"{n}.dcm").write_bytes(blob)
    assert main(_args(tiny_model_store, folder, tmp_path / "o.zip")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not evenly spaced" in err and err.count("\n") == 1
    nifti = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 2), np.float32), np.eye(4)), nifti)
    assert main(_args(tiny_model_store, nifti, tmp_path / "o.zip")) == 1
    assert "needs a DICOM input" in capsys.readouterr().err
