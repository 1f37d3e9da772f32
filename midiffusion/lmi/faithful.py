"""Faithful LMI: the published operator (``statistical_align``), same rules, any image size.

What is reproduced (docs/lmi.md): intensities become trunc(255 v) as int32 (from
float32, as published); K bins (default p^3) centred at linspace(0, 255, K); Gaussian kernel of
standard deviation h = 2 sigma^2 = 8 grey levels; marginals are the mean kernel value over the P
samples divided by (their sum + 1e-10); the joint is the sum of the P kernel outer products divided
by (its total + 1e-10); entropies in bits, -Σ p log2(p + 1e-10); NMI = 2(MI + 1e-10) / (H_U + H_W +
1e-10), or raw MI in bits; candidate windows follow the published wrap rule
o(d, δ) = floor(m/p) + (m mod p) - r with m = r + d + δ per axis; zero padding; the maximum over
candidates with the first candidate in row-major order winning ties.

On the CPU, float32 calls run the compiled sparse kernel of :mod:`faithful_sparse` instead (about
30x the published computation; ``use_sparse_kernel`` decides). The torch path below serves every
other device, CUDA included, and float64.

How the torch path is fast (about 12x the published code on one CPU core) without changing the
result:

- the inputs are integers after truncation, so kernel values come from a lookup table;
- under the wrap rule every candidate of pixel i pairs the same P source samples with target
  pixels from the p x p neighbourhood of i, so each candidate's joint is
  J_d = Σ_m V_{d,m} ⊗ φ(w_m), where V_{d,m} sums the source kernel rows paired with target pixel m:
  one small batched matmul per pixel gives the joints of all candidates;
- the joint's total S is known from kernel row sums before the joint exists, so 1/(S + ε) is folded
  into the target operand of that matmul and the joint comes out normalised;
- a kernel value is below 1e-10 beyond 54 grey levels, so where a pixel's window spans a narrow
  range of values (smooth tissue, background) only a band of 8 or 16 of the 27 bins can hold
  joint mass that counts: the joint and its logs are computed on that band only;
- windows that are flat in both images (background) are computed once per distinct value pair;
- pixels are processed in chunks, so memory stays bounded (about 110 MB per chunk).

Arithmetic is float32 like the published code; the result agrees with the published operator's
similarity within ~1e-6 (the reference vectors in tests/data are checked to 1e-4).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from midiffusion.lmi import faithful_sparse

EPS = 1e-10
DEFAULT_SIGMA = 2.0  # the published MIsigma; the kernel std is 2 sigma^2 grey levels
# Pixels per chunk: the joints of one chunk hold CHUNK_PIXELS * p^2 * K^2 float32 values.
_CHUNK_JOINT_VALUES = 1 << 19
# Kernel values below TAIL are left out of the joint when a whole band of bins holds only such
# values: the normalised joint mass left out is below ~TAIL per bin, far under the 1e-6 noise
# of float32 arithmetic. Bands are TAIL-free widths of _BAND_WIDTHS bins.
TAIL = 1e-10
_BAND_WIDTHS = (8, 16)
# Pixels per band (whole rows of one image): bounds every per-pixel tensor.
_BAND_PIXELS = 1 << 16
# float32 like the published code; float64 is only used to check the arithmetic.
COMPUTE_DTYPE = torch.float32


# The compiled sparse kernel (faithful_sparse) scores CPU tensors where numba is installed; the
# torch code below runs on every other device, and where this is False.
SPARSE_CPU_KERNEL = True


def use_sparse_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether faithful LMI on ``device`` in ``dtype`` runs the compiled CPU kernel (float32 only:
    its log2 works on float32 bits), else the torch path."""
    return (
        SPARSE_CPU_KERNEL
        and device.type == "cpu"
        and dtype == torch.float32
        and faithful_sparse.available()
    )


@lru_cache(maxsize=4)
def wrap_pairing(p: int) -> torch.Tensor:
    """sigma[d, n]: the target neighbourhood pixel m (row-major index in the p x p neighbourhood)
    that the published wrap rule pairs with source sample n under candidate d (both row-major)."""
    r = (p - 1) // 2

    def wrap(d: int, delta: int) -> int:
        m = r + d + delta
        return m // p + m % p - r  # floor division and modulo, as in the published code

    offsets = [(a, b) for a in range(-r, r + 1) for b in range(-r, r + 1)]
    sigma = [
        [(wrap(d1, e1) + r) * p + (wrap(d2, e2) + r) for (e1, e2) in offsets]
        for (d1, d2) in offsets
    ]
    return torch.tensor(sigma, dtype=torch.long)


