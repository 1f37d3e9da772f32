"""The meaning of ``bandwidth="auto"`` is a contract with every trained model: pin it."""

from __future__ import annotations

import torch

from midiffusion.lmi.clean import auto_bandwidth


def test_auto_bandwidth_values_are_pinned():
    # Fixed inputs, values recorded when the shipped t1w model started training (lmi recipe of
    # 2026-11-22). If this fails, a trained model would see different conditioning: give the new
    # rule a new name instead of changing "auto".
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    inside = ((yy - 32) ** 2 + (xx - 32) ** 2) < 24**2
    phantom = (0.4 + 0.4 * (xx > 32)) * inside + 0.02 * torch.randn(64, 64, generator=gen) * inside
    noisy = torch.rand(64, 64, generator=gen)
    h = auto_bandwidth(torch.stack([phantom, noisy])[:, None]).flatten()
    assert torch.allclose(h, torch.tensor(PINNED), atol=1e-6), h.tolist()


PINNED = [0.042798288, 0.637275815]
