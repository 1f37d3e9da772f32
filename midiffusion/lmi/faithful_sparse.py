"""Faithful LMI on the CPU with a compiled sparse kernel (numba): the same scores, far less work.

The published operator builds, for every pixel and each of its P candidates, the full K x K joint
histogram (27 x 27 for 3 x 3 patches) and takes P + P K + K^2 logarithms. Almost all of that
joint is empty: a sample's Gaussian kernel (std 8 grey levels, bins 9.8 grey levels apart) is
below 1e-10 more than about 6 bins from its value, so each sample's outer product touches about
11 x 11 bins, and on the noisy states of sampling most target samples lie far outside [0, 255]
and touch none. This kernel computes, per pixel and candidate:

- the marginals and the joint's total S exactly, over all bins, from a lookup table of kernel
  values per grey level (the inputs are integers after trunc(255 v));
- the joint only on each sample's rectangle of bins whose kernel value is at least
  tau = 1e-12 (S + eps): a bin beyond it holds less than tau, and the Gaussian tail past the
  first such bin is smaller still, so the joint mass left out is below about 100 tau over all
  samples, i.e. 1e-10 of the normalised joint. That is true in the epsilon-dominated regime too
  (all targets out of range, S ~ eps), where tau scales down with S. Under the wrap rule a
  candidate pairs its P source samples with only 4 to P distinct target pixels, so the source
  rows that share a target pixel are added first: one outer product per target pixel;
- the entropy terms -p log2(p + eps) of every marginal bin and every bin of the joint's box
  (the rectangle around all sample rectangles; the bins outside it hold less than tau), with a
  float32 log2 written so that the compiler vectorises it (``_sum_neg_plogp``).

The mass left out moves an entropy by less than 1e-8 bits (33 bits per unit of mass at most), far
under the float32 rounding (~1e-6) that separates any two correct implementations. The arithmetic
is float32 like the published code; divisions by the normaliser are multiplications by its
reciprocal, and sums may be reassociated and fused, which changes only the rounding. Candidates
whose target samples equal an earlier candidate's get that candidate's score, so ties stay exact
and the first candidate in row-major order wins, as published. The scores go back to
:mod:`faithful`, which does the argmax and builds the outputs as for its torch path. Rows of the
image are split over ``torch.get_num_threads()`` threads (the kernel releases the GIL).

numba is a CPU-only dependency. The kernel compiles on first use (seconds) and is cached next to
this file, or in the user's cache folder where that is read-only. On other devices, for float64,
or when numba cannot be imported, the torch path of :mod:`faithful` runs instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

try:  # numba ships wheels for the supported platforms; without it the torch path is used.
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is not installed
    numba = None

# Relative floor of a kernel value that enters the joint: tau = REL_TAU * (S + eps) (see above).
REL_TAU = 1e-12
# float32 bits of sqrt(1/2): subtracting them puts the mantissa's range at [sqrt(1/2), sqrt(2)).
_SQRT_HALF_BITS = 0x3F3504F3
# Pixels per worker thread below which one thread is used (thread start-up would dominate).
_MIN_ROWS_PER_THREAD = 8


def available() -> bool:
    """True where the compiled kernel can run (numba imports)."""
    return numba is not None


def _sum_neg_plogp(vals, n, scale, eps, work, exps, c):
    """-sum_i v_i log2(v_i + eps), v_i = scale vals[i], over vals[:n] (float32), with a
    vectorisable log2.

    x = vals + eps is split into 2^e * m with m in [sqrt(1/2), sqrt(2)) by integer arithmetic
    on its bits, and
    ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, by its series up to s^9: the series'
    error is below 1e-9, far under float32 rounding, so this is log2 to float32 precision."""
    for i in range(n):
        work[i] = vals[i] * scale + eps
    bits = work.view(np.int32)
    for i in range(n):  # x >= eps is a normal float32; split its bits at sqrt(1/2) (no branch)
        b = bits[i] - _SQRT_HALF_BITS
        exps[i] = b >> 23
        bits[i] = (b & 0x007FFFFF) + _SQRT_HALF_BITS
    log2_e = c[0]
    for i in range(n):
        m = work[i]
        s = (m - c[1]) / (m + c[1])
        s2 = s * s
        ln_m = s * (c[2] + s2 * (c[3] + s2 * (c[4] + s2 * (c[5] + s2 * c[6]))))
        work[i] = vals[i] * scale * (np.float32(exps[i]) + ln_m * log2_e)
    total = vals[0] - vals[0]  # a float32 zero (a literal would make the sum float64)
    for i in range(n):
        total -= work[i]
    return total


def _log2_constants() -> np.ndarray:
    """c[0] = log2(e), c[1] = 1, c[2..6] = 2/1, 2/3, 2/5, 2/7, 2/9 (the 2 atanh(s) series)."""
    series = [2.0 / (2 * j + 1) for j in range(5)]
    return np.array([1.0 / math.log(2.0), 1.0, *series], dtype=np.float32)


def _marginal(table, idx, pdf, eps, one, inv_samples):
    """pdf = mean_n table[idx[n]], divided by (its sum + eps), as published (the divisions are
    multiplications by reciprocals, which moves a value by at most one rounding)."""
    pdf[:] = 0
    for n in range(idx.shape[0]):
        row = table[idx[n]]
        for k in range(pdf.shape[0]):
            pdf[k] += row[k]
    total = pdf[0] - pdf[0]
    for k in range(pdf.shape[0]):
        pdf[k] = pdf[k] * inv_samples
        total += pdf[k]
    inv_total = one / (total + eps)
    for k in range(pdf.shape[0]):
        pdf[k] = pdf[k] * inv_total


def _band(level, reach, per_level, n_bins):
    """First and last bin within ``reach`` grey levels of ``level`` (empty when first > last);
    per_level = 1 / bin spacing in grey levels."""
    first = max(0, math.ceil((level - reach) * per_level))
    last = min(n_bins - 1, math.floor((level + reach) * per_level))
    return first, last


def _rows(q_src, q_tgt, lo, table, row_sums, sigma, groups, p, consts, log2c, scores, y0, y1):
    """scores[y, x, d] for output rows y0 <= y < y1 of one image (q_*: padded grey levels).
    consts: eps, 1, 2, 1 / P, normalized (1 or 0), kernel std in grey levels."""
    eps, one, two, inv_samples = consts[0], consts[1], consts[2], consts[3]
    normalized, std = consts[4] > 0, float(consts[5])
    n_cand = sigma.shape[0]
    n_bins = table.shape[1]
    per_level = (n_bins - 1) / 255.0
    width = scores.shape[1]
    joint = np.zeros(n_bins * n_bins, dtype=table.dtype)
    work = np.empty(n_bins * n_bins, dtype=table.dtype)
    exps = np.empty(n_bins * n_bins, dtype=np.int32)
    pdf = np.empty(n_bins, dtype=table.dtype)
    src = np.empty(n_cand, dtype=np.int64)
    neigh = np.empty(n_cand, dtype=np.int64)
    cand = np.empty((n_cand, n_cand), dtype=np.int64)
    bands = np.empty((n_cand, 2), dtype=np.int64)
    pieces = np.empty((n_cand, 4), dtype=np.int64)
    for y in range(y0, y1):
        for x in range(width):
            for a in range(p):
                for b in range(p):
                    src[a * p + b] = q_src[y + a, x + b] - lo
                    neigh[a * p + b] = q_tgt[y + a, x + b] - lo
            _marginal(table, src, pdf, eps, one, inv_samples)
            h_u = _sum_neg_plogp(pdf, n_bins, one, eps, work, exps, log2c)
            for d in range(n_cand):
                for n in range(n_cand):
                    cand[d, n] = neigh[sigma[d, n]]
                same = -1
                for e in range(d):
                    equal = True
                    for n in range(n_cand):
                        if cand[e, n] != cand[d, n]:
                            equal = False
                            break
                    if equal:
                        same = e
                        break
                if same >= 0:  # identical samples: identical score, so ties stay exact
                    scores[y, x, d] = scores[y, x, same]
                    continue
                tgt = cand[d]
                _marginal(table, tgt, pdf, eps, one, inv_samples)
                h_w = _sum_neg_plogp(pdf, n_bins, one, eps, work, exps, log2c)

                # The joint's total S from row sums, then its entries on the samples' bands only.
                total = z_zero = row_sums[src[0]] - row_sums[src[0]]
                for n in range(n_cand):
                    total += row_sums[src[n]] * row_sums[tgt[n]]
                z = total + eps
                # Kernel value >= REL_TAU * z within this many grey levels (+1 for rounding).
                reach = std * math.sqrt(2.0 * math.log(1.0 / (REL_TAU * float(z)))) + 1.0
                for n in range(n_cand):
                    bands[n, 0], bands[n, 1] = _band(src[n] + lo, reach, per_level, n_bins)
                # One outer product per distinct target pixel m of this candidate:
                # sum_{n -> m} phi(u_n) (x) phi(w_m), with its source rows added first.
                k_lo, k_hi, l_lo, l_hi = n_bins, -1, n_bins, -1
                for g in range(n_cand):
                    members = groups[d, g, 1]
                    if members == 0:
                        break
                    l0, l1 = _band(neigh[groups[d, g, 0]] + lo, reach, per_level, n_bins)
                    k0, k1 = n_bins, -1
                    for i in range(members):
                        n = groups[d, g, 2 + i]
                        if bands[n, 0] <= bands[n, 1]:
                            k0, k1 = min(k0, bands[n, 0]), max(k1, bands[n, 1])
                    if k0 > k1 or l0 > l1:
                        k1 = -1  # this pixel's outer product is below tau everywhere
                    else:
                        k_lo, k_hi = min(k_lo, k0), max(k_hi, k1)
                        l_lo, l_hi = min(l_lo, l0), max(l_hi, l1)
                    pieces[g, 0], pieces[g, 1], pieces[g, 2], pieces[g, 3] = k0, k1, l0, l1
                h_uw = z_zero
                if k_hi >= 0:
                    # The joint's box k_lo..k_hi x l_lo..l_hi, row-major and contiguous.
                    box_w = l_hi - l_lo + 1
                    size = (k_hi - k_lo + 1) * box_w
                    joint[:size] = 0
                    for g in range(n_cand):
                        members = groups[d, g, 1]
                        if members == 0:
                            break
                        k0, k1, l0, l1 = pieces[g, 0], pieces[g, 1], pieces[g, 2], pieces[g, 3]
                        if k1 < 0:
                            continue
                        w = neigh[groups[d, g, 0]]
                        for k in range(k0, k1 + 1):
                            a_k = table[src[groups[d, g, 2]], k]
                            for i in range(1, members):
                                a_k += table[src[groups[d, g, 2 + i]], k]
                            row = (k - k_lo) * box_w - l_lo
                            for m in range(l0, l1 + 1):
                                joint[row + m] += a_k * table[w, m]
                    # Normalised by 1 / (S + eps) as the entropy reads it.
                    h_uw = _sum_neg_plogp(joint, size, one / z, eps, work, exps, log2c)
                mi = h_u + h_w - h_uw
                if normalized:
                    scores[y, x, d] = two * (mi + eps) / (h_u + h_w + eps)
                else:
                    scores[y, x, d] = mi


def _compile(fn: Callable[..., object], fastmath: set[str]) -> Callable[..., object]:
    """numba-compile ``fn``, cached on disk where numba finds a writable cache folder.

    error_model="numpy" drops Python's division-by-zero checks (divisors are >= eps), which would
    stop the loops from vectorising; "contract" allows fused multiply-adds and "reassoc" lets a
    sum vectorise. Both change rounding only (~1e-7)."""
    options = {"nogil": True, "error_model": "numpy", "fastmath": fastmath}
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # no writable cache folder: compile in every process instead
        return numba.njit(**options)(fn)


if numba is not None:
    _sum_neg_plogp = _compile(_sum_neg_plogp, {"reassoc", "contract"})
    _marginal = _compile(_marginal, {"contract"})
    _band = _compile(_band, {"contract"})
    _rows = _compile(_rows, {"contract"})


def _groups(sigma: np.ndarray) -> np.ndarray:
    """groups[d, g] = (target pixel m, count c, the c source samples n with sigma[d, n] = m, ...)
    for the distinct target pixels of candidate d in order of first use; c = 0 ends the list."""
    n_cand = sigma.shape[0]
    groups = np.zeros((n_cand, n_cand, n_cand + 2), dtype=np.int64)
    for d in range(n_cand):
        targets = list(dict.fromkeys(sigma[d].tolist()))
        for g, m in enumerate(targets):
            members = [n for n in range(n_cand) if sigma[d, n] == m]
            groups[d, g, : 2 + len(members)] = [m, len(members), *members]
    return groups


def candidate_scores(
    q_src: torch.Tensor,
    q_tgt: torch.Tensor,
    lo: int,
    table: torch.Tensor,
    sigma: torch.Tensor,
    kernel_std: float,
    normalized: bool,
    eps: float,
) -> torch.Tensor:
    """Scores B x H x W x P of every candidate, from grey levels zero-padded by r (B x H+2r x
    W+2r, int32), the kernel table (levels lo.. x bins) and the wrap pairing ``sigma``."""
    if numba is None:
        raise RuntimeError("the sparse faithful-LMI kernel needs numba; use the torch path")
    p = math.isqrt(sigma.shape[0])
    r = (p - 1) // 2
    batch, height, width = q_src.shape[0], q_src.shape[1] - 2 * r, q_src.shape[2] - 2 * r
    tab = table.cpu().numpy()
    row_sums = tab.sum(1)
    sig = sigma.cpu().numpy().astype(np.int64)
    consts = np.array([eps, 1.0, 2.0, 1 / sig.shape[0], normalized, kernel_std], dtype=tab.dtype)
    log2c = _log2_constants()
    src_np = q_src.cpu().numpy().astype(np.int64)
    tgt_np = q_tgt.cpu().numpy().astype(np.int64)
    scores = np.empty((batch, height, width, sig.shape[0]), dtype=tab.dtype)
    threads = max(1, min(torch.get_num_threads(), height // _MIN_ROWS_PER_THREAD))
    bounds = [height * t // threads for t in range(threads + 1)]

    def run(b: int, t: int) -> None:
        image = (src_np[b], tgt_np[b], lo, tab, row_sums, sig, _groups(sig), p, consts, log2c)
        _rows(*image, scores[b], bounds[t], bounds[t + 1])

    jobs = [(b, t) for b in range(batch) for t in range(threads)]
    if threads == 1:
        for job in jobs:
            run(*job)
    else:  # the kernel releases the GIL, so threads run in parallel
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda job: run(*job), jobs))
    return torch.from_numpy(scores)
