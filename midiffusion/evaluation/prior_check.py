"""Does a model's target prior produce real-looking slices? Unconditional samples, shown and scored.

Two looks at one question:
- a figure: the samples beside as many random training slices, drawn uniformly like the training
  batches were, so that cerebellum and vertex slices (a quarter of t1-train) appear on both sides;
- a number: each image's SSIM to its nearest training slice over the two images' foreground,
  left-right mirror images included (training mirrors them). A memorised copy scores near 1.
  Slices of a real brain the model never saw (the MNI152 T1 of the evaluation) show what a new,
  real slice scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from model_store.card import ModelCard

SEPARATOR_PX = 4  # white column between the samples and the real slices
FOREGROUND = 0.1  # [0, 1] level above which a pixel is brain, not background (or its noise)


def unconditional_samples(
    card: ModelCard, weights: Path, n: int, steps: int, seed: int, sampler: str | None = None
) -> np.ndarray:
    """``n`` samples of the prior alone (guidance 0), (n, G, G) in [0, 1], in the data's order."""
    import torch

    from midiffusion.diffusion.samplers import get_sampler
    from midiffusion.pipeline.translate import Translator

    t = Translator.load(card, weights)
    sigmas = t.schedule.sampling_sigmas(steps).float()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, t.grid, t.grid, generator=gen) * sigmas[0]
    denoiser = t.denoiser(None, 0.0)
    x0 = get_sampler(sampler or t.sampling.sampler)(denoiser, x, sigmas, generator=gen)
    return t.spec.to_unit(x0)[:, 0].numpy()


def tile(images: np.ndarray) -> np.ndarray:
    """Images (n, H, W) in a near-square grid, anterior up; empty tiles are black."""
    imgs = [np.rot90(a) for a in images]
    cols = int(np.ceil(np.sqrt(len(imgs))))
    rows = int(np.ceil(len(imgs) / cols))
    tiles = imgs + [np.zeros_like(imgs[0])] * (rows * cols - len(imgs))
    return np.vstack([np.hstack(tiles[r * cols : (r + 1) * cols]) for r in range(rows)])


def random_slices(slices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` distinct slices drawn uniformly (as many as there are, if fewer)."""
    rng = np.random.default_rng(seed)
    return slices[np.sort(rng.choice(len(slices), size=min(n, len(slices)), replace=False))]


def beside(samples: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Two grids of one size side by side, split by a white column."""
    left, right = tile(samples), tile(real)
    if left.shape != right.shape:
        raise ValueError(f"grids differ: {left.shape} samples, {right.shape} real slices")
    return np.hstack([left, np.ones((left.shape[0], SEPARATOR_PX), left.dtype), right])


def nearest_ssim(images: np.ndarray, training: np.ndarray) -> np.ndarray:
    """Each image's SSIM to its most similar training slice or that slice's mirror image, over
    the pair's joint foreground (dark background would otherwise dominate the mean)."""
    from midiffusion.evaluation.metrics import ssim_to_each

    bank = np.concatenate([training, training[:, ::-1, :]])  # axis 0 of a slice is right-left
    bank_fg = bank > FOREGROUND
    return np.array([ssim_to_each(x, bank, (x > FOREGROUND) | bank_fg).max() for x in images])


def unseen_real_slices(root: Path | None = None) -> np.ndarray | None:
    """The MNI152 T1 slices of the built ``mni-synth`` set, (N, G, G); None when it is not built."""
    from midiffusion.data.sets import load_volumes

    try:
        t1 = load_volumes("mni-synth", root)["t1"]
    except FileNotFoundError:
        return None
    return np.moveaxis(np.asarray(t1.dataobj, dtype=np.float32), 2, 0)


def nearest_ssim_report(
    samples: np.ndarray, training: np.ndarray, unseen: np.ndarray | None
) -> list[str]:
    """One line per group: the median and range of its nearest-training-slice SSIM."""
    groups = {"samples": samples}
    if unseen is not None:
        groups["unseen real T1 (MNI152, never trained on)"] = unseen
    lines = []
    for name, images in groups.items():
        lo, mid, hi = np.quantile(nearest_ssim(images, training), [0, 0.5, 1])
        lines.append(f"{name}: median {mid:.3f}, range {lo:.3f}-{hi:.3f} over {len(images)}")
    return lines
