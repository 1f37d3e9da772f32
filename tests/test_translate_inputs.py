"""Inputs as hospitals send them: 2D slices at realistic sizes, any acquisition plane, oblique
affines; constant images and degenerate affines refused. One geometry with the data build."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from test_service_support import with_sform

from midiffusion.data.geometry import plan_grid, resample, slice_grid
from midiffusion.pipeline.translate import (
    TranslationInputError,
    Translator,
    _as_volume,
    plan_slices,
)


@pytest.fixture(scope="module")
def translator(tiny_model_store) -> Translator:
    v = tiny_model_store.verified("tiny")
    return Translator.load(v.card, v.weights_path)


def phantom(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A head-like phantom in world-free voxel space: a noisy ellipsoid with a dark core
    (ventricles), a bright rim (scalp) and a textured interior, on a noisy background."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n) if n > 1 else np.zeros(1) for n in shape]
    grid = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt(sum((g / s) ** 2 for g, s in zip(grid, (0.8, 0.9, 1.3), strict=False)))
    img = np.where(r < 1, 400.0, 0.0)
    img = np.where((r > 0.85) & (r < 1), 700.0, img)  # scalp
    img = np.where(r < 0.25, 120.0, img)  # ventricles
    texture = ndimage.gaussian_filter(rng.standard_normal(img.shape), 2) * 300
    img = np.where((r < 0.85) & (r > 0.25), img + texture, img)
    return (img + np.abs(rng.normal(0, 8, img.shape))).astype(np.float32)


def assert_translated_like(out: nib.Nifti1Image, img: nib.Nifti1Image) -> None:
    assert out.shape == img.shape
    assert np.allclose(out.affine, img.affine)
    data = np.asarray(out.dataobj)
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    source_fg = np.asarray(img.dataobj) > 0.1 * float(np.asarray(img.dataobj).max())
    # the output's support, holes filled within each acquired slice: dark tissue may be 0
    out_fg = data.reshape((*data.shape[:2], -1)) > 0
    through = int(np.argmin(out_fg.shape))
    out_fg = np.stack(
        [ndimage.binary_fill_holes(s) for s in np.moveaxis(out_fg, through, 0)], axis=through
    ).reshape(source_fg.shape)
    overlap = (out_fg & source_fg).sum() / source_fg.sum()
    assert overlap > 0.95, f"only {overlap:.1%} of the input's foreground was translated"
    assert out_fg.sum() < 1.1 * source_fg.sum()


@pytest.mark.parametrize("shape", [(160, 160), (160, 160, 1), (160, 160, 2)])
def test_2d_slices_at_realistic_size(translator, shape):
    data = phantom(shape if len(shape) == 3 else (*shape, 1)).reshape(shape)
    assert (data > 0.1 * data.max()).sum() > 5000
    img = nib.Nifti1Image(data, np.diag([0.9, 0.9, 5.0, 1.0]))
    assert_translated_like(translator.translate(img, steps=2), img)


def test_end_slices_keep_their_rim():
    """A 3D opening would eat the first and last slice; the in-plane one keeps them whole."""
    data = phantom((120, 130, 6))
    img = nib.Nifti1Image(data, np.eye(4))
    _plan, ras, mask = plan_slices(img, _as_volume(img), 64)
    fg = ras > 0.1
    for k in (0, 5):
        assert mask[:, :, k].sum() >= 0.97 * fg[:, :, k].sum()


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# affines of whole acquisitions: voxel axes (in-plane, in-plane, through-plane)
SAGITTAL = np.array([[0, 0, -4.0, 60], [0.9, 0, 0, -90], [0, 0.9, 0, -70], [0, 0, 0, 1]])
CORONAL = np.array([[-0.9, 0, 0, 80], [0, 0, 4.0, -40], [0, -0.9, 0, 60], [0, 0, 0, 1]])
OBLIQUE = _rotation(0, 17) @ _rotation(2, -11) @ np.diag([0.9, 0.9, 3.5, 1.0])


@pytest.mark.parametrize(
    ("affine", "shape"),
    [(SAGITTAL, (150, 160, 24)), (CORONAL, (150, 160, 30)), (OBLIQUE, (150, 160, 30))],
    ids=["sagittal", "coronal", "oblique"],
)
def test_any_acquisition_plane(translator, affine, shape):
    img = nib.Nifti1Image(phantom(shape), affine)
    out = translator.translate(img, steps=2)
    assert_translated_like(out, img)


def test_masks_are_made_in_the_slice_plane_of_a_sagittal_series():
    """Hole filling runs per axial slice after reorientation: a ring closed only in the axial
    plane is filled, whatever the acquisition's own third array axis is."""
    ras = np.zeros((60, 60, 40), np.float32)
    yy, xx = np.mgrid[:60, :60]
    ring = (np.hypot(xx - 30, yy - 30) < 25) & (np.hypot(xx - 30, yy - 30) > 15)
    ras[ring, :] = 100.0  # a tube along S: every axial slice shows a closed ring
    sagittal = np.transpose(ras, (1, 2, 0))  # array axes (A, S, R)
    affine = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(sagittal, affine)
    _plan, _ras, mask = plan_slices(img, _as_volume(img), 64)
    hole = np.hypot(xx - 30, yy - 30) < 12
    assert mask[hole, 20].all()


