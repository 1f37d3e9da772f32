"""The comparison methods and the evaluation's small helpers, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midiffusion.diffusion.schedules import DDPMSchedule
from midiffusion.evaluation import baselines
from midiffusion.evaluation.directions import select_slices
from midiffusion.evaluation.metrics import slice_consistency
from midiffusion.pipeline.translate import Translator


def _slice(size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    mask = yy**2 + xx**2 < 0.16
    img = np.where(mask, 0.3 + 0.5 * (xx + 0.5), 0).astype(np.float32)
    return img[None], mask[None]


def test_histogram_map_takes_the_priors_values_and_keeps_or_reverses_order() -> None:
    src, mask = _slice()
    prior = baselines.target_prior(np.linspace(0, 1, 1001)[None, None] ** 2)
    assert prior.min() > 0  # the zero background is not part of the prior
    plain = baselines.histogram_map(src, mask, prior)
    inverted = baselines.histogram_map(src, mask, prior, invert=True)
    assert not plain[~mask].any() and not inverted[~mask].any()
    s, p, q = src[mask], plain[mask], inverted[mask]
    order = np.argsort(s, kind="stable")
    assert np.all(np.diff(p[order]) >= 0) and np.all(np.diff(q[order]) <= 0)
    # tied source values map to one output value
    for v in np.unique(s)[:5]:
        assert np.ptp(p[s == v]) == 0
    # the output histogram is the prior's: its median is the prior's median (x^2 -> 0.25)
    assert np.median(p) == pytest.approx(0.25, abs=0.03)
    assert np.median(q) == pytest.approx(0.25, abs=0.03)


def test_histogram_best_picks_per_slice_by_nmi_to_the_source() -> None:
    src, mask = _slice()
    src2 = np.concatenate([src, src])
    mask2 = np.concatenate([mask, mask])
    good = src2.copy()  # a copy of the source: NMI 1
    bad = np.where(mask2, 0.5, 0).astype(np.float32)  # flat: NMI 0
    plain = np.stack([good[0], bad[1]])
    inverted = np.stack([bad[0], good[1]])
    best, chose = baselines.histogram_best(plain, inverted, src2, mask2)
    assert chose.tolist() == [False, True]
    np.testing.assert_array_equal(best, good)


def test_target_prior_refuses_empty_data() -> None:
    with pytest.raises(ValueError, match="foreground"):
        baselines.target_prior(np.zeros((2, 4, 4)))


def test_sdedit_sigmas_start_at_t0_and_follow_the_schedule_tail() -> None:
    sched = DDPMSchedule()
    sig = baselines.sdedit_sigmas(sched, 500, 20)
    assert float(sig[0]) == pytest.approx(float(sched.sigmas[499]))
    assert float(sig[-1]) == 0 and torch.all(sig[:-1] > sig[1:])
    full = sched.sampling_sigmas(20)
    np.testing.assert_allclose(sig[1:].numpy(), full[full < sched.sigmas[499]].numpy())
    assert 9 <= len(sig) - 1 <= 12  # about steps * t0 / T
    with pytest.raises(ValueError, match="t0"):
        baselines.sdedit_sigmas(sched, 0, 20)


def test_sdedit_is_seeded_and_keeps_the_source_at_small_t0(tiny_model_store) -> None:
    v = tiny_model_store.verified("tiny")
    tr = Translator.load(v.card, v.weights_path)
    yy, xx = np.mgrid[:32, :32] / 32 - 0.5
    src = np.stack([np.clip(0.8 - 2 * (yy**2 + xx**2), 0, 1)] * 2).astype(np.float32)
    a = baselines.sdedit(tr, src, t0=300, steps=6, seed=1)
    b = baselines.sdedit(tr, src, t0=300, steps=6, seed=1)
    c = baselines.sdedit(tr, src, t0=300, steps=6, seed=2)
    assert a.shape == src.shape and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # at a tiny t0 the noise is small: the output stays close to the source
    close = baselines.sdedit(tr, src, t0=2, steps=6, seed=1)
    assert np.abs(close - src).mean() < 0.05 < np.abs(a - src).mean()


def test_select_slices_and_consistency() -> None:
    assert select_slices(10, None).tolist() == list(range(10))
    assert select_slices(10, 3).tolist() == [0, 4, 9]  # evenly spaced, ends included
    assert select_slices(5, 50).tolist() == list(range(5))
    vol = np.zeros((3, 4, 4), np.float32)
    vol[1] = 0.5
    mask = np.ones_like(vol, bool)
    assert slice_consistency(vol, mask) == pytest.approx(0.5)
    assert slice_consistency(np.ones_like(vol), mask) == 0.0
