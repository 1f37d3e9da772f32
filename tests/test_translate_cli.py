"""``midiffusion translate``: NIfTI and PNG in and out, and one clear line for every bad input.

Bad inputs run the real command in a subprocess: the exit code and stderr are what a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from midiffusion.cli.main import main
from midiffusion.io.imaging import load_png, save_png

REPO = Path(__file__).resolve().parents[1]


def _head(shape=(36, 40, 6)) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 1.4) ** 2 < 1
    return (inside * (50 + 30 * (y > 0))).astype(np.float32)


def _cli(store: Path, *args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "midiffusion.cli", "translate", "--store", str(store), "--quiet"]
    return subprocess.run(
        [*cmd, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_nifti_volume_round_trip_in_a_subprocess(tiny_model_store, tmp_path: Path) -> None:
    affine = np.diag([1.2, 1.0, 2.5, 1.0])
    nib.save(nib.Nifti1Image(_head(), affine), tmp_path / "in.nii.gz")
    out = tmp_path / "sub" / "out.nii.gz"
    res = _cli(tiny_model_store.root, tmp_path / "in.nii.gz", "-m", "tiny", "-o", out, "--steps", 2)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    img = nib.load(out)
    stored = nib.load(tmp_path / "in.nii.gz").affine  # the header holds float32
    assert img.shape == (36, 40, 6) and np.array_equal(img.affine, stored)
    data = img.get_fdata()
    assert data.min() >= 0 and data.max() <= 1 and data.max() > 0
    assert not data[_head() == 0].any()


def test_png_in_png_out_is_deterministic(tiny_model_store, tmp_path: Path) -> None:
    save_png(_head((40, 48, 1))[:, :, 0] / 80, tmp_path / "slice.png")
    base = ["translate", str(tmp_path / "slice.png"), "--store", str(tiny_model_store.root)]
    base += ["--steps", "2", "--quiet", "--seed", "3"]
    assert main([*base, "-o", str(tmp_path / "a.png")]) == 0
    assert main([*base, "-o", str(tmp_path / "b.png")]) == 0
    a, b = load_png(tmp_path / "a.png"), load_png(tmp_path / "b.png")
    assert a.shape == (40, 48) and np.array_equal(a, b) and a.max() > 0
    # a PNG slice can also be written as a 2D NIfTI
    assert main([*base, "-o", str(tmp_path / "c.nii")]) == 0
    assert nib.load(tmp_path / "c.nii").shape == (40, 48)


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (input, extra args, expected fragment of the one-line error)."""
    eye = np.eye(4)
    nib.save(nib.Nifti1Image(np.ones((20, 20, 4, 3), np.float32), eye), tmp / "4d.nii.gz")
    (tmp / "empty.nii.gz").write_bytes(b"")
    nan = _head()
    nan[10, 10, 2] = np.nan
    nib.save(nib.Nifti1Image(nan, eye), tmp / "nan.nii.gz")
    small = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    nib.save(nib.Nifti1Image(small, eye), tmp / "small.nii.gz")
    nib.save(nib.Nifti1Image(np.full((64, 64, 3), 5.0, np.float32), eye), tmp / "flat.nii.gz")
    nib.save(nib.Nifti1Image(_head(), eye), tmp / "ok.nii.gz")
    return {
        "4D": (tmp / "4d.nii.gz", [], "4D series must be split"),
        "empty": (tmp / "empty.nii.gz", [], "the file is empty"),
        "NaN": (tmp / "nan.nii.gz", [], "1 NaN or infinite voxels"),
        "too small": (tmp / "small.nii.gz", [], "at least 16x16 are needed"),
        "constant": (tmp / "flat.nii.gz", [], "the image is constant (every voxel is 5)"),
        "unknown model": (tmp / "ok.nii.gz", ["-m", "nope"], "unknown model 'nope'"),
    }


CASES = ["4D", "empty", "NaN", "too small", "constant", "unknown model"]


def _check_one_line(err: str, case: str, expected: str) -> None:
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected in err
    if case == "unknown model":
        assert "tiny" in err  # names what exists


@pytest.mark.parametrize("case", ["4D", "empty", "unknown model"])
def test_bad_input_in_a_subprocess(tiny_model_store, tmp_path: Path, case: str) -> None:
    path, extra, expected = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.nii.gz"
    res = _cli(tiny_model_store.root, path, "-o", out, *extra)
    assert res.returncode == 1
    _check_one_line(res.stderr.strip(), case, expected)
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing half-written


