"""Image quality metrics in JAX for (H, W, 3) float images in [0, 1].

``psnr`` is ``10 log10(1 / MSE)`` on the float images (no 8-bit rounding), as the reference
reports it. ``ms_ssim`` follows ``pytorch_msssim.ms_ssim(X, Y, data_range=1)`` with its
defaults: 5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), an 11-tap Gaussian
window with sigma 1.5 applied separably without padding ("valid"), K = (0.01, 0.03), ReLU on
the per-scale values, and 2x2 average pooling between scales (zero padding of one pixel on
each side of an odd dimension, counted in the average, as ``F.avg_pool2d`` does).

Small images: pytorch_msssim refuses images whose shorter side is at most 160 pixels
(``(11 - 1) * 2^4``). Here such images use as many scales as fit: the largest L <= 5 with a
shorter side above ``10 * 2^(L-1)`` (at least one scale), with the first L weights
renormalised to sum to 1. With L = 5 the result is exactly pytorch_msssim's. Below 11 pixels
the window skips that axis, as pytorch_msssim's filter does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _check_pair(a, b):
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"expected two (H, W, C) images of one shape, got {a.shape} and {b.shape}")
    return a, b


def mse(a, b) -> jax.Array:
    a, b = _check_pair(a, b)
    return jnp.mean(jnp.square(a - b))


def psnr(a, b) -> jax.Array:
    """Peak signal-to-noise ratio in dB for images in [0, 1]; ``inf`` for equal images."""
    return -10.0 * jnp.log10(mse(a, b))


def _gaussian_window() -> np.ndarray:
    coords = np.arange(WINDOW_SIZE, dtype=np.float64) - WINDOW_SIZE // 2
    g = np.exp(-(coords ** 2) / (2 * WINDOW_SIGMA ** 2))
    return (g / g.sum()).astype(np.float32)


def _filter(x: jax.Array) -> jax.Array:
    """Separable valid Gaussian filter over axes 0 and 1 of (H, W, C); an axis shorter than
    the window is left unfiltered. A loop over the taps, not eleven unrolled slices per
    axis: the same sums, in a program that compiles several times faster."""
    win = jnp.asarray(_gaussian_window())
    for axis in (0, 1):
        n = x.shape[axis]
        if n < WINDOW_SIZE:
            continue
        out = list(x.shape)
        out[axis] = n - WINDOW_SIZE + 1

        def add_tap(k, acc, x=x, axis=axis, length=out[axis]):
            return acc + win[k] * jax.lax.dynamic_slice_in_dim(x, k, length, axis=axis)

        x = jax.lax.fori_loop(0, WINDOW_SIZE, add_tap, jnp.zeros(out, x.dtype))
    return x


def _ssim_and_cs(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean SSIM and contrast-structure, each (C,)."""
    c1, c2 = K1 ** 2, K2 ** 2
    mu1, mu2, xx, yy, xy = jnp.split(_filter(jnp.concatenate([x, y, x * x, y * y, x * y], axis=2)), 5, axis=2)
    s11, s22, s12 = xx - mu1 * mu1, yy - mu2 * mu2, xy - mu1 * mu2
    cs_map = (2 * s12 + c2) / (s11 + s22 + c2)
    ssim_map = ((2 * mu1 * mu2 + c1) / (mu1 * mu1 + mu2 * mu2 + c1)) * cs_map
    return jnp.mean(ssim_map, axis=(0, 1)), jnp.mean(cs_map, axis=(0, 1))


def _avg_pool(x: jax.Array) -> jax.Array:
    """2x2 average pool, stride 2; odd axes padded by one zero on each side (counted)."""
    pad = [(s % 2, s % 2) for s in x.shape[:2]] + [(0, 0)]
    x = jnp.pad(x, pad)
    h, w = (x.shape[0] - 2) // 2 + 1, (x.shape[1] - 2) // 2 + 1
    x = x[: 2 * h, : 2 * w]
    return x.reshape(h, 2, w, 2, x.shape[2]).mean(axis=(1, 3))