def test_dark_tissue_inside_a_broken_scalp_is_kept():
    """A head's face and skull base are dark in many contrasts; where the bright scalp around
    them has a gap (a nostril, an ear), the mask must still keep what the scalp encloses."""
    a0, a1 = np.mgrid[:160, :160]
    r = np.hypot((a1 - 80) / 0.8, a0 - 80)
    slice2d = np.zeros((160, 160), np.float32)
    slice2d[r < 45] = 500.0  # the brain
    slice2d[(r >= 45) & (r <= 60)] = 15.0  # bone and dark muscle: under the threshold
    slice2d[(r > 60) & (r < 66)] = 800.0  # the scalp, 6 px thick
    slice2d[79:82, 120:] = 0.0  # a 3-pixel gap through the scalp, open to the air
    data = np.repeat(slice2d[:, :, None], 4, axis=2)
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0]))
    _plan, _ras, mask = plan_slices(img, _as_volume(img), 128)
    enclosed = (r >= 46) & (r <= 59)
    for k in range(4):
        assert mask[:, :, k][enclosed].mean() > 0.98
        assert not mask[:, :, k][r > 72].any()  # and no air outside the head


SINGULAR = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


@pytest.mark.parametrize(
    ("data", "sform", "message"),
    [
        (np.full((160, 160, 3), 5.0, np.float32), np.eye(4), "constant"),
        (phantom((160, 160, 3)), np.diag([1.0, 1.0, 0.0, 1.0]), "degenerate"),
        (phantom((160, 160, 3)), SINGULAR, "degenerate"),
    ],
    ids=["constant", "zero voxel size", "singular"],
)
def test_constant_images_and_degenerate_affines_are_refused(
    translator, data, sform, message, tmp_path
):
    img = with_sform(data, sform, tmp_path / "bad.nii")
    with pytest.raises(TranslationInputError, match=message):
        translator.translate(img, steps=2)


