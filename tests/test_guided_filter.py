"""The source-guided filter: the translation's local grey levels on the source's local edges."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from tissue_support import tissues, two_tissue_slice

from midiffusion.pipeline.guided_filter import (
    apply_guided_filter,
    guided_weight_for,
    source_guided,
)
from midiffusion.pipeline.source_lookup import apply_lookup
from midiffusion.pipeline.translate import Translator
from model_store.card import SamplingSection

EPS = 3e-4


def test_invented_texture_goes_and_the_translations_contrast_stays():
    rng = np.random.default_rng(0)
    labels, mask = tissues(3, rng, slice_sigma=0)
    assert mask[0].sum() > 5_000
    # a non-monotone source contrast (the middle tissue darkest); the translation is right on
    # average but carries fine texture that the source does not show
    source = np.choose(labels, [0.0, 0.6, 0.2, 0.9]) + rng.normal(0, 0.01, labels.shape)
    truth = np.choose(labels, [0.0, 0.3, 0.6, 0.9])
    translated = np.clip(truth + rng.normal(0, 0.08, truth.shape), 0, 1) * mask
    out = source_guided(translated, source, mask, EPS)
    assert out.shape == translated.shape and out.dtype == np.float32
    err_before = np.abs(translated - truth)[mask].mean()
    err_after = np.abs(out - truth)[mask].mean()
    assert err_after < 0.6 * err_before
    for tissue in (1, 2, 3):  # each tissue keeps the translation's level
        assert out[labels == tissue].mean() == pytest.approx(
            truth[labels == tissue].mean(), abs=0.03
        )
    assert not out[~mask].any() and out.min() >= 0 and out.max() <= 1


def test_tissues_that_share_a_source_intensity_keep_their_own_levels():
    """The volume-wide lookup gives tissues of one source intensity one value; the filter,
    working in small windows, keeps what the translation says about each of them."""
    rng = np.random.default_rng(1)
    labels, mask = tissues(2, rng, slice_sigma=0)
    source = np.choose(labels, [0.0, 0.3, 0.7, 0.7]) + rng.normal(0, 0.01, labels.shape)
    translated = np.choose(labels, [0.0, 0.2, 0.5, 0.9]).astype(np.float32)
    plane = np.ones((1, 3, 3), bool)  # erode within each slice
    inner = {t: ndimage.binary_erosion(labels == t, plane, iterations=3) for t in (2, 3)}
    looked = apply_lookup(translated, source, mask, 1.0, 0.02)
    filtered = apply_guided_filter(translated, source, mask, 1.0, EPS)
    assert abs(looked[inner[3]].mean() - looked[inner[2]].mean()) < 0.1
    assert filtered[inner[3]].mean() - filtered[inner[2]].mean() == pytest.approx(0.4, abs=0.02)


def test_the_weight_blends_and_the_background_stays_black():
    rng = np.random.default_rng(2)
    labels, mask = tissues(1, rng, slice_sigma=0)
    source = np.choose(labels, [0.0, 0.2, 0.5, 0.8])
    translated = np.clip(
        np.choose(labels, [0.3, 0.8, 0.5, 0.2]) + rng.normal(0, 0.05, labels.shape), 0, 1
    )
    off = apply_guided_filter(translated, source, mask, 0.0, EPS)
    assert np.array_equal(off, np.where(mask, translated, 0).astype(np.float32))
    full = apply_guided_filter(translated, source, mask, 1.0, EPS)
    half = apply_guided_filter(translated, source, mask, 0.5, EPS)
    np.testing.assert_allclose(half, (off + full) / 2, atol=1e-6)
    assert not full[~mask].any()
    # one (H, W) slice is filtered as the same slice in a stack
    np.testing.assert_allclose(
        source_guided(translated[0], source[0], mask[0], EPS), full[0], atol=1e-6
    )


def test_bad_arguments_are_refused():
    x = np.zeros((1, 20, 20), np.float32)
    mask = np.ones_like(x, bool)
    with pytest.raises(ValueError, match="differ in shape"):
        source_guided(x, x[:, :10], mask, EPS)
    with pytest.raises(ValueError, match="eps"):
        source_guided(x, x, mask, 0.0)
    with pytest.raises(ValueError):
        SamplingSection(guided_weight_head=1.5)


def test_the_weight_follows_the_kind_of_input():
    card = SamplingSection(guided_weight=0.5, guided_weight_head=1.0)
    assert guided_weight_for(card, "brain") == 0.5
    assert guided_weight_for(card, "head") == 1.0
    assert SamplingSection().guided_weight == SamplingSection().guided_weight_head == 0.0


def test_translate_applies_the_cards_guided_filter(tiny_model_store):
    """A 160x160 slice of two tissues, through the whole translation: with the card's guided
    filter on, the sampled texture inside each tissue is smoothed; --no-lookup turns it off."""
    v = tiny_model_store.verified("tiny")
    sampling = v.card.sampling.model_copy(update={"lookup_weight": 0.0, "guided_weight": 1.0})
    translator = Translator.load(v.card.model_copy(update={"sampling": sampling}), v.weights_path)
    image, inside, left = two_tissue_slice()
    run = dict(steps=2, seed=3, kind="brain")

    filtered = translator.translate(image, **run).get_fdata()
    plain = translator.translate(image, lookup=False, **run).get_fdata()
    assert filtered.shape == plain.shape == image.shape
    for tissue in (left, inside & ~left):
        part = ndimage.binary_erosion(tissue, iterations=8)
        assert filtered[part].std() < 0.7 * plain[part].std()
    assert not filtered[~inside].any()
