"""Acquisition artefacts added to synthesised images: a smooth bias field and Rician noise.

Both take a ``numpy.random.Generator`` so that a seeded build gives the same bytes every time.
"""

from __future__ import annotations

import itertools

import numpy as np


def bias_field(
    shape: tuple[int, ...], rng: np.random.Generator, amplitude: float, degree: int = 2
) -> np.ndarray:
    """A smooth multiplicative field spanning ``1 +- amplitude`` over the volume.

    A random polynomial of total degree ``degree`` in the normalised coordinates ([-1, 1] along
    each axis): low order, like the receive-coil sensitivity it imitates.
    """
    if not 0 <= amplitude < 1:
        raise ValueError(f"bias amplitude must be in [0, 1), got {amplitude}")
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    poly = np.zeros(shape, dtype=np.float64)
    for powers in itertools.product(range(degree + 1), repeat=len(shape)):
        if 0 < sum(powers) <= degree:
            term = np.ones(shape, dtype=np.float64)
            for ax, p in zip(axes, powers, strict=True):
                term = term * ax**p
            poly += rng.standard_normal() * term
    poly -= poly.mean()
    peak = np.abs(poly).max()
    if peak > 0:
        poly *= amplitude / peak
    return (1.0 + poly).astype(np.float32)


def rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise: ``|S + n_re + i n_im|``.

    A magnitude MR image has Rician, not Gaussian, noise: zero-mean noise in both quadrature
    channels, then the modulus, which lifts the dark background above zero.
    """
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    re = image + rng.normal(0.0, sigma, image.shape)
    im = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(re**2 + im**2).astype(np.float32)
