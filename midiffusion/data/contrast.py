"""MR signal equations and the tissue table used to synthesise source contrasts.

Two sequences, in their textbook steady-state forms (times in ms, TR >> T2 so transverse
magnetisation has decayed before each excitation):

* spin echo::

      S = PD * (1 - exp(-TR / T1)) * exp(-TE / T2)

* inversion recovery (180 - TI - 90 - TE), magnitude reconstruction as in clinical FLAIR::

      S = PD * |1 - 2 exp(-TI / T1) + exp(-TR / T1)| * exp(-TE / T2)

  A tissue is nulled where ``1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0``; for TR >> T1 that is
  ``TI = T1 ln 2``, which is why FLAIR's TI of 2500 ms nearly nulls CSF (T1 4000 ms).

A voxel holding a mixture of tissues gets the probability-weighted sum of their signals
(``mix``): partial volumes add magnetisation, not intensities of finished images.

The tissue values (``TISSUES``) are the benchmark's 1.5 T table; ``SEQUENCES`` holds the three
source contrasts of the ``mni-synth`` evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tissue:
    """Proton density (relative to CSF = 1) and relaxation times in ms."""

    pd: float
    t1_ms: float
    t2_ms: float


@dataclass(frozen=True)
class Sequence:
    """A pulse sequence: ``kind`` is "se" (spin echo) or "ir" (inversion recovery)."""

    kind: str
    tr_ms: float
    te_ms: float
    ti_ms: float | None = None


# 1.5 T tissue table: PD, T1, T2. The brain's three are the benchmark's; the head's (for
# head-synth) are textbook 1.5 T values: subcutaneous fat and marrow, muscle and skin, and
# cortical bone with the air of the sinuses, which give almost no signal in any sequence.
TISSUES: dict[str, Tissue] = {
    "gm": Tissue(pd=0.86, t1_ms=1200.0, t2_ms=100.0),
    "wm": Tissue(pd=0.77, t1_ms=800.0, t2_ms=80.0),
    "csf": Tissue(pd=1.0, t1_ms=4000.0, t2_ms=2000.0),
    "fat": Tissue(pd=0.9, t1_ms=260.0, t2_ms=80.0),
    "muscle": Tissue(pd=0.7, t1_ms=870.0, t2_ms=45.0),
    "bone": Tissue(pd=0.05, t1_ms=300.0, t2_ms=1.0),
}

# The synthesised sources of mni-synth.
SEQUENCES: dict[str, Sequence] = {
    "t2w": Sequence("se", tr_ms=4000.0, te_ms=100.0),
    "pdw": Sequence("se", tr_ms=4000.0, te_ms=15.0),
    "flair": Sequence("ir", tr_ms=9000.0, te_ms=100.0, ti_ms=2500.0),
}


def spin_echo(pd: float, t1_ms: float, t2_ms: float, tr_ms: float, te_ms: float) -> float:
    """Spin-echo signal: ``PD (1 - e^{-TR/T1}) e^{-TE/T2}``."""
    return pd * (1.0 - np.exp(-tr_ms / t1_ms)) * np.exp(-te_ms / t2_ms)


def inversion_recovery(
    pd: float, t1_ms: float, t2_ms: float, tr_ms: float, te_ms: float, ti_ms: float
) -> float:
    """Magnitude IR signal: ``PD |1 - 2 e^{-TI/T1} + e^{-TR/T1}| e^{-TE/T2}``."""
    longitudinal = 1.0 - 2.0 * np.exp(-ti_ms / t1_ms) + np.exp(-tr_ms / t1_ms)
    return pd * abs(longitudinal) * np.exp(-te_ms / t2_ms)


def signal(tissue: Tissue, seq: Sequence) -> float:
    """The signal of a pure tissue under a sequence."""
    if seq.kind == "se":
        return float(spin_echo(tissue.pd, tissue.t1_ms, tissue.t2_ms, seq.tr_ms, seq.te_ms))
    if seq.kind == "ir":
        if seq.ti_ms is None:
            raise ValueError("an inversion-recovery sequence needs ti_ms")
        return float(
            inversion_recovery(
                tissue.pd, tissue.t1_ms, tissue.t2_ms, seq.tr_ms, seq.te_ms, seq.ti_ms
            )
        )
    raise ValueError(f"unknown sequence kind {seq.kind!r}; use 'se' or 'ir'")


def mix(
    probabilities: Mapping[str, np.ndarray],
    seq: Sequence,
    tissues: Mapping[str, Tissue] = TISSUES,
) -> np.ndarray:
    """Per-voxel signal: sum over tissues of probability x that tissue's signal."""
    if not probabilities:
        raise ValueError("mix needs at least one tissue probability map")
    unknown = set(probabilities) - set(tissues)
    if unknown:
        raise ValueError(f"no tissue parameters for {sorted(unknown)}; known: {sorted(tissues)}")
    out = None
    for name, prob in probabilities.items():
        term = np.asarray(prob, dtype=np.float64) * signal(tissues[name], seq)
        out = term if out is None else out + term
    assert out is not None
    return out.astype(np.float32)
