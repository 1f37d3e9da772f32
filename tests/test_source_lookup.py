"""The source lookup: a translation read back through its source, one map per volume."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from tissue_support import tissues, two_tissue_slice

from midiffusion.pipeline.source_lookup import (
    apply_lookup,
    lookup_weight_for,
    matched_to,
    source_lookup,
)
from midiffusion.pipeline.translate import Translator
from model_store.card import SamplingSection


def test_the_lookup_takes_the_translations_contrast_and_the_sources_edges():
    rng = np.random.default_rng(0)
    labels, mask = tissues(3, rng)
    assert mask[0].sum() > 5_000
    # the source's intensities are a non-monotone function of the tissue (middle one darkest)
    source = np.choose(labels, [0.0, 0.6, 0.2, 0.9]) + rng.normal(0, 0.01, labels.shape)
    truth = np.choose(labels, [0.0, 0.3, 0.6, 0.9])
    # the translation has the right contrast but blurred edges and texture of its own
    translated = ndimage.gaussian_filter(truth, (0, 2, 2)) + rng.normal(0, 0.08, truth.shape)
    out = source_lookup(source, translated, mask, bandwidth=0.02)
    err_before = np.abs(translated - truth)[mask].mean()
    err_after = np.abs(out - truth)[mask].mean()
    assert err_after < 0.5 * err_before
    # the edges are the source's: every pixel of one tissue gets nearly one value
    for tissue in (1, 2, 3):
        assert out[labels == tissue].std() < 0.03
    assert not out[~mask].any()


def test_the_lookup_gives_the_translations_grey_levels_back():
    """Where tissues overlap in source intensity, their mean is duller than either; the lookup
    hands back the translation's own grey levels, in the order the means put them."""
    rng = np.random.default_rng(3)
    labels, mask = tissues(2, rng)
    # tissues 2 and 3 overlap in the source; tissue 3 is the T1's brightest (fat)
    source = np.choose(labels, [0.0, 0.3, 0.66, 0.7]) + rng.normal(0, 0.04, labels.shape)
    translated = np.choose(labels, [0.0, 0.2, 0.6, 1.0]) + rng.normal(0, 0.02, labels.shape)
    translated = translated.astype(np.float32)
    means = source_lookup(source, translated, mask, 0.02)
    assert means[mask].std() < 0.9 * translated[mask].std()  # the plain means: duller
    out = apply_lookup(translated, source, mask, 1.0, 0.02)
    quantiles = [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(
        np.quantile(out[mask], quantiles), np.quantile(translated[mask], quantiles), atol=0.01
    )
    # the order is the means': brighter means stay brighter, so fat is the brightest again
    order = np.argsort(means[mask], kind="stable")
    assert np.all(np.diff(out[mask][order]) >= -1e-6)
    assert out[labels == 3].mean() > 0.85 > means[labels == 3].mean()
    # equal values stay equal (ties take their middle rank)
    np.testing.assert_array_equal(
        matched_to(np.array([2.0, 1.0, 2.0]), np.array([0.0, 1.0, 5.0])), [3.0, 0.0, 3.0]
    )


def test_one_map_serves_the_whole_volume():
    rng = np.random.default_rng(1)
    labels, mask = tissues(4, rng)
    source = np.choose(labels, [0.0, 0.3, 0.6, 0.9]).astype(np.float32)
    # slice by slice the translation's level wanders (each slice sampled on its own)
    translated = np.choose(labels, [0.0, 0.8, 0.5, 0.2]) + np.arange(4)[:, None, None] * 0.05
    out = source_lookup(source, translated, mask, bandwidth=0.02)
    for tissue in (1, 2, 3):
        per_slice = [out[z][labels[z] == tissue].mean() for z in range(4)]
        assert max(per_slice) - min(per_slice) < 1e-3  # one value per tissue, every slice


def test_the_weight_blends_and_zero_leaves_the_translation_as_it_is():
    rng = np.random.default_rng(2)
    labels, mask = tissues(2, rng)
    source = np.choose(labels, [0.0, 0.2, 0.5, 0.8]).astype(np.float32)
    translated = rng.uniform(0, 1, labels.shape).astype(np.float32)
    off = apply_lookup(translated, source, mask, 0.0, 0.02)
    np.testing.assert_array_equal(off, np.where(mask, translated, 0))
    full = apply_lookup(translated, source, mask, 1.0, 0.02)
    half = apply_lookup(translated, source, mask, 0.5, 0.02)
    np.testing.assert_allclose(half, (full + off) / 2, atol=1e-6)
    assert not half[~mask].any()


def test_bad_arguments_are_refused():
    mask = np.ones((1, 20, 20), bool)
    x = np.zeros((1, 20, 20), np.float32)
    with pytest.raises(ValueError, match="differ in shape"):
        source_lookup(x, x[:, :10], mask, 0.02)
    with pytest.raises(ValueError, match="bandwidth"):
        source_lookup(x, x, mask, 0.0)
    assert not source_lookup(x + 1, x + 1, ~mask, 0.02).any()  # no foreground: all background
    with pytest.raises(ValueError):
        SamplingSection(lookup_weight_head=1.5)


def test_the_weight_follows_the_kind_of_input():
    card = SamplingSection(lookup_weight=0.25, lookup_weight_head=1.0)
    assert lookup_weight_for(card, "brain") == 0.25
    assert lookup_weight_for(card, "head") == 1.0


def test_translate_reads_a_head_back_through_its_source(tiny_model_store):
    """A 160x160 two-tissue slice: with the lookup on, each tissue comes out as one grey level
    (the source's edges); off, the sampled texture stays. The card's weight decides."""
    v = tiny_model_store.verified("tiny")
    sampling = v.card.sampling.model_copy(update={"lookup_weight": 1.0})
    translator = Translator.load(v.card.model_copy(update={"sampling": sampling}), v.weights_path)
    image, inside, left = two_tissue_slice()
    run = dict(steps=2, seed=3)

    looked = translator.translate(image, **run).get_fdata()
    plain = translator.translate(image, lookup=False, **run).get_fdata()
    assert looked.shape == plain.shape == image.shape
    for tissue in (left, inside & ~left):
        part = ndimage.binary_erosion(tissue, iterations=8)  # away from the resampled edges
        assert looked[part].std() < 0.2 * plain[part].std()
    # both are anchored to the card's mean; the lookup rearranges grey levels, it adds none
    assert looked[inside].mean() == pytest.approx(plain[inside].mean(), abs=0.03)
    assert not looked[~inside].any()
