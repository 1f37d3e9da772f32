"""The compiled sparse CPU kernel of faithful LMI gives the torch path's scores, and is dispatched
only where it can run (CPU, float32, numba installed); CUDA keeps the torch path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import midiffusion.lmi.faithful as lf
from midiffusion.lmi import faithful_sparse, local_mutual_information

pytestmark = pytest.mark.skipif(not faithful_sparse.available(), reason="numba not installed")


def _compare(monkeypatch, src, tgt, atol, min_clear=0.3, patch_size=3, **kw):
    """The sparse kernel's result against the torch path's for the same faithful call:
    similarity within atol everywhere, aligned equal wherever the winner is clear."""
    assert lf.use_sparse_kernel(src.device, lf.COMPUTE_DTYPE)
    bins, bandwidth, normalized = kw.get("bins"), kw.get("bandwidth"), kw.get("normalized", True)
    kwargs = {"patch_size": patch_size, "search_radius": (patch_size - 1) // 2}
    kwargs |= {"bins": bins, "bandwidth": bandwidth}
    sparse = local_mutual_information(src, tgt, mode="faithful", normalized=normalized, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(lf, "SPARSE_CPU_KERNEL", False)
        torch_path = local_mutual_information(
            src, tgt, mode="faithful", normalized=normalized, **kwargs
        )
    diff = (sparse.similarity - torch_path.similarity).abs()
    assert float(diff.max()) < atol, f"similarity differs by up to {float(diff.max()):.2e}"
    # aligned may only differ where the best two candidates are within rounding of each other.
    top2 = _scores(src, tgt, patch_size, bins, bandwidth, normalized).topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1] > 1e-5)[:, None]
    assert int(clear.sum()) >= min_clear * clear.numel()
    assert bool((sparse.aligned == torch_path.aligned)[clear].all())


def test_dispatch_picks_the_kernel_only_for_float32_cpu(monkeypatch):
    assert lf.use_sparse_kernel(torch.device("cpu"), torch.float32)
    assert not lf.use_sparse_kernel(torch.device("cuda"), torch.float32)
    assert not lf.use_sparse_kernel(torch.device("cuda", 0), torch.float32)
    assert not lf.use_sparse_kernel(torch.device("mps"), torch.float32)
    assert not lf.use_sparse_kernel(torch.device("cpu"), torch.float64)
    monkeypatch.setattr(faithful_sparse, "numba", None)
    assert not lf.use_sparse_kernel(torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="needs numba"):
        faithful_sparse.candidate_scores(*[None] * 8)


def test_without_numba_the_torch_path_runs(reference, monkeypatch):
    src = torch.from_numpy(reference["z95_cross_nmi_source"])[None, None, 50:70, 40:64]
    tgt = torch.from_numpy(reference["z95_cross_nmi_target"])[None, None, 50:70, 40:64]
    with_kernel = local_mutual_information(src, tgt, mode="faithful")
    monkeypatch.setattr(faithful_sparse, "numba", None)
    without = local_mutual_information(src, tgt, mode="faithful")
    assert float((with_kernel.similarity - without.similarity).abs().max()) < 2e-6


@pytest.mark.parametrize("case", ["z70_noisy_mi", "z95_self_nmi"])
def test_kernel_matches_the_torch_path_on_whole_slices(case, reference, monkeypatch):
    src = torch.from_numpy(reference[f"{case}_source"])[None, None]
    tgt = torch.from_numpy(reference[f"{case}_target"])[None, None]
    _compare(monkeypatch, src, tgt, 5e-6, normalized=case.endswith("_nmi"))


@pytest.mark.parametrize(
    "offset",
    [
        1.3,  # every target sample far above 255: all kernel values underflow to 0
        1.18,  # 300-350 grey levels: kernel values of 1e-30..1e-10, the epsilon regime
        -0.2,  # below 0, partly overlapping the bins
    ],
)
def test_kernel_matches_in_the_epsilon_regime(offset, monkeypatch):
    # Out-of-range targets: NMI saturates at 2 as published; the kernel must keep that exactly.
    gen = torch.Generator().manual_seed(3)
    src = torch.rand(2, 1, 24, 20, generator=gen)
    tgt = offset + 0.05 * torch.rand(2, 1, 24, 20, generator=gen)
    tgt[1, 0, :, 10:] = torch.rand(24, 10, generator=gen)  # and a half in range
    for normalized in (True, False):
        # (where every target is out of range, many candidates tie: aligned is checked where not)
        _compare(monkeypatch, src, tgt, 5e-6, min_clear=0.0, normalized=normalized)


def test_kernel_matches_for_other_patch_bins_and_bandwidth(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 30), torch.linspace(-1, 1, 26), indexing="ij")
    phantom = ((xx**2 + yy**2) < 0.6).float() * 0.6 + 0.2 * (xx > 0).float()
    src = (phantom + 0.02 * torch.randn(30, 26, generator=gen))[None, None].clamp(0, 1)
    tgt = (1 - phantom + 0.3 * torch.randn(30, 26, generator=gen))[None, None]
    for kwargs in ({"patch_size": 5}, {"bins": 12}, {"bins": 40, "bandwidth": 0.01}):
        _compare(monkeypatch, src, tgt, 5e-6, **kwargs)


def test_identical_candidates_tie_exactly_and_the_first_wins(reference):
    # A flat target window makes every candidate's samples equal: the scores must tie exactly,
    # so the first candidate (row-major) wins, as published.
    src = torch.from_numpy(reference["z70_cross_nmi_source"])[None, None, 60:68, 60:68]
    tgt = torch.full_like(src, 0.5)
    scores = _scores(src, tgt)
    inner = scores[:, 1:-1, 1:-1]  # the border sees the zero padding
    assert bool((inner == inner[..., :1]).all())


def _scores(src, tgt, patch_size=3, bins=None, bandwidth=None, normalized=True) -> torch.Tensor:
    """The kernel's scores of every candidate (B x H x W x P), with faithful mode's settings."""
    r = (patch_size - 1) // 2
    q_src = torch.nn.functional.pad((src * 255).to(torch.int32)[:, 0], (r, r, r, r))
    q_tgt = torch.nn.functional.pad((tgt * 255).to(torch.int32)[:, 0], (r, r, r, r))
    lo, hi = int(min(q_src.min(), q_tgt.min())), int(max(q_src.max(), q_tgt.max()))
    levels = torch.arange(lo, hi + 1, dtype=torch.float32)
    centres = torch.linspace(0, 255, patch_size**3 if bins is None else bins)
    std = 8.0 if bandwidth is None else 255.0 * bandwidth
    table = torch.exp(-0.5 * ((levels[:, None] - centres) / std) ** 2)
    sigma = lf.wrap_pairing(patch_size)
    return faithful_sparse.candidate_scores(q_src, q_tgt, lo, table, sigma, std, normalized, lf.EPS)


@pytest.fixture(scope="module")
def reference(test_data):
    with np.load(test_data / "lmi_faithful_128.npz") as data:
        return {k: data[k] for k in data.files}
