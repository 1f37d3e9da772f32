"""The published operator's way of computing faithful LMI, as the yardstick of ``bench/lmi.py``.

It follows the published code's plan (docs/lmi.md, "Parity with the published operator"): every
one of the H W P window pairs gets its own P x K kernel matrices, its K x K joint from one batched
matmul, and every marginal and joint entry its logarithm, all materialised at once in float32.
It is this project's own code, written from that description, not the published code: the bench
prints how far its similarity is from the published operator's reference vectors (about 1e-6),
and its time and peak memory, which are of the published operator's order (2-3 s and 1-2 GB per
128x128 slice on the 2-core development machine). Patch size 3 and the published defaults only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from midiffusion.lmi.faithful import EPS, wrap_pairing


def dense_faithful_similarity(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised faithful LMI similarity (B x 1 x H x W) of B x 1 x H x W float32 images."""
    p, n_bins, std = 3, 27, 8.0
    batch, _, height, width = source.shape
    centres = torch.linspace(0, 255, n_bins)

    def windows(image: torch.Tensor) -> torch.Tensor:
        q = F.pad((image * 255).to(torch.int32).float(), (1, 1, 1, 1))[:, 0]
        cols = [q[:, a : a + height, b : b + width] for a in range(p) for b in range(p)]
        return torch.stack(cols, -1).reshape(-1, p * p)

    src, tgt = windows(source), windows(target)
    u = src[:, None, :].expand(-1, p * p, -1).reshape(-1, p * p)  # same source window for all d
    w = tgt[:, wrap_pairing(p)].reshape(-1, p * p)  # candidate d's target window (wrap rule)
    ku = torch.exp(-0.5 * ((u[..., None] - centres) / std) ** 2)
    kw = torch.exp(-0.5 * ((w[..., None] - centres) / std) ** 2)
    pu = ku.mean(1)
    pu = pu / (pu.sum(-1, keepdim=True) + EPS)
    pw = kw.mean(1)
    pw = pw / (pw.sum(-1, keepdim=True) + EPS)
    joint = torch.bmm(ku.transpose(1, 2), kw)
    joint = joint / (joint.sum((1, 2), keepdim=True) + EPS)
    h_u = -(pu * torch.log2(pu + EPS)).sum(-1)
    h_w = -(pw * torch.log2(pw + EPS)).sum(-1)
    h_uw = -(joint * torch.log2(joint + EPS)).sum((1, 2))
    nmi = 2 * (h_u + h_w - h_uw + EPS) / (h_u + h_w + EPS)
    return nmi.view(batch, height * width, p * p).max(-1).values.view(batch, 1, height, width)
