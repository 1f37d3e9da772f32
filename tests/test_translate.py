"""Whole-volume translation: geometry kept exactly, seeded, cancellable, clear input errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from midiffusion.io.imaging import load_nifti, save_nifti
from midiffusion.pipeline.translate import TranslationCancelled, TranslationInputError, Translator


@pytest.fixture(scope="module")
def translator(tiny_model_store) -> Translator:
    v = tiny_model_store.verified("tiny")
    # float32: the exact-equality checks below do not hold under bf16 autocast, whose rounding
    # depends on the batch (tests/test_precision.py covers bf16)
    return Translator.load(v.card, v.weights_path, precision="fp32")


def _head(shape=(40, 48, 12)) -> np.ndarray:
    """An ellipsoid 'head' with a brighter left half, so left/right mix-ups are visible."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 1.4) ** 2 < 1
    return (inside * (60 + 40 * (x < 0))).astype(np.float32)


# (affine, array shape): the slice axis (S) holds the fewest voxels in every case
LPS = np.array([[-1.0, 0, 0, 90], [0, -1.2, 0, 100], [0, 0, 2.0, -50], [0, 0, 0, 1]])
SLA = np.array([[0, -1.0, 0, 10], [0, 0, 1.5, -20], [2.5, 0, 0, 5], [0, 0, 0, 1]])
CASES = {
    "RAS anisotropic": (np.diag([0.9, 1.1, 3.0, 1.0]), (40, 48, 12)),
    "LPS": (LPS, (40, 48, 12)),
    "axes permuted (S, L, A)": (SLA, (12, 40, 48)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_output_keeps_geometry_and_foreground(translator, tmp_path, name):
    affine, shape = CASES[name]
    img = nib.Nifti1Image(_head(shape), affine)
    img.header.set_xyzt_units("mm", "sec")
    path = save_nifti(img, tmp_path / "in.nii.gz")
    img = load_nifti(path)  # as stored: the header holds the affine in float32
    out = translator.translate(img, steps=3)
    out_path = save_nifti(out, tmp_path / "out.nii.gz")
    assert out_path.stat().st_mode & 0o777 == 0o644  # readable by others, not 0600
    saved = load_nifti(out_path)
    assert saved.shape == img.shape
    assert np.array_equal(saved.affine, img.affine)
    assert nib.aff2axcodes(saved.affine) == nib.aff2axcodes(img.affine)
    assert saved.get_data_dtype() == np.float32
    assert saved.header.get_xyzt_units() == ("mm", "sec")
    data = saved.get_fdata()
    assert data.min() >= 0 and data.max() <= 1
    assert not data[img.get_fdata() == 0].any()  # background stays background
    assert (data > 0).sum() > 0.3 * (img.get_fdata() > 0).sum()


def test_2d_slice_input(translator):
    img = nib.Nifti1Image(_head((40, 48, 1))[:, :, 0], np.diag([1.0, 1.0, 1.0, 1.0]))
    out = translator.translate(img, steps=2)
    assert out.shape == (40, 48)


def test_same_seed_same_output_and_other_seed_differs(translator):
    img = nib.Nifti1Image(_head(), np.eye(4))
    a = translator.translate(img, steps=3, seed=7).get_fdata()
    b = translator.translate(img, steps=3, seed=7).get_fdata()
    c = translator.translate(img, steps=3, seed=8).get_fdata()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_samples_average_independent_draws(translator):
    src = np.stack([_head((32, 32, 1))[:, :, 0] / 100.0] * 3).astype(np.float32)
    seen: list[tuple[int, int]] = []
    one = translator.translate_slices(src, steps=3, seed=5, samples=1)
    two = translator.translate_slices(
        src, steps=3, seed=5, samples=2, batch_size=2, progress=lambda d, t: seen.append((d, t))
    )
    # the first draw is the single-sample translation, so the second is what is left
    second = 2 * two - one
    assert second.min() >= -1e-5 and second.max() <= 1 + 1e-5
    assert np.abs(second - one).max() > 0.01  # another draw, not the same one twice
    # slices 0-1 fill a batch and run their draws one after the other (2 x 3 steps); the lone
    # slice 2 folds both draws into one batch of 2 (3 steps)
    assert seen[-1] == (9, 9)
    with pytest.raises(ValueError, match="samples"):
        translator.translate_slices(src, steps=2, samples=-1)


def test_folding_draws_into_one_batch_changes_speed_not_result(tiny_model_store):
    v = tiny_model_store.verified("tiny")
    fp32 = Translator.load(v.card, v.weights_path, precision="fp32")
    src = (_head((32, 32, 1))[:, :, 0] / 100.0)[None].astype(np.float32)
    run = dict(steps=3, seed=2, sampler="euler-a", samples=4)
    apart = fp32.translate_slices(src, batch_size=1, **run)  # 4 draws one after the other
    folded = fp32.translate_slices(src, batch_size=8, **run)  # one batch of 4
    np.testing.assert_allclose(folded, apart, atol=1e-4)


def test_antithetic_pairs_change_only_the_second_draw_and_follow_the_card(tiny_model_store):
    v = tiny_model_store.verified("tiny")
    card = v.card
    fp32 = Translator.load(card, v.weights_path, precision="fp32")
    src = (_head((32, 32, 1))[:, :, 0] / 100.0)[None].astype(np.float32)
    run = dict(steps=3, seed=2, sampler="euler-a")
    first = fp32.translate_slices(src, samples=1, **run)
    plain = fp32.translate_slices(src, samples=2, antithetic=False, **run)
    anti = fp32.translate_slices(src, samples=2, antithetic=True, **run)
    # draw 0 is the single-sample translation either way, so what is left is a whole draw...
    for mean in (plain, anti):
        second = 2 * mean - first
        assert second.min() >= -1e-5 and second.max() <= 1 + 1e-5
    # ...and draw 1 ran on draw 0's noises negated instead of its own
    assert np.abs(anti - plain).max() > 0.005
    # a card without the setting (as v1-v7) keeps independent draws; a card with it pairs them
    assert np.array_equal(plain, fp32.translate_slices(src, samples=2, **run))
    paired_card = card.model_copy(
        update={"sampling": card.sampling.model_copy(update={"antithetic": True})}
    )
    paired = Translator.load(paired_card, v.weights_path, precision="fp32")
    assert np.array_equal(paired.translate_slices(src, samples=2, **run), anti)
    # folding the pairs into one batch changes the speed, not the result
    folded = paired.translate_slices(src, samples=4, batch_size=8, **run)
    apart = paired.translate_slices(src, samples=4, batch_size=1, **run)
    np.testing.assert_allclose(folded, apart, atol=1e-4)


@pytest.mark.parametrize("sampler", ["euler-a", "ddpm"])
def test_stochastic_samplers_give_identical_slices_identical_results(translator, sampler):
    # the step noise is one image shared by every slice and every batch: slice 0 and slice 2
    # (same source, different batches) must come out the same; the seed repeats, another differs
    head = _head((32, 32, 1))[:, :, 0] / 100.0
    src = np.stack([head, head[::-1], head]).astype(np.float32)
    a = translator.translate_slices(src, steps=4, seed=3, sampler=sampler, batch_size=2)
    b = translator.translate_slices(src, steps=4, seed=3, sampler=sampler, batch_size=2)
    c = translator.translate_slices(src, steps=4, seed=4, sampler=sampler, batch_size=2)
    assert np.array_equal(a, b)
    assert np.allclose(a[0], a[2], atol=1e-4)  # batches of 2 and 1: float rounding only
    assert not np.array_equal(a, c)


def test_progress_reports_every_step_and_cancel_stops_within_one(translator):
    img = nib.Nifti1Image(_head(), np.eye(4))
    seen: list[tuple[int, int]] = []
    translator.translate(img, steps=3, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    total = seen[-1][1]
    assert [d for d, _ in seen] == list(range(1, total + 1))

    steps_run: list[int] = []
    with pytest.raises(TranslationCancelled):
        translator.translate(
            img,
            steps=5,
            batch_size=4,
            progress=lambda d, t: steps_run.append(d),
            should_cancel=lambda: len(steps_run) >= 2,
        )
    assert len(steps_run) == 2  # the check after step 2 stopped it before step 3 finished


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((20, 20, 4, 3), np.float32), "4D series"),
        (np.full((20, 20, 4), np.nan, np.float32), "NaN"),
        (np.zeros((20, 20, 4), np.float32), "constant"),
        (np.arange(8 * 8 * 30, dtype=np.float32).reshape(8, 8, 30), "at least 16x16"),
    ],
)
def test_bad_inputs_say_what_is_wrong(translator, data, message):
    with pytest.raises(TranslationInputError, match=message):
        translator.translate(nib.Nifti1Image(data, np.eye(4)), steps=2)


