"""Where a residual oscillates: the best cosine-carrier atom at a pixel (host-side, NumPy).

A primitive with a carrier draws ``color * g(d) cos(2 pi k.d + phi)``, ``g`` its Gaussian
envelope (:mod:`gipp_jax.raster`). Matching pursuit's question at a pixel is which atom of
the dictionary captures most of the residual there. For an isotropic envelope ``g`` of
standard deviation ``sigma`` centred on the pixel, the windowed Fourier transform of the
residual ``F_c(k) = sum_d g(d) r_c(d) exp(-2 pi i k.d)`` answers it for every frequency at
once: with ``u + i v = F(k)`` (one complex number per channel), the atom of phase ``phi``
correlates with the residual by ``u cos(phi) + v sin(phi)`` per channel, the best ``phi`` is
the leading eigenvector of ``[[u.u, u.v], [u.v, v.v]]``, and the energy the atom takes out
of the residual is that eigenvalue over ``sum g^2 cos^2``. The plain Gaussian (``k = 0``)
takes ``|F(0)|^2 / sum g^2``. A placement compares the two, each per number it costs.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from gipp_jax import quantize as q_lib
from gipp_jax.entropy import empirical_bits

# Frequencies are searched on the grid of a transform as wide as the patch (its side rounded
# up to a power of two, at most this): a step of about 1 / (6 sigma) cycle per pixel, the
# envelope's own bandwidth, refined by gradient descent in the fit. Twice as fine (zero
# padding to 64) cost a full-size growth event 1.5 s instead of 0.12 s and gave four 192x192
# Kodak crops 27.33 against 27.32 dB (600 steps, 600 Gaussians).
MAX_FFT_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Atoms:
    """The best atoms at K pixels: ``carriers`` (K, 3) ``(kx, ky, phi)`` (cycles per pixel,
    radians; the phase relative to the pixel's center) and ``colors`` (K, 3) of the best
    carrier atom, and the residual energy (sum of squares over pixels and channels) that
    atom (``carrier_energy``, (K,)) and the plain Gaussian (``plain_energy``, (K,)) take out."""

    carriers: np.ndarray
    colors: np.ndarray
    carrier_energy: np.ndarray
    plain_energy: np.ndarray


def best_atoms(residual: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float,
               min_frequency: float | None = None) -> Atoms:
    """The best carrier atom with an isotropic envelope of ``sigma`` pixels at each pixel
    ``(x[i], y[i])`` (integer columns and rows) of an (H, W, 3) ``residual``.

    Frequencies below ``min_frequency`` cycles per pixel (default ``1 / (4 sigma)``: less
    than a quarter period within a standard deviation, where a carrier is barely more than
    the plain Gaussian) and above the Nyquist limit of 0.5 are not searched. Pixels beyond
    the image read zero.
    """
    residual = np.asarray(residual, np.float32)
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    sigma = float(sigma)
    radius = int(min(MAX_FFT_SIZE // 2 - 1, max(2, np.ceil(3.0 * sigma))))
    fft_size = 1 << int(np.ceil(np.log2(2 * radius + 1)))
    offsets = np.arange(-radius, radius + 1)
    window = np.exp(-0.5 * (offsets[:, None] ** 2 + offsets[None, :] ** 2) / sigma ** 2).astype(np.float32)
    padded = np.pad(residual, ((radius, radius), (radius, radius), (0, 0)))
    rows = y[:, None] + radius + offsets[None, :]  # (K, P) rows of each patch in the padded image
    cols = x[:, None] + radius + offsets[None, :]
    patches = padded[rows[:, :, None], cols[:, None, :]] * window[None, :, :, None]  # (K, P, P, 3)
    # Offsets d placed at index d mod fft_size: the transform's phase is then relative to the pixel.
    grid = np.zeros((len(x), fft_size, fft_size, 3), np.float32)
    grid[:, :2 * radius + 1, :2 * radius + 1] = patches
    grid = np.roll(grid, (-radius, -radius), axis=(1, 2))
    spectrum = np.fft.fft2(grid, axes=(1, 2))  # (K, F, F, 3), axis 1 along y
    u, v = spectrum.real, spectrum.imag
    uu, vv, uv = (np.einsum("kabc,kabc->kab", a, b) for a, b in ((u, u), (v, v), (u, v)))
    top = 0.5 * (uu + vv) + np.sqrt(0.25 * (uu - vv) ** 2 + uv ** 2)  # leading eigenvalue

    freq = np.fft.fftfreq(fft_size)
    ky, kx = np.meshgrid(freq, freq, indexing="ij")
    k_min = 1.0 / (4.0 * sigma) if min_frequency is None else float(min_frequency)
    searched = (np.hypot(kx, ky) >= k_min) & (np.abs(kx) < 0.5) & (np.abs(ky) < 0.5)
    score = np.where(searched[None], top, -1.0).reshape(len(x), -1)
    best = np.argmax(score, axis=1)
    by, bx = np.divmod(best, fft_size)
    take = np.arange(len(x))
    u_best, v_best = u[take, by, bx], v[take, by, bx]  # (K, 3)
    phi = 0.5 * np.arctan2(2.0 * uv[take, by, bx], uu[take, by, bx] - vv[take, by, bx])
    k = np.stack([kx[by, bx], ky[by, bx]], -1)
    correlation = u_best * np.cos(phi)[:, None] + v_best * np.sin(phi)[:, None]  # (K, 3)
    # Exact sum of g^2 cos^2 over the patch for each atom.
    dx, dy = offsets[None, None, :], offsets[None, :, None]
    theta = 2.0 * np.pi * (k[:, 0, None, None] * dx + k[:, 1, None, None] * dy) + phi[:, None, None]
    norm = np.einsum("kab->k", (window[None] * np.cos(theta)) ** 2)
    norm = np.maximum(norm, 1e-12)
    colors = correlation / norm[:, None]
    # A positive color sum: the phase carries the sign (the same atom), as a sigmoid color needs.
    flip = colors.sum(-1) < 0
    colors = np.where(flip[:, None], -colors, colors)
    phi = np.where(flip, phi + np.pi, phi)
    phi = np.angle(np.exp(1j * phi))
    plain = np.einsum("kc,kc->k", u[:, 0, 0], u[:, 0, 0]) / float(np.sum(window ** 2))
    carrier_energy = np.einsum("kc,kc->k", correlation, correlation) / norm
    return Atoms(carriers=np.concatenate([k, phi[:, None]], -1).astype(np.float32),
                 colors=colors.astype(np.float32), carrier_energy=carrier_energy, plain_energy=plain)


# ---------------------------------------------------------------------------------------
# What carriers would cost in a file, estimated by entropy (tools/rd_ceiling.py); the .gipp
# format codes them with quantize.CarrierQuantizer's grid and an adaptive entropy coder.


def quantize(carriers: np.ndarray, frequency_bits: int = q_lib.FREQUENCY_BITS,
             phase_bits: int = q_lib.PHASE_BITS) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, values)``: the (N, 3) integer codes of :func:`gipp_jax.quantize.carrier_codes`
    at these depths and the (N, 3) carriers they decode to."""
    cq = q_lib.CarrierQuantizer(frequency_bits, phase_bits)
    codes = q_lib.carrier_codes(cq, jnp.asarray(carriers, jnp.float32))
    return np.asarray(codes, np.int64), np.asarray(q_lib.carriers_from_codes(cq, codes))


def carrier_bits(carriers: np.ndarray, num_primitives: int, frequency_bits: int = q_lib.FREQUENCY_BITS,
                 phase_bits: int = q_lib.PHASE_BITS) -> float:
    """Bits that the carriers of a file of ``num_primitives`` primitives would take, of which
    the rows of (N, 3) ``carriers`` carry one: a flag per primitive (carrier or not) and
    each carrier's three codes, each by its entropy (:func:`gipp_jax.entropy.empirical_bits`)."""
    n = len(carriers)
    flags = np.zeros(num_primitives, np.int64)
    flags[:n] = 1
    if n == 0:
        return 0.0
    codes, _ = quantize(carriers, frequency_bits, phase_bits)
    return empirical_bits(flags) + sum(empirical_bits(codes[:, j]) for j in range(3))
