"""How good and how sure one translation is, from what the translation itself holds.

There is no target image at inference, so the figures compare the output with its source and
the draws with each other, inside the foreground:

- ``nmi_source``: NMI of output and source (``evaluation.metrics.nmi``): do the intensities of
  one predict the other's? Low when the output lost or invented structure.
- ``lmi_source``: the mean clean-LMI similarity (``lmi.api``, default settings) of output and
  source, the quantity the sampler is guided by: do the local structures line up?
- ``sample_spread``: the mean standard deviation between the draws that were averaged (the card's
  ``samples``): how much the model's answers differ, i.e. how unsure it was. None with one draw.
"""

from __future__ import annotations

import numpy as np
import torch


class DrawSpread:
    """Per-pixel standard deviation between draws, accumulated as the sampler yields them.

    ``add(first, draws)`` takes (k, n, G, G) draws of the n slices from index ``first``; the
    same slices may come in several calls (a few draws at a time). Sums are kept in float64."""

    def __init__(self) -> None:
        self._sums: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}

    def add(self, first: int, draws: np.ndarray) -> None:
        draws = np.asarray(draws, np.float64)
        total, squares, count = self._sums.get(first, (0.0, 0.0, 0))
        self._sums[first] = (
            total + draws.sum(0),
            squares + (draws**2).sum(0),
            count + len(draws),
        )

    @property
    def draws(self) -> int:
        """How many draws every slice has had (0 before any)."""
        return min((count for _, _, count in self._sums.values()), default=0)

    def std(self) -> np.ndarray:
        """(N, G, G) sample standard deviation (ddof 1) of every pixel, slices in order."""
        if not self._sums:
            raise ValueError("no draws were added")
        parts = []
        for first in sorted(self._sums):
            total, squares, count = self._sums[first]
            if count < 2:
                raise ValueError("a spread needs at least two draws of every slice")
            variance = (squares - total**2 / count) / (count - 1)
            parts.append(np.sqrt(np.maximum(variance, 0.0)))
        return np.concatenate(parts).astype(np.float32)


def lmi_similarity(output: np.ndarray, source: np.ndarray, mask: np.ndarray) -> float:
    """Mean clean-LMI similarity of (n, G, G) ``output`` against ``source`` inside ``mask``."""
    from midiffusion.lmi.api import local_mutual_information

    with torch.no_grad():
        similarity = local_mutual_information(
            torch.from_numpy(np.ascontiguousarray(source, np.float32))[:, None],
            torch.from_numpy(np.ascontiguousarray(output, np.float32))[:, None],
        ).similarity[:, 0]
    return float(similarity.numpy()[mask].mean())


def translation_quality(
    output: np.ndarray, source: np.ndarray, mask: np.ndarray, spread: np.ndarray | None
) -> dict[str, float | None]:
    """The figures of this module for (n, G, G) translated slices, their sources in [0, 1],
    their foreground and the spread between draws (None: one draw). Empty input: all None."""
    from midiffusion.evaluation.metrics import nmi

    mask = np.asarray(mask, bool)
    if not mask.any():
        return {"nmi_source": None, "lmi_source": None, "sample_spread": None}
    return {
        "nmi_source": nmi(output, source, mask),
        "lmi_source": lmi_similarity(output, source, mask),
        "sample_spread": None if spread is None else float(np.asarray(spread)[mask].mean()),
    }