def test_inference_and_the_data_build_share_one_grid():
    """For an axis-aligned RAS volume, the inference grid is the data build's in-plane grid,
    and both resample the volume to the same values on the planes they share."""
    data = phantom((150, 170, 40))
    affine = np.diag([1.2, 1.0, 2.0, 1.0])
    affine[:3, 3] = [-90, -100, -40]
    mask = data > 0.1 * data.max()
    built = plan_grid(mask, affine, 128, 0.1, 0.0, slice_mm=2.0)
    used = slice_grid(mask, affine, 128, 0.1)
    assert np.allclose(
        built.affine[:2],
        used.affine[:2] @ np.diag([1, 1, 0, 1]) + [[0, 0, 0, 0]] + np.outer([0, 0], [0, 0, 1, 0]),
        atol=1e-6,
    ) or np.allclose(built.affine[:2, [0, 1, 3]], used.affine[:2, [0, 1, 3]], atol=1e-6)
    # the built grid's planes are input planes here (same spacing, centred slab)
    z_built = built.affine[2, 3] + 2.0 * np.arange(built.shape[2])
    z_used = used.affine[2, 3] + 2.0 * np.arange(used.shape[2])
    shared = np.intersect1d(np.round(z_built, 6), np.round(z_used, 6))
    assert len(shared) > 10
    a, b = resample(data, affine, built), resample(data, affine, used)
    for z in shared[:: max(1, len(shared) // 5)]:
        ka, kb = int(np.argmin(abs(z_built - z))), int(np.argmin(abs(z_used - z)))
        assert np.allclose(a[:, :, ka], b[:, :, kb], atol=1e-3)


def test_the_field_of_view_has_a_floor():
    """A small foreground is framed by at least ``min_side`` mm, centred on it; a large one by
    its own extent."""
    mask = np.zeros((200, 200, 1), bool)
    mask[90:110, 80:120] = True  # 40 x 20 voxels of 1 mm
    affine = np.eye(4)
    own = slice_grid(mask, affine, 128, 0.1)
    floored = slice_grid(mask, affine, 128, 0.1, min_side=173.0)
    assert np.isclose(own.affine[0, 0] * 128, 39 * 1.1)
    assert np.isclose(floored.affine[0, 0] * 128, 173.0)
    centre = [63.5, 63.5, 0, 1]
    assert np.allclose(own.affine @ centre, floored.affine @ centre)  # the box's centre
    mask[:, 10:190] = True
    assert np.allclose(
        slice_grid(mask, affine, 128, 0.1, min_side=173.0).affine,
        slice_grid(mask, affine, 128, 0.1).affine,
    )


def test_a_small_slice_in_mm_is_not_magnified_beyond_the_training_data(translator):
    """The top of a head, alone: 91 x 70 mm of foreground in 0.7 mm pixels. With its spacing in
    mm it is framed like the training data's smallest field of view; with units unknown (a PNG,
    a NIfTI that does not say) by its own extent. Either way it comes back in its geometry."""
    from midiffusion.pipeline.translate import SMALLEST_FOV_MM

    data = np.zeros((260, 260), np.float32)
    data[65:195, 80:180] = phantom((130, 100, 1))[:, :, 0]
    assert (data > 0.1 * data.max()).sum() > 5000
    unknown = nib.Nifti1Image(data, np.diag([0.7, 0.7, 3.0, 1.0]))
    in_mm = nib.Nifti1Image(data, unknown.affine)
    in_mm.header.set_xyzt_units("mm")

    def side(img: nib.Nifti1Image) -> float:
        plan, _, _ = plan_slices(img, _as_volume(img), translator.grid)
        return plan.grid.shape[0] * float(np.linalg.norm(plan.grid.affine[:3, 0]))

    assert side(in_mm) == pytest.approx(SMALLEST_FOV_MM)
    assert side(unknown) < 0.65 * SMALLEST_FOV_MM
    assert_translated_like(translator.translate(in_mm, steps=2), in_mm)


def test_a_160x160_png_slice_through_the_command_line(tiny_model_store, tmp_path):
    from midiffusion.cli.main import main
    from midiffusion.io.imaging import load_png, save_png

    data = phantom((160, 160, 1))[:, :, 0]
    save_png(data / data.max(), tmp_path / "slice.png")
    args = ["translate", str(tmp_path / "slice.png"), "--store", str(tiny_model_store.root)]
    assert main([*args, "--quiet", "--steps", "2", "-o", str(tmp_path / "out.png")]) == 0
    out = load_png(tmp_path / "out.png")
    assert out.shape == (160, 160)
    fg = data > 0.1 * data.max()
    assert (out[fg] > 0).mean() > 0.9 and not out[~ndimage.binary_dilation(fg, iterations=2)].any()


def test_inputs_outside_the_training_data_are_named(translator):
    """The tiny model was trained on small axial brains: each way out of that is one warning."""
    from midiffusion.pipeline.translate import input_warnings

    def warnings_for(img: nib.Nifti1Image) -> list[str]:
        plan, _ras, mask = plan_slices(img, _as_volume(img), translator.grid)
        grid_mask = plan.to_grid(mask.astype(np.float32)) > 0.5
        return input_warnings(plan, grid_mask, translator.card)

    assert warnings_for(nib.Nifti1Image(phantom((150, 170, 30)), np.eye(4))) == []
    head = warnings_for(nib.Nifti1Image(phantom((200, 240, 30)), np.eye(4)))  # 271 cm^2
    assert len(head) == 1 and "whole head" in head[0] and "skull-stripped" in head[0]
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    (plane,) = warnings_for(nib.Nifti1Image(phantom((150, 170, 1)), coronal))
    assert "coronal slice" in plane
    coarse = warnings_for(nib.Nifti1Image(phantom((40, 40, 10)), np.diag([4.0, 4.0, 4.0, 1])))
    assert any("4.0 mm" in w for w in coarse)
    body = warnings_for(nib.Nifti1Image(phantom((200, 200, 10)), np.diag([2.0, 2.0, 5.0, 1])))
    assert any("field of view" in w for w in body)


def test_the_command_line_prints_the_warnings(tiny_model_store, tmp_path, capsys):
    from midiffusion.cli.main import main

    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(phantom((150, 170, 1)), coronal), tmp_path / "cor.nii.gz")
    args = ["translate", str(tmp_path / "cor.nii.gz"), "--store", str(tiny_model_store.root)]
    assert main([*args, "--quiet", "--steps", "2", "-o", str(tmp_path / "out.nii.gz")]) == 0
    assert "warning: the input is a coronal slice" in capsys.readouterr().err
