"""The MR signal equations and the synthetic artefacts (bias field, Rician noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from midiffusion.data.artifacts import bias_field, rician_noise
from midiffusion.data.contrast import (
    SEQUENCES,
    TISSUES,
    Sequence,
    Tissue,
    inversion_recovery,
    mix,
    signal,
    spin_echo,
)


def test_spin_echo_matches_hand_computed_value() -> None:
    # GM at T2w (TR 4000, TE 100): 0.86 * (1 - e^{-4000/1200}) * e^{-1}
    expected = 0.86 * (1 - math.exp(-4000 / 1200)) * math.exp(-1.0)
    assert signal(TISSUES["gm"], SEQUENCES["t2w"]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.3050, abs=1e-4)


def test_spin_echo_limits() -> None:
    # TE -> 0 and TR -> inf: the signal is the proton density.
    assert spin_echo(0.7, 900.0, 80.0, tr_ms=1e9, te_ms=0.0) == pytest.approx(0.7)
    # Longer TE loses signal, longer TR gains it.
    assert spin_echo(1, 900, 80, 4000, 100) < spin_echo(1, 900, 80, 4000, 15)
    assert spin_echo(1, 900, 80, 2000, 15) < spin_echo(1, 900, 80, 4000, 15)


def test_inversion_recovery_nulls_a_tissue_at_ti_t1_ln2() -> None:
    t1 = 4000.0
    null = inversion_recovery(1.0, t1, 2000.0, tr_ms=1e9, te_ms=0.0, ti_ms=t1 * math.log(2))
    assert null == pytest.approx(0.0, abs=1e-12)
    # Magnitude reconstruction: never negative, even before the null point.
    assert inversion_recovery(1.0, t1, 2000.0, tr_ms=1e9, te_ms=0.0, ti_ms=100.0) > 0.9


def test_contrast_orderings_of_the_benchmark_sequences() -> None:
    s = {name: {t: signal(TISSUES[t], seq) for t in TISSUES} for name, seq in SEQUENCES.items()}
    assert s["t2w"]["csf"] > s["t2w"]["gm"] > s["t2w"]["wm"]  # T2w: CSF bright
    assert s["flair"]["gm"] > s["flair"]["wm"] > s["flair"]["csf"]  # FLAIR: CSF dark
    assert s["flair"]["csf"] < 0.2 * s["flair"]["wm"]
    pdw = [s["pdw"][t] for t in ("gm", "wm", "csf")]
    assert max(pdw) - min(pdw) < 0.1  # PDw: tissues close together (the hard low-contrast case)
    # the head's tissues: bone dark everywhere, fat bright on T1-like and FLAIR, dark CSF on FLAIR
    for seq in s.values():
        assert seq["bone"] < 0.1 * max(seq.values())
    assert s["flair"]["fat"] > s["flair"]["csf"] and s["pdw"]["fat"] > s["pdw"]["muscle"]


def test_mix_is_probability_weighted_and_validates() -> None:
    gm = np.array([1.0, 0.0, 0.5])
    wm = np.array([0.0, 1.0, 0.5])
    seq = SEQUENCES["t2w"]
    out = mix({"gm": gm, "wm": wm}, seq)
    sg, sw = signal(TISSUES["gm"], seq), signal(TISSUES["wm"], seq)
    np.testing.assert_allclose(out, [sg, sw, (sg + sw) / 2], rtol=1e-6)
    with pytest.raises(ValueError, match="cartilage"):
        mix({"cartilage": gm}, seq)
    with pytest.raises(ValueError, match="ti_ms"):
        signal(Tissue(1, 1000, 100), Sequence("ir", 9000, 100))
    with pytest.raises(ValueError, match="kind"):
        signal(Tissue(1, 1000, 100), Sequence("gre", 9000, 100))


def test_bias_field_is_smooth_bounded_and_seeded() -> None:
    shape = (32, 32, 8)
    f1 = bias_field(shape, np.random.default_rng(3), amplitude=0.12)
    f2 = bias_field(shape, np.random.default_rng(3), amplitude=0.12)
    f3 = bias_field(shape, np.random.default_rng(4), amplitude=0.12)
    assert np.array_equal(f1, f2) and not np.array_equal(f1, f3)
    assert np.abs(f1 - 1).max() == pytest.approx(0.12, rel=1e-5)
    assert np.abs(np.diff(f1, axis=0)).max() < 0.05  # smooth: small steps between neighbours


def test_rician_noise_statistics() -> None:
    rng = np.random.default_rng(0)
    zero = rician_noise(np.zeros(200_000), sigma=1.0, rng=rng)
    # Pure noise becomes Rayleigh: mean sigma * sqrt(pi / 2), never negative.
    assert zero.min() >= 0
    assert zero.mean() == pytest.approx(math.sqrt(math.pi / 2), rel=0.01)
    # High SNR: nearly Gaussian around the signal.
    high = rician_noise(np.full(200_000, 50.0), sigma=1.0, rng=rng)
    assert high.mean() == pytest.approx(50.0, abs=0.05)
    assert high.std() == pytest.approx(1.0, rel=0.02)