def _neighbourhoods(padded: torch.Tensor, p: int, rows: slice, width: int) -> torch.Tensor:
    """Neighbourhood values of output rows ``rows`` from a grid zero-padded by r:
    B x (H+2r) x (W+2r) -> (B * n_rows * W) x p^2, row-major within the patch."""
    start, stop = rows.start, rows.stop
    cols = [padded[:, start + a : stop + a, b : b + width] for a in range(p) for b in range(p)]
    return torch.stack(cols, dim=-1).reshape(-1, p * p)


def _entropy_bits(pdf: torch.Tensor) -> torch.Tensor:
    return -(pdf * torch.log2(pdf + EPS)).sum(-1)


class _Scorer:
    """Scores of all candidates for chunks of pixels; reuses its large buffers across chunks."""

    def __init__(self, p: int, device: torch.device, dtype: torch.dtype) -> None:
        # gather[(n, d)] = sigma[d, n]: the target pixel paired with sample n under candidate d.
        self.gather = wrap_pairing(p).t().reshape(-1).to(device)
        self.n, self.device, self.dtype = p * p, device, dtype
        self._buffers: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def chunk(self, ks: int, kt: int) -> int:
        return max(1, _CHUNK_JOINT_VALUES // (self.n * ks * kt))

    def _buffers_for(self, ks: int, kt: int) -> tuple[torch.Tensor, torch.Tensor]:
        if (ks, kt) not in self._buffers:
            shape = (self.chunk(ks, kt), ks, self.n * kt)
            joint = torch.empty(shape, device=self.device, dtype=self.dtype)
            self._buffers[(ks, kt)] = (joint, torch.empty_like(joint))
        return self._buffers[(ks, kt)]

    def __call__(
        self,
        table: torch.Tensor,
        idx_src: torch.Tensor,
        idx_tgt: torch.Tensor,
        band_src: tuple[torch.Tensor, int] | None,
        band_tgt: tuple[torch.Tensor, int] | None,
        normalized: bool,
    ) -> torch.Tensor:
        """idx_src, idx_tgt: C x P rows of ``table`` for the source samples and the target's
        neighbourhood pixels. band_src / band_tgt: (first bin per pixel, number of bins) outside
        which every kernel value of that image's samples is below TAIL (None: all bins).
        Returns C x P scores (candidates in row-major order)."""
        c, n = idx_src.shape
        k = table.shape[1]
        src = F.embedding(idx_src, table)  # c, n, k: φ(u_n, k)
        # Target rows in candidate order: tgt[c, n, d, l] = φ(w_{sigma[d, n]}, l).
        tgt = F.embedding(idx_tgt[:, self.gather], table).view(c, n, n, k)

        # Marginals: the mean kernel value over the P samples, divided by (its sum + eps).
        pdf_u = src.mean(1)
        pdf_u = pdf_u / (pdf_u.sum(-1, keepdim=True) + EPS)
        pdf_w = tgt.mean(1)
        pdf_w = pdf_w / (pdf_w.sum(-1, keepdim=True) + EPS)
        h_u = _entropy_bits(pdf_u).unsqueeze(1)
        h_w = _entropy_bits(pdf_w)

        # Totals of the joints from row sums: S_d = Σ_n (Σ_k φ(u_n, k)) (Σ_l φ(w_sigma[d, n], l)).
        row_sums = table.sum(1)
        rows_tgt = F.embedding(idx_tgt, row_sums[:, None])[..., 0][:, self.gather].view(c, n, n)
        total = (F.embedding(idx_src, row_sums[:, None]) * rows_tgt).sum(1)  # c, d
        inv_z = 1.0 / (total + EPS)
        # Only the bins where some sample's kernel is above TAIL can hold joint mass that counts.
        src_b, ks = _take_band(src, band_src)
        tgt_b, kt = _take_band(tgt, band_tgt)
        # Normalised joints of all candidates in one batched matmul, with 1/(S_d + eps) folded
        # into the (smaller) target operand: P[c, k, (d, l)] = Σ_n φ(u_n, k) φ(w_sigma[d, n], l).
        scale = inv_z.repeat_interleave(kt, dim=1).view(c, 1, n * kt)  # contiguous broadcast
        tgt_scaled = tgt_b.reshape(c, n, n * kt) * scale
        joint_buf, logs_buf = self._buffers_for(ks, kt)
        joint, logs = joint_buf[:c], logs_buf[:c]
        torch.bmm(src_b.transpose(1, 2), tgt_scaled, out=joint)
        torch.add(joint, EPS, out=logs)
        torch.log2(logs, out=logs)
        logs.mul_(joint)
        h_uw = -logs.sum(1).view(c, n, kt).sum(-1)

        mi = h_u + h_w - h_uw
        if normalized:
            return 2.0 * (mi + EPS) / (h_u + h_w + EPS)
        return mi


def _take_band(
    rows: torch.Tensor, band: tuple[torch.Tensor, int] | None
) -> tuple[torch.Tensor, int]:
    """rows[..., start : start + width] with a per-pixel start (first dim = pixels)."""
    if band is None:
        return rows, rows.shape[-1]
    start, width = band
    idx = start.view(-1, *([1] * (rows.dim() - 1))) + torch.arange(width, device=rows.device)
    return rows.gather(-1, idx.expand(*rows.shape[:-1], width)), width


def _bands(
    nb: torch.Tensor, centres: torch.Tensor, reach: float, widths: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel: the narrowest width from ``widths`` (len(centres) = all bins) whose band
    holds every bin within ``reach`` grey levels of a neighbourhood value, and its first bin.
    Banding is only used when every value is inside [0, 255], where each kernel row sums to
    at least ~1, so that the bins left out hold at most ~TAIL of the normalised joint."""
    n_bins = centres.numel()
    lo = nb.min(1).values.to(centres.dtype)
    hi = nb.max(1).values.to(centres.dtype)
    first = torch.searchsorted(centres, lo - reach)  # first centre >= lo - reach
    last = torch.searchsorted(centres, hi + reach, right=True) - 1  # last centre <= hi + reach
    need = last - first + 1
    width = torch.full_like(need, n_bins)
    for w in sorted(widths, reverse=True):
        width = torch.where(need <= w, torch.full_like(need, w), width)
    inside = (lo >= 0) & (hi <= 255)
    width = torch.where(inside, width, torch.full_like(need, n_bins))
    start = torch.minimum(first, n_bins - width).clamp_min(0)
    return start, width


def faithful_lmi(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    patch_size: int,
    bins: int | None,
    bandwidth: float | None,
    normalized: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Faithful-mode LMI (inputs already validated). Returns (aligned, similarity)."""
    p = patch_size
    r = (p - 1) // 2
    n_bins = p**3 if bins is None else bins
    # Kernel std in grey levels: published 2 sigma^2; a float bandwidth is in intensity units.
    kernel_std = 2.0 * DEFAULT_SIGMA**2 if bandwidth is None else 255.0 * float(bandwidth)
    batch, _, height, width = source.shape
    device = source.device

    # trunc(255 v) as int32, computed from float32 as the published code does; zero padding.
    q_src = F.pad((source.detach().float() * 255).to(torch.int32)[:, 0], (r, r, r, r))
    q_tgt = F.pad((target.detach().float() * 255).to(torch.int32)[:, 0], (r, r, r, r))
    x_pad = F.pad(target.detach(), (r, r, r, r))[:, 0]

    # Lookup table of kernel values for every grey level present (the padding's 0 included).
    lo = int(min(q_src.min(), q_tgt.min()))
    hi = int(max(q_src.max(), q_tgt.max()))
    levels = torch.arange(lo, hi + 1, device=device, dtype=COMPUTE_DTYPE)
    centres = torch.linspace(0, 255, n_bins, device=device, dtype=torch.float32).to(COMPUTE_DTYPE)
    table = torch.exp(-0.5 * ((levels[:, None] - centres[None, :]) / kernel_std) ** 2)

    if use_sparse_kernel(device, COMPUTE_DTYPE):
        scores = faithful_sparse.candidate_scores(
            q_src, q_tgt, lo, table, wrap_pairing(p), kernel_std, normalized, EPS
        )
        best = scores.argmax(-1, keepdim=True)  # the first maximum, as on the torch path
        similarity = scores.gather(-1, best)[..., 0][:, None]
        neigh = torch.stack(
            [x_pad[:, a : a + height, b : b + width] for a in range(p) for b in range(p)], -1
        )
        aligned = neigh.gather(-1, best)[..., 0][:, None]
        return aligned, similarity.to(source.dtype)

    scorer = _Scorer(p, device, COMPUTE_DTYPE)
    # Beyond this distance from a sample its kernel value is below TAIL (see _bands).
    reach = kernel_std * math.sqrt(2.0 * math.log(1.0 / TAIL))
    # Bands of whole rows of one image at a time keep every per-pixel tensor small.
    band_rows = max(1, _BAND_PIXELS // width)
    aligned = torch.empty_like(target)
    similarity = torch.empty(source.shape, device=device, dtype=COMPUTE_DTYPE)
    for b in range(batch):
        for y0 in range(0, height, band_rows):
            rows = slice(y0, min(height, y0 + band_rows))
            nb_src = _neighbourhoods(q_src[b : b + 1], p, rows, width)
            nb_tgt = _neighbourhoods(q_tgt[b : b + 1], p, rows, width)
            scores = _band_scores(nb_src, nb_tgt, table, centres, reach, lo, hi, scorer, normalized)
            best = scores.argmax(1)  # the first maximum: the first candidate in row-major order
            n_rows = rows.stop - rows.start
            similarity[b, 0, rows] = scores.gather(1, best[:, None]).view(n_rows, width)
            # aligned = X(i + d*): the target's real intensity (not quantised), zero padded.
            neigh = _neighbourhoods(x_pad[b : b + 1], p, rows, width)
            aligned[b, 0, rows] = neigh.gather(1, best[:, None]).view(n_rows, width)
    return aligned, similarity.to(source.dtype)


def _band_scores(
    nb_src: torch.Tensor,
    nb_tgt: torch.Tensor,
    table: torch.Tensor,
    centres: torch.Tensor,
    reach: float,
    lo: int,
    hi: int,
    scorer: _Scorer,
    normalized: bool,
) -> torch.Tensor:
    """Scores (pixels x candidates) of one band of image rows."""
    scores = torch.empty(nb_src.shape, device=table.device, dtype=table.dtype)
    # Windows flat in both images (background) depend only on the two values: compute each once.
    flat = (nb_src == nb_src[:, :1]).all(1) & (nb_tgt == nb_tgt[:, :1]).all(1)
    flat_idx = flat.nonzero().flatten()
    rest = (~flat).nonzero().flatten()
    todo = rest
    inverse = None
    if flat_idx.numel():
        key = (nb_src[flat_idx, 0].long() - lo) * (hi - lo + 1) + (nb_tgt[flat_idx, 0].long() - lo)
        uniq, inverse = torch.unique(key, return_inverse=True)
        rep = torch.zeros(uniq.numel(), dtype=torch.long, device=table.device)
        rep[inverse] = flat_idx
        todo = torch.cat([rest, rep])
    n_bins = table.shape[1]
    widths = tuple(w for w in _BAND_WIDTHS if w < n_bins)
    start_s, width_s = _bands(nb_src[todo], centres, reach, widths)
    start_t, width_t = _bands(nb_tgt[todo], centres, reach, widths)
    out = torch.empty(todo.numel(), nb_src.shape[1], device=table.device, dtype=table.dtype)
    for ks in (*widths, n_bins):
        for kt in (*widths, n_bins):
            group = ((width_s == ks) & (width_t == kt)).nonzero().flatten()
            chunk = scorer.chunk(ks, kt)
            for start in range(0, group.numel(), chunk):
                sel = group[start : start + chunk]
                pix = todo[sel]
                out[sel] = scorer(
                    table,
                    (nb_src[pix] - lo).long(),
                    (nb_tgt[pix] - lo).long(),
                    None if ks == n_bins else (start_s[sel], ks),
                    None if kt == n_bins else (start_t[sel], kt),
                    normalized,
                )
    scores[rest] = out[: rest.numel()]
    if inverse is not None:
        scores[flat_idx] = out[rest.numel() :][inverse]
    return scores