def ms_ssim_levels(height: int, width: int) -> int:
    """Number of scales used for an image of this size (see the module docstring)."""
    side = min(height, width)
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and side > (WINDOW_SIZE - 1) * 2 ** levels:
        levels += 1
    return levels


def ms_ssim(a, b) -> jax.Array:
    """Multi-scale SSIM of two (H, W, C) images in [0, 1], averaged over channels."""
    return _ms_ssim(*_check_pair(a, b))


@jax.jit
def _ms_ssim(x: jax.Array, y: jax.Array) -> jax.Array:
    levels = ms_ssim_levels(x.shape[0], x.shape[1])
    weights = np.asarray(MS_SSIM_WEIGHTS[:levels], np.float64)
    weights = jnp.asarray(weights / weights.sum(), jnp.float32)
    factors = []
    for level in range(levels):
        ssim, cs = _ssim_and_cs(x, y)
        if level < levels - 1:
            factors.append(jax.nn.relu(cs))
            x, y = _avg_pool(x), _avg_pool(y)
    factors.append(jax.nn.relu(ssim))
    stacked = jnp.stack(factors)  # (levels, C)
    return jnp.mean(jnp.prod(stacked ** weights[:, None], axis=0))


BD_METHODS = ("polynomial", "pchip")


def bjontegaard(reference, test, method: str = "polynomial") -> dict:
    """Bjontegaard deltas of the RD curve ``test`` against ``reference``.

    Args:
      reference, test: sequences of ``(bits per pixel, PSNR dB)`` points.
      method: ``polynomial``: one cubic fit in log-rate per curve (a lower degree, the same
        for both, for fewer than four points), as in VCEG-M33; ``pchip``: each curve
        interpolated through its own points piecewise-cubically and monotonically
        (Fritsch-Carlson, ``scipy.interpolate.PchipInterpolator``), as codec studies
        compute it now (the ``bjontegaard`` package's ``method="pchip"``). A cubic through
        many points of a long curve (a reference codec's sweep) can miss the part of it that
        the shared range covers; the piecewise curve follows its points.
    Returns:
      ``{"bd_rate_percent", "bd_psnr_db"}``: the mean rate difference in % at equal
      quality (negative: ``test`` needs fewer bits) and the mean PSNR difference at equal
      rate, each over the range both curves cover (``None`` where they do not overlap or a
      curve has fewer than two points).
    """
    if method not in BD_METHODS:
        raise ValueError(f"unknown BD method {method!r}; choose from {', '.join(BD_METHODS)}")
    r = np.array(sorted(reference), np.float64).reshape(-1, 2)
    t = np.array(sorted(test), np.float64).reshape(-1, 2)
    deg = min(3, len(r) - 1, len(t) - 1)
    if deg < 1:
        return {"bd_rate_percent": None, "bd_psnr_db": None}
    lr, lt = np.log(r[:, 0]), np.log(t[:, 0])

    def integral(x, y, lo, hi):
        """The integral over [lo, hi] of y(x) interpolated through the points (x, y)."""
        if method == "polynomial":
            p = np.polyint(np.polyfit(x, y, deg))
            return np.polyval(p, hi) - np.polyval(p, lo)
        from scipy.interpolate import PchipInterpolator

        xs, inverse = np.unique(x, return_inverse=True)  # equal x: their mean y
        ys = np.bincount(inverse, weights=y) / np.bincount(inverse)
        if xs.size < 2:
            return None
        return PchipInterpolator(xs, ys).integrate(lo, hi)

    def mean_gap(xr, yr, xt, yt):
        lo, hi = max(xr.min(), xt.min()), min(xr.max(), xt.max())
        if hi <= lo:
            return None
        gaps = integral(xt, yt, lo, hi), integral(xr, yr, lo, hi)
        return None if None in gaps else float((gaps[0] - gaps[1]) / (hi - lo))

    log_gap = mean_gap(r[:, 1], lr, t[:, 1], lt)
    return {"bd_rate_percent": None if log_gap is None else float((np.exp(log_gap) - 1) * 100),
            "bd_psnr_db": mean_gap(lr, r[:, 1], lt, t[:, 1])}