def test_every_bad_input_in_process(tiny_model_store, tmp_path: Path, capsys) -> None:
    # the same command in-process (a subprocess costs seconds of imports per case)
    for case, (path, extra, expected) in _bad_inputs(tmp_path).items():
        out = tmp_path / "out.nii.gz"
        args = ["translate", str(path), "--store", str(tiny_model_store.root), "-o", str(out)]
        assert main([*args, "--quiet", *extra]) == 1, case
        _check_one_line(capsys.readouterr().err.strip(), case, expected)
        assert not out.exists()


def test_usage_errors_in_process(tiny_model_store, tmp_path: Path, capsys) -> None:
    nib.save(nib.Nifti1Image(_head(), np.eye(4)), tmp_path / "v.nii.gz")
    store = ["--store", str(tiny_model_store.root)]
    cases = [
        # faithful mode needs a faithful-trained model, and the store has none
        (["-o", str(tmp_path / "o.nii.gz"), "--mode", "faithful"], "needs a model trained"),
        (["-o", str(tmp_path / "o.nii.gz"), "--mode", "faithful", "-m", "tiny"], "clean LMI"),
        (["-o", str(tmp_path / "o.png")], "a PNG output holds one slice"),
        (["-o", str(tmp_path / "o.jpg")], "accepted: .nii, .nii.gz, .png"),
    ]
    for args, expected in cases:
        assert main(["translate", str(tmp_path / "v.nii.gz"), *store, "--quiet", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and expected in err, err
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    assert main(["translate", str(tmp_path / "broken.png"), *store, "-o", "x.png"]) == 1
    assert "not a readable PNG" in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))


def test_anchor_on_needs_a_card_with_an_anchor(tiny_model_store, tmp_path: Path, capsys) -> None:
    from model_store import ModelStore

    v = tiny_model_store.verified("tiny")
    card = v.card.model_dump(exclude={"version", "sha256"})
    card["sampling"] = {k: x for k, x in card["sampling"].items() if k != "anchor_mean"}
    assert v.card.sampling.anchor_mean is not None  # the fixture's model has one
    store = ModelStore(tmp_path / "store")
    store.publish(card, v.weights_path)
    nib.save(nib.Nifti1Image(_head(), np.eye(4)), tmp_path / "v.nii.gz")
    args = ["translate", str(tmp_path / "v.nii.gz"), "--store", str(store.root), "--quiet"]
    args += ["-m", "tiny", "--steps", "2", "-o", str(tmp_path / "o.nii.gz")]
    assert main([*args, "--anchor", "on"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no intensity anchor" in err and "--anchor auto or off" in err
    assert not (tmp_path / "o.nii.gz").exists()
    assert main([*args, "--anchor", "off"]) == 0  # the same model runs without it


def test_anatomy_says_what_a_lone_section_is(tiny_model_store, tmp_path: Path) -> None:
    from model_store import ModelStore

    v = tiny_model_store.verified("tiny")
    card = v.card.model_dump(exclude={"version", "sha256"})
    card["sampling"] |= {"anchor_mean": 0.7, "anchor_mean_head": 0.3}
    store = ModelStore(tmp_path / "store")
    store.publish(card, v.weights_path)
    # a 100 cm^2 section, as at the top of a head: judged a brain by its size
    section = _head((100, 100, 1))
    image = nib.Nifti1Image(section, np.diag([1.2, 1.2, 3.0, 1.0]))
    image.header.set_xyzt_units("mm")
    nib.save(image, tmp_path / "top.nii.gz")
    # away from the edge, which mapping back to the voxels blurs
    inside = ndimage.binary_erosion(section[:, :, 0] > 0, iterations=3)[:, :, None]
    means = {}
    for kind in ("auto", "brain", "head"):
        out = tmp_path / f"{kind}.nii.gz"
        args = ["translate", str(tmp_path / "top.nii.gz"), "--store", str(store.root), "--quiet"]
        args += ["-m", "tiny", "--steps", "2", "--anatomy", kind]
        assert main([*args, "-o", str(out)]) == 0
        means[kind] = nib.load(out).get_fdata()[inside].mean()
    # each kind takes its own anchor: auto is the brain's here, head the head's
    assert means["auto"] == means["brain"] == pytest.approx(0.7, abs=0.05)
    assert means["head"] == pytest.approx(0.3, abs=0.05)
    with pytest.raises(SystemExit):
        main([*args, "-o", str(tmp_path / "x.nii.gz"), "--anatomy", "skull"])
