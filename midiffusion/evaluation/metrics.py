"""Image-quality metrics of the benchmark protocol (docs/evaluation.md), on [0,1] images.

SSIM uses the Gaussian window of Wang et al. 2004 (11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03) with
data_range 1; PSNR uses a peak of 1. With a mask, every metric is computed over the mask's pixels
only (SSIM: the mean of the SSIM map there). NMI is the histogram estimate with 64 bins,
normalised as 2 MI / (H1 + H2) (the arithmetic form, as sklearn's default). Slice-to-slice
consistency: the mean absolute difference between neighbouring slices inside either one's mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 x 11 window
NMI_BINS = 64
# the keys of slice_metrics() as the tables and figures label them
METRIC_LABELS = {
    "ssim_tar": "SSIM(tar)",
    "ssim_src": "SSIM(src)",
    "psnr": "PSNR",
    "mse": "MSE",
    "nmi_tar": "NMI(tar)",
    "nmi_src": "NMI(src)",
}


def _masked(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return values[mask.astype(bool)] if mask is not None else values.ravel()


def _ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The SSIM map of two image stacks that broadcast, blurred over the last two axes only.
    Each side's own statistics are blurred at its own shape (one image against a stack blurs that
    image once); only the cross term needs the broadcast shape."""
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def blur(a: np.ndarray) -> np.ndarray:
        sigma = (0,) * (a.ndim - 2) + (SSIM_SIGMA, SSIM_SIGMA)
        return ndimage.gaussian_filter(a, sigma, truncate=SSIM_RADIUS / SSIM_SIGMA)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean structural similarity of two 2D images in [0,1]."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"ssim needs two 2D images of one shape, got {x.shape} and {y.shape}")
    return float(_masked(_ssim_map(x, y), mask).mean())


def ssim_to_each(x: np.ndarray, bank: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """SSIM of one 2D image against every image of a stack (N, H, W): shape (N,). With ``masks``
    (N, H, W), each pair's mean runs over its own mask (an empty mask scores 0)."""
    x, bank = np.asarray(x), np.asarray(bank)
    if x.ndim != 2 or bank.ndim != 3 or bank.shape[1:] != x.shape:
        raise ValueError(f"ssim_to_each needs (H, W) and (N, H, W), got {x.shape} and {bank.shape}")
    maps = _ssim_map(x[None], bank)
    if masks is None:
        return maps.mean(axis=(1, 2))
    masks = np.broadcast_to(np.asarray(masks, bool), maps.shape)
    counts = masks.sum(axis=(1, 2))
    return np.where(counts > 0, (maps * masks).sum(axis=(1, 2)) / np.maximum(counts, 1), 0.0)


def mse(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    return float(np.mean(_masked((np.asarray(x, np.float64) - y) ** 2, mask)))


def psnr(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    err = mse(x, y, mask)
    return float("inf") if err == 0 else float(10 * np.log10(1.0 / err))


def nmi(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised mutual information 2 MI / (H(x) + H(y)), 64-bin histograms on [0,1]."""
    a, b = _masked(np.asarray(x), mask), _masked(np.asarray(y), mask)
    joint, _, _ = np.histogram2d(a, b, bins=NMI_BINS, range=[[0, 1], [0, 1]])
    p = joint / joint.sum()
    px, py = p.sum(1), p.sum(0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    hx, hy, hxy = entropy(px), entropy(py), entropy(p.ravel())
    return 0.0 if hx + hy == 0 else float(2 * (hx + hy - hxy) / (hx + hy))


def slice_metrics(
    output: np.ndarray, source: np.ndarray, target: np.ndarray | None, mask: np.ndarray | None
) -> dict[str, float]:
    """The protocol's per-slice metrics; target-based ones only when a ground truth exists."""
    out = {"ssim_src": ssim(output, source, mask), "nmi_src": nmi(output, source, mask)}
    if target is not None:
        out |= {
            "ssim_tar": ssim(output, target, mask),
            "psnr": psnr(output, target, mask),
            "mse": mse(output, target, mask),
            "nmi_tar": nmi(output, target, mask),
        }
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and count of every metric over slices."""
    keys = rows[0].keys() if rows else []
    return {
        k: {
            "mean": float(np.mean([r[k] for r in rows])),
            "std": float(np.std([r[k] for r in rows])),
            "n": len(rows),
        }
        for k in keys
    }


def slice_consistency(volume: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference between neighbouring slices, inside either slice's mask."""
    diffs = []
    for k in range(len(volume) - 1):
        m = mask[k] | mask[k + 1]
        if m.any():
            diffs.append(float(np.abs(volume[k + 1] - volume[k])[m].mean()))
    return float(np.mean(diffs)) if diffs else float("nan")
