"""Faithful-mode LMI reproduces the published operator on its reference vectors (tests/data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midiffusion.lmi import local_mutual_information
from midiffusion.lmi.faithful import wrap_pairing

CASES = [
    f"{z}_{pair}_{est}"
    for z in ("z70", "z95")
    for pair in ("cross", "noisy", "self")
    for est in ("nmi", "mi")
]


@pytest.fixture(scope="module")
def reference(test_data):
    with np.load(test_data / "lmi_faithful_128.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module", params=["cpu kernel", "torch path"])
def batched_results(reference, request):
    """All cases of one estimator in one batched call (also exercises batching), on the compiled
    CPU kernel (where numba is installed) and on the torch path that other devices run."""
    import midiffusion.lmi.faithful as lf

    kernel = request.param == "cpu kernel"
    if kernel and not lf.use_sparse_kernel(torch.device("cpu"), torch.float32):
        pytest.skip("numba not installed")
    out = {}
    saved, lf.SPARSE_CPU_KERNEL = lf.SPARSE_CPU_KERNEL, kernel
    try:
        for est in ("nmi", "mi"):
            names = [c for c in CASES if c.rsplit("_", 1)[1] == est]
            src = torch.from_numpy(np.stack([reference[f"{c}_source"] for c in names]))[:, None]
            tgt = torch.from_numpy(np.stack([reference[f"{c}_target"] for c in names]))[:, None]
            res = local_mutual_information(src, tgt, mode="faithful", normalized=est == "nmi")
            for i, name in enumerate(names):
                out[name] = (res.aligned[i, 0].numpy(), res.similarity[i, 0].numpy())
    finally:
        lf.SPARSE_CPU_KERNEL = saved
    return out


@pytest.mark.parametrize("case", CASES)
def test_faithful_matches_published_operator(case, reference, batched_results):
    aligned, similarity = batched_results[case]
    np.testing.assert_allclose(similarity, reference[f"{case}_similarity"], rtol=0, atol=1e-4)
    unique = reference[f"{case}_margin"] > 1e-5
    assert unique.sum() > 1000
    agree = (aligned == reference[f"{case}_aligned"])[unique].mean()
    assert agree >= 0.999, f"aligned agrees on {agree:.4%} of uniquely-won pixels"


def test_faithful_noise_saturation_is_reproduced(reference, batched_results):
    # The published epsilon artefact: NMI = 2 on out-of-range noisy windows. Faithful keeps it.
    _, similarity = batched_results["z70_noisy_nmi"]
    assert (similarity > 1.99).mean() > 0.05


def test_wrap_rule_matches_the_documented_example():
    # the published window rule: for d = (-1, -1) the rows are (i1, i1-1, i1), columns likewise.
    sigma = wrap_pairing(3)
    row_offsets = (0, -1, 0)
    expected = [(a + 1) * 3 + (b + 1) for a in row_offsets for b in row_offsets]
    assert sigma[0].tolist() == expected
    assert sigma[4].tolist() == list(range(9))  # d = (0, 0) is the query's own window
    assert len(set(sigma[0].tolist())) == 4  # corner candidates see 4 distinct pixels
    assert len(set(sigma[1].tolist())) == 6  # edge candidates see 6
    # p = 5: every candidate stays inside the query's own 5 x 5 neighbourhood.
    assert int(wrap_pairing(5).max()) == 24


def test_faithful_float32_matches_float64_arithmetic(reference, monkeypatch):
    # The float32 pipeline must not lose precision on epsilon-dominated noisy windows (float64
    # runs the torch path, so on the CPU this also checks the compiled kernel against it).
    import midiffusion.lmi.faithful as lf

    src = torch.from_numpy(reference["z70_noisy_nmi_source"])[None, None, 40:80, :40]
    tgt = torch.from_numpy(reference["z70_noisy_nmi_target"])[None, None, 40:80, :40]
    low = local_mutual_information(src, tgt, mode="faithful").similarity
    monkeypatch.setattr(lf, "COMPUTE_DTYPE", torch.float64)
    high = local_mutual_information(src, tgt, mode="faithful").similarity
    assert (low.double() - high.double()).abs().max() < 2e-6


@pytest.mark.parametrize("case", ["z95_cross_nmi", "z70_noisy_mi"])
def test_faithful_bin_bands_change_nothing(case, reference, monkeypatch):
    # Leaving out bins where every kernel value is below 1e-10 must not move the result.
    import midiffusion.lmi.faithful as lf

    src = torch.from_numpy(reference[f"{case}_source"])[None, None, 30:90, 20:80]
    tgt = torch.from_numpy(reference[f"{case}_target"])[None, None, 30:90, 20:80]
    normalized = case.endswith("_nmi")
    monkeypatch.setattr(lf, "SPARSE_CPU_KERNEL", False)  # bands are the torch path's
    banded = local_mutual_information(src, tgt, mode="faithful", normalized=normalized)
    monkeypatch.setattr(lf, "_BAND_WIDTHS", ())
    full = local_mutual_information(src, tgt, mode="faithful", normalized=normalized)
    assert (banded.similarity - full.similarity).abs().max() < 1e-6


def test_faithful_works_at_other_sizes_and_translates_consistently(reference):
    # The published code hard-codes 128; here any H x W works, and a crop away from the image
    # border gives the same interior values as the full image.
    src = torch.from_numpy(reference["z95_cross_nmi_source"])[None, None]
    tgt = torch.from_numpy(reference["z95_cross_nmi_target"])[None, None]
    full = local_mutual_information(src, tgt, mode="faithful").similarity
    crop = local_mutual_information(
        src[..., 20:91, 30:77].contiguous(), tgt[..., 20:91, 30:77].contiguous(), mode="faithful"
    ).similarity
    assert crop.shape == (1, 1, 71, 47)
    torch.testing.assert_close(crop[..., 1:-1, 1:-1], full[..., 21:90, 31:76], rtol=0, atol=1e-6)
