"""Clean-mode LMI: agrees with a naive loop, is differentiable, invariant and discriminative."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from midiffusion.lmi import LMISettings, SourceLMI, local_mutual_information
from midiffusion.lmi.clean import auto_bandwidth


def naive_lmi(source, target, p, radius, h_src, h_tgt, normalized):
    """Straight from the definition: loops, logs of kernel row sums, float64 numpy."""
    s = source.detach().double().numpy()
    x = target.detach().double().numpy()
    batch, _, height, width = s.shape
    r = (p - 1) // 2
    n = p * p

    def read(img, y, xx):
        return img[y, xx] if 0 <= y < height and 0 <= xx < width else 0.0

    aligned = np.zeros_like(s)
    sim = np.zeros_like(s)
    margin = np.zeros_like(s)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                u = np.array(
                    [
                        read(s[b, 0], i + a, j + c)
                        for a in range(-r, r + 1)
                        for c in range(-r, r + 1)
                    ]
                )
                ka = np.exp(-((u[:, None] - u[None, :]) ** 2) / (2 * h_src[b] ** 2))
                h_s = np.mean(np.log(n / ka.sum(1)))
                scores, values = [], []
                for dy in range(-radius, radius + 1):
                    for dx in range(-radius, radius + 1):
                        w = np.array(
                            [
                                read(x[b, 0], i + dy + a, j + dx + c)
                                for a in range(-r, r + 1)
                                for c in range(-r, r + 1)
                            ]
                        )
                        kb = np.exp(-((w[:, None] - w[None, :]) ** 2) / (2 * h_tgt[b] ** 2))
                        h_t = np.mean(np.log(n / kb.sum(1)))
                        h_st = np.mean(np.log(n / (ka * kb).sum(1)))
                        mi = h_s + h_t - h_st
                        if normalized:
                            score = 0.0 if h_s + h_t == 0 else min(max(2 * mi / (h_s + h_t), 0), 1)
                        else:
                            score = min(max(mi / math.log(n), 0.0), 1.0)
                        scores.append(score)
                        values.append(read(x[b, 0], i + dy, j + dx))
                order = np.argsort(-np.array(scores), kind="stable")  # first wins ties
                sim[b, 0, i, j] = scores[order[0]]
                aligned[b, 0, i, j] = values[order[0]]
                margin[b, 0, i, j] = scores[order[0]] - scores[order[1]] if n > 1 else 1.0
    return aligned, sim, margin


@pytest.mark.parametrize(
    ("shape", "patch_size", "radius", "normalized"),
    [
        ((2, 1, 7, 9), 3, 1, True),
        ((1, 1, 6, 5), 3, 2, True),
        ((1, 1, 7, 8), 3, 1, False),
        ((1, 1, 8, 8), 5, 1, True),
    ],
)
def test_clean_matches_naive_loop(shape, patch_size, radius, normalized):
    gen = torch.Generator().manual_seed(sum(shape) + patch_size + radius)
    source = torch.rand(shape, generator=gen, dtype=torch.float64)
    target = 3.0 * torch.randn(shape, generator=gen, dtype=torch.float64)
    source[..., :2, :] = 0.0  # flat zero rows: ties and zero-entropy windows
    result = local_mutual_information(
        source,
        target,
        patch_size=patch_size,
        search_radius=radius,
        bandwidth="auto",
        normalized=normalized,
    )
    h_src = auto_bandwidth(source).flatten().tolist()
    h_tgt = auto_bandwidth(target).flatten().tolist()
    aligned, sim, margin = naive_lmi(source, target, patch_size, radius, h_src, h_tgt, normalized)
    np.testing.assert_allclose(result.similarity.numpy(), sim, atol=1e-10)
    unique = margin > 1e-9
    assert unique.mean() > 0.5
    np.testing.assert_array_equal(result.aligned.numpy()[unique], aligned[unique])
    # Exact ties (flat zero rows score 0 everywhere): the first offset in row-major order wins.
    tied = margin == 0
    np.testing.assert_array_equal(result.aligned.numpy()[tied], aligned[tied])


def test_clean_float32_close_to_float64():
    gen = torch.Generator().manual_seed(3)
    source = torch.rand(2, 1, 20, 23, generator=gen, dtype=torch.float64)
    target = torch.randn(2, 1, 20, 23, generator=gen, dtype=torch.float64)
    ref = local_mutual_information(source, target).similarity
    low = local_mutual_information(source.float(), target.float()).similarity
    assert low.dtype == torch.float32
    assert (low.double() - ref).abs().max() < 1e-4


@pytest.mark.parametrize("bandwidth", [0.3, "auto"])
def test_clean_gradcheck_both_inputs(bandwidth):
    gen = torch.Generator().manual_seed(7)
    source = torch.rand(1, 1, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 1, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(s, x):
        res = local_mutual_information(s, x, bandwidth=bandwidth)
        return res.similarity, res.aligned

    # The full Jacobian for the default; a random projection (fast mode) for the fixed width.
    fast = bandwidth != "auto"
    assert torch.autograd.gradcheck(fn, (source, target), eps=1e-6, atol=1e-5, fast_mode=fast)
    sim = local_mutual_information(source, target, bandwidth=bandwidth).similarity
    grads = torch.autograd.grad(sim.sum(), (source, target))
    assert all(bool(g.abs().sum() > 0) for g in grads)


def _phantom(levels, size=28, noise=0.002, seed=0):
    """Piecewise-constant phantom: background, a disc, a ring and a bar, plus small noise.
    Returns (label image, intensity image)."""
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64),
        torch.arange(size, dtype=torch.float64),
        indexing="ij",
    )
    rad = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[rad < 0.42 * size] = 1
    labels[rad < 0.28 * size] = 2
    labels[(xx > size * 0.45) & (xx < size * 0.6) & (rad < 0.42 * size)] = 3
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor(levels, dtype=torch.float64)[labels]
    values = values + noise * torch.randn(size, size, generator=gen, dtype=torch.float64)
    return labels, values[None, None]


LEVELS = (0.1, 0.35, 0.6, 0.85)
MAPS = {
    "monotone-increasing": lambda v: v**2,
    "monotone-decreasing": lambda v: 1.1 - v,
    # A bijection of [0, 1) that is not monotone: it permutes the tissue levels
    # (0.1, 0.35, 0.6, 0.85) -> (0.6, 0.85, 0.1, 0.35).
    "non-monotone": lambda v: torch.remainder(v + 0.5, 1.0),
}


@pytest.mark.parametrize("name", MAPS)
def test_clean_similarity_ignores_how_tissues_are_coloured(name):
    """Tolerance: 0.025 on every pixel at least 2 pixels from the border (the zero padding does
    not go through the map). The default bandwidth scales with the image, so the map changes only
    how far apart the levels are in bandwidths (>= 3 here) and how large the noise is."""
    _, source = _phantom(LEVELS)
    _, target = _phantom((0.9, 0.2, 0.6, 0.35), seed=1)  # same anatomy, another contrast
    base = local_mutual_information(source, target).similarity[..., 2:-2, 2:-2]
    mapped = local_mutual_information(MAPS[name](source), target).similarity[..., 2:-2, 2:-2]
    assert float(base.max()) > 0.9  # the test means something: the boundaries score high
    assert float((mapped - base).abs().max()) < 0.025


@pytest.mark.parametrize("name", ["monotone-decreasing", "non-monotone"])
def test_clean_similarity_exact_under_level_permutations(name):
    """With a fixed bandwidth and maps that keep the noise and the level gaps, the estimator only
    sees the partition of each patch: equal to 1e-9."""
    _, source = _phantom(LEVELS)
    _, target = _phantom((0.9, 0.2, 0.6, 0.35), seed=1)
    base = local_mutual_information(source, target, bandwidth=0.03).similarity[..., 2:-2, 2:-2]
    mapped = local_mutual_information(MAPS[name](source), target, bandwidth=0.03).similarity
    assert float((mapped[..., 2:-2, 2:-2] - base).abs().max()) < 1e-9


def test_clean_high_for_structure_against_itself_low_for_independent_noise():
    labels, source = _phantom(LEVELS, size=40)
    result = local_mutual_information(source, source).similarity[0, 0]
    # Patches that straddle a tissue boundary: identical structure scores near 1.
    padded = torch.nn.functional.pad(labels[None, None].double(), (1, 1, 1, 1), mode="replicate")
    spread = torch.nn.functional.max_pool2d(padded, 3, 1) + torch.nn.functional.max_pool2d(
        -padded, 3, 1
    )
    edges = spread[0, 0] > 0
    assert float(result[edges].mean()) > 0.9
    gen = torch.Generator().manual_seed(5)
    noise_a = torch.rand(1, 1, 40, 40, generator=gen, dtype=torch.float64)
    noise_b = torch.randn(1, 1, 40, 40, generator=gen, dtype=torch.float64)
    independent = local_mutual_information(noise_a, noise_b).similarity
    assert float(independent.mean()) < 0.15
    vs_noise = local_mutual_information(source, 3 * noise_b).similarity[0, 0]
    assert float(vs_noise[edges].mean()) < 0.3


def test_clean_is_safe_on_extreme_values():
    gen = torch.Generator().manual_seed(2)
    source = torch.rand(2, 1, 12, 12, generator=gen)
    target = 1e4 * torch.randn(2, 1, 12, 12, generator=gen)
    for normalized in (True, False):
        sim = local_mutual_information(source, target, normalized=normalized).similarity
        assert bool(torch.isfinite(sim).all())
        assert float(sim.min()) >= 0.0 and float(sim.max()) <= 1.0
    sim = local_mutual_information(source, target, bandwidth=1e-3).similarity
    assert bool(torch.isfinite(sim).all()) and float(sim.max()) <= 1.0


def test_pair_kernels_match_their_definition_at_full_size():
    # _pair_g evaluates each distinct sample vector once and slices it per pair; the definition
    # takes every pair's two samples directly. Full-size images, so that edges and strides of
    # the shared planes are exercised as in sampling.
    from midiffusion.lmi.clean import _pair_g, _pairs

    gen = torch.Generator().manual_seed(5)
    for p in (3, 5):
        padded = torch.rand(3, 1, 128 + p - 1, 96 + p - 1, generator=gen)
        h = torch.tensor([0.05, 0.1, 0.3]).view(-1, 1, 1, 1)
        offsets, first, second = _pairs(p)
        samples = [padded[:, 0, a : a + 128, b : b + 96] for a, b in offsets]
        diff = torch.stack(
            [samples[n] - samples[m] for n, m in zip(first, second, strict=True)], dim=1
        )
        expected = -torch.expm1(diff.square() * (-0.5 / h**2))
        # the same arithmetic; only where a vector loop's scalar tail falls may differ (an ulp)
        torch.testing.assert_close(_pair_g(padded, h, 128, 96, p), expected, rtol=1e-6, atol=1e-7)


def test_source_lmi_reused_for_many_targets_gives_fresh_results():
    # The sampler's case: one source, a new target at every step. Nothing a call does may change
    # the source's cached half (several batch chunks at this size).
    gen = torch.Generator().manual_seed(6)
    source = torch.rand(8, 1, 128, 128, generator=gen)
    targets = [torch.rand(8, 1, 128, 128, generator=gen), source.flip(-1), source]
    lmi = SourceLMI(source, LMISettings())
    first = [lmi(t) for t in targets]
    again = [lmi(t) for t in reversed(targets)][::-1]
    for a, b, t in zip(first, again, targets, strict=True):
        fresh = local_mutual_information(source, t)
        assert torch.equal(a.similarity, fresh.similarity) and torch.equal(a.aligned, fresh.aligned)
        assert torch.equal(b.similarity, a.similarity) and torch.equal(b.aligned, a.aligned)