@pytest.mark.parametrize("name", list(CASES))
def test_grid_mapping_round_trip_keeps_left_left(name):
    """Input voxels -> model grid -> input voxels is close to the identity, mirror-free."""
    from midiffusion.pipeline.translate import _as_volume, plan_slices

    affine, shape = CASES[name]
    data = _head(shape)
    octant = (np.indices(shape) < (np.array(shape) // 2)[:, None, None, None]).all(0)
    data = np.where(octant & (data > 0), 200.0, data).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    plan, ras, ras_mask = plan_slices(img, _as_volume(img), 96)
    back = plan.from_grid(plan.to_grid(ras))
    x01, mask = plan.to_input(ras), plan.to_input(ras_mask)
    inside = mask & (ndimage_erode(mask))
    assert np.corrcoef(back[inside], x01[inside])[0, 1] > 0.9
    # a marker in one octant comes back in that octant: no axis was mirrored
    marker = (np.indices(shape) < (np.array(shape) // 2)[:, None, None, None]).all(0) & mask
    bright = back > 0.75 * back[marker].mean()
    assert (bright & marker).sum() > 10 * (bright & ~marker).sum()


def ndimage_erode(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=2)


def test_a_preset_replaces_the_card_defaults_it_names_and_explicit_options_win(tiny_model_store):
    v = tiny_model_store.verified("tiny")
    assert v.card.sampling.samples == 1  # the tiny card's fast preset: 2 of its 4 steps
    t = Translator.load(v.card, v.weights_path, precision="fp32")
    src = (_head((32, 32, 1))[:, :, 0] / 100.0)[None].astype(np.float32)
    seen: list[int] = []
    out = t.translate_slices(src, preset="fast", progress=lambda d, total: seen.append(total))
    assert seen[-1] == 2  # two steps of one draw, not the card's four
    assert np.array_equal(out, t.translate_slices(src, steps=2))
    t.translate_slices(src, preset="fast", steps=3, progress=lambda d, total: seen.append(total))
    assert seen[-1] == 3
    assert np.array_equal(t.translate_slices(src, preset="default"), t.translate_slices(src))
    with pytest.raises(ValueError, match="not offered by this model; offered: default, fast"):
        t.translate_slices(src, preset="turbo")


def test_guidance_applies_only_at_noise_levels_from_its_window_on(tiny_model_store):
    from model_store import SamplingSection

    v = tiny_model_store.verified("tiny")
    t = Translator.load(v.card, v.weights_path, precision="fp32")
    head = _head((32, 32, 1))[:, :, 0] / 100.0
    # two slices LMI tells apart (it is blind to a scaling, and this head is symmetric), so
    # their states differ after the first step on any thread count
    src = np.stack([head, np.roll(head, 4, axis=1)]).astype(np.float32)
    batches: list[int] = []
    t.net.register_forward_pre_hook(lambda _m, inputs: batches.append(inputs[0].shape[0]))
    sigmas = t.schedule.sampling_sigmas(3).tolist()  # three levels, then 0
    run = dict(steps=3, seed=4, sampler="euler-a", guidance=2.0)

    plain = t.translate_slices(src, **{**run, "guidance": 1.0})
    batches.clear()
    everywhere = t.translate_slices(src, **run, guidance_sigma_min=0.0)
    # conditional and unconditional in one batch at every step; at the first, both slices
    # share the draw's noise, so one unconditional item serves them
    assert batches == [3, 4, 4]
    batches.clear()
    window = t.translate_slices(src, **run, guidance_sigma_min=(sigmas[1] + sigmas[2]) / 2)
    assert batches == [3, 4, 2]  # the last level is below the window: one plain pass
    nowhere = t.translate_slices(src, **run, guidance_sigma_min=sigmas[0] * 2)
    assert np.array_equal(nowhere, plain)
    assert np.abs(window - everywhere).max() > 1e-3 and np.abs(window - plain).max() > 1e-3

    card = SamplingSection(guidance=2.0, guidance_sigma_min=3.0, presets={"fast": {"guidance": 1}})
    assert card.preset("fast").guidance == 1.0 and card.preset(None).guidance_sigma_min == 3.0


def test_the_unconditional_prediction_is_computed_once_per_distinct_state(tiny_model_store):
    """Slices that share a state (the first step of a volume's draw) share one unconditional
    pass, with the same result as one pass per slice."""
    import torch

    from midiffusion.diffusion.denoiser import classifier_free
    from midiffusion.diffusion.schedules import ve_to_vp

    v = tiny_model_store.verified("tiny")
    t = Translator.load(v.card, v.weights_path, precision="fp32")
    head = _head((32, 32, 1))[:, :, 0] / 100.0
    src = torch.from_numpy(
        np.stack([np.roll(head, k, axis=k % 2) * (1 - 0.05 * k) for k in range(6)])
    ).float()[:, None]
    denoiser = t.denoiser(src, guidance=2.0)
    sigma = t.schedule.sampling_sigmas(4)[:1].float()
    noise = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    # two draws of three slices each, an antithetic pair: two distinct states among six rows
    x = torch.cat([noise.expand(3, -1, -1, -1), -noise.expand(3, -1, -1, -1)]) * sigma
    batches: list[int] = []
    t.net.register_forward_pre_hook(lambda _m, inputs: batches.append(inputs[0].shape[0]))
    got = denoiser.eps(x, sigma.expand(6))
    assert batches == [6 + 2]

    steps = t.schedule.sigma_to_t(sigma.expand(6))
    x_vp = ve_to_vp(x, sigma.reshape(-1, 1, 1, 1))
    cond = denoiser.spec.condition(src, x, sigma.expand(6), denoiser.self_map)
    with torch.no_grad():
        on = torch.ones(6, dtype=torch.bool)
        each = classifier_free(t.net(x_vp, steps, cond, on), t.net(x_vp, steps, cond, ~on), 2.0)
    torch.testing.assert_close(got, each, atol=1e-5, rtol=1e-5)
    assert (got[0] - got[1]).abs().max() > 1e-3  # the slices' conditional parts still differ
