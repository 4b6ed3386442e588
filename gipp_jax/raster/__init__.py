"""Rendering: a sum of 2D Gaussians over an image.

:func:`render_gaussians` is the one entry point; the rasterizer behind it (``backend``) is
an implementation detail. :func:`render_with_stats` is the jit-friendly form used by the
training loop: it takes a static pair capacity and reports how many pairs were needed,
so that an overflow can be detected and the work re-run with a larger capacity.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gipp_jax.raster import pallas_gpu, xla
from gipp_jax.raster.binning import (
    DEFAULT_CHUNK_SIZE,
    bin_gaussians,
    covariance_to_triple,
    footprint,
    round_capacity,
)
from gipp_jax.raster.dense import render_dense
from gipp_jax.parameterization import triple_to_matrix

try:  # public in jax 0.10; kept private-import fallback for later releases
    from jax.core import Tracer as _Tracer
except ImportError:  # pragma: no cover
    from jax._src.core import Tracer as _Tracer

BACKENDS = ("auto", "xla", "pallas")

__all__ = [
    "BACKENDS",
    "CapacityOverflowError",
    "count_pairs",
    "render_dense",
    "render",
    "render_gaussians",
    "render_with_stats",
    "scale_gaussians",
]


class CapacityOverflowError(RuntimeError):
    """A render needed more (tile, Gaussian) pairs than its static capacity holds."""


def render_with_stats(means: jax.Array, cov3: jax.Array, colors: jax.Array, height: int,
                      width: int, pair_capacity: int, chunk_capacity: int | None = None, *,
                      backend: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
                      ) -> tuple[jax.Array, jax.Array]:
    """Renders and reports the pair count; traceable, differentiable w.r.t. the arrays.

    Args:
      means: (N, 2) centers (x, y) in pixels.
      cov3: (N, 3) covariances ``(a, b, c)`` = ``[[a, b], [b, c]]`` in pixels^2.
      colors: (N, K) colors.
      height, width, pair_capacity, chunk_capacity, chunk_size: static ints; see
        :func:`gipp_jax.raster.binning.bin_gaussians`.
    Returns:
      ``(image, usage)``: the (height, width, K) unclamped image and an int32 array
      ``[num_pairs, num_chunks]`` of what the image needed. The image is complete iff
      ``num_pairs <= pair_capacity`` and ``num_chunks <= chunk_capacity``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose from {BACKENDS}")
    fp = footprint(jax.lax.stop_gradient(means), cov3, height, width)
    bins = bin_gaussians(jax.lax.stop_gradient(fp), height, width, pair_capacity,
                         chunk_capacity, chunk_size)
    args = (means, fp.conics, colors, bins)
    if backend == "xla":
        image = xla.rasterize(*args, height, width)
    elif backend == "pallas":
        # On CUDA the kernels compile for the GPU; elsewhere they run interpreted.
        image = pallas_gpu.rasterize(*args, height, width, jax.default_backend() != "gpu")
    else:
        image = jax.lax.platform_dependent(
            *args,
            cuda=lambda *a: pallas_gpu.rasterize(*a, height, width),
            default=lambda *a: xla.rasterize(*a, height, width))
    return image, jnp.stack([bins.num_pairs, bins.num_chunks])


@functools.partial(jax.jit, static_argnums=(2, 3))
def _count_pairs(means, cov3, height, width):
    return jnp.sum(footprint(means, cov3, height, width).num_tiles)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _count_chunks(means, cov3, height, width, pair_capacity, chunk_size):
    fp = footprint(means, cov3, height, width)
    return bin_gaussians(fp, height, width, pair_capacity, 1, chunk_size).num_chunks


def count_pairs(means: jax.Array, covariances: jax.Array, height: int, width: int) -> int:
    """Exact number of (tile, Gaussian) pairs for concrete inputs (host-side)."""
    return int(_count_pairs(jnp.asarray(means, jnp.float32),
                            covariance_to_triple(jnp.asarray(covariances, jnp.float32)),
                            height, width))


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def _render_jit(means, cov3, colors, height, width, pair_capacity, chunk_capacity, backend, chunk_size):
    return render_with_stats(means, cov3, colors, height, width, pair_capacity, chunk_capacity,
                             backend=backend, chunk_size=chunk_size)


def _check_shapes(means, covariances, colors, height, width):
    n = means.shape[0] if means.ndim == 2 else -1
    if means.ndim != 2 or means.shape[1] != 2:
        raise ValueError(f"means must have shape (N, 2), got {means.shape}")
    if covariances.shape != (n, 2, 2):
        raise ValueError(f"covariances must have shape ({n}, 2, 2), got {covariances.shape}")
    if colors.ndim != 2 or colors.shape[0] != n:
        raise ValueError(f"colors must have shape ({n}, K), got {colors.shape}")
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")


def render_gaussians(means: jax.Array, covariances: jax.Array, colors: jax.Array,
                     height: int, width: int, *, backend: str = "auto",
                     pair_capacity: int | None = None,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
    """Renders ``C(x) = sum_i colors_i exp(-0.5 d^T Sigma_i^-1 d)``, ``d = x - means_i``.

    Every Gaussian that touches a tile is rendered; there is no per-tile limit.

    Args:
      means: (N, 2) float centers (x, y) in pixels; pixel (row i, column j) is at x=j, y=i.
      covariances: (N, 2, 2) float covariance matrices in pixels^2.
      colors: (N, K) float colors (K = 3 for RGB).
      height, width: output size in pixels.
      backend: ``"auto"`` (the Mosaic GPU kernels on CUDA, XLA elsewhere), ``"xla"`` or
        ``"pallas"`` (the Mosaic GPU kernels; interpreted, and slow, off CUDA).
      pair_capacity: static number of (tile, Gaussian) pairs to allocate. ``None`` sizes it
        exactly from concrete inputs; under a trace (inside ``jax.jit``) it defaults to a
        heuristic, and an overflow makes the image NaN rather than silently incomplete.
      chunk_size: Gaussians evaluated together per tile (a tuning knob).
    Returns:
      (height, width, K) float32 image, NOT clamped. Differentiable w.r.t. means,
      covariances and colors.
    """
    means = jnp.asarray(means, jnp.float32)
    covariances = jnp.asarray(covariances, jnp.float32)
    colors = jnp.asarray(colors, jnp.float32)
    _check_shapes(means, covariances, colors, height, width)
    height, width = int(height), int(width)
    if means.shape[0] == 0:
        return jnp.zeros((height, width, colors.shape[1]), jnp.float32)
    cov3 = covariance_to_triple(covariances)
    traced = any(isinstance(x, _Tracer) for x in (means, cov3, colors))
    if pair_capacity is None:
        if traced:
            pair_capacity = round_capacity(8 * means.shape[0], headroom=1.0)
        else:
            pair_capacity = round_capacity(int(_count_pairs(means, cov3, height, width)),
                                           headroom=1.0)
    chunk_capacity = None  # under a trace, the worst case for pair_capacity
    if not traced:  # exactly what these Gaussians need: most of a box's pairs are skipped
        chunk_capacity = round_capacity(int(_count_chunks(means, cov3, height, width, int(pair_capacity),
                                                          int(chunk_size))), headroom=1.0, minimum=1)
    image, (num_pairs, _) = _render_jit(means, cov3, colors, height, width, int(pair_capacity),
                                        chunk_capacity, backend, int(chunk_size))
    if traced:
        return jnp.where(num_pairs <= pair_capacity, image, jnp.nan)
    if int(num_pairs) > pair_capacity:
        raise CapacityOverflowError(
            f"render needed {int(num_pairs)} tile/Gaussian pairs but pair_capacity is "
            f"{pair_capacity}; pass pair_capacity=None to size it automatically")
    return image


def scale_gaussians(means: jax.Array, cov3: jax.Array, scale_x: float, scale_y: float):
    """Maps Gaussians to an image resized by ``(scale_x, scale_y)``: the representation is
    continuous, so resizing is a change of coordinates. Returns ``(means, cov3)``."""
    s = jnp.array([scale_x, scale_y], jnp.float32)
    cov_scale = jnp.array([scale_x * scale_x, scale_x * scale_y, scale_y * scale_y], jnp.float32)
    return means * s, cov3 * cov_scale


def render(model, height: int | None = None, width: int | None = None, *,
           backend: str = "auto") -> jax.Array:
    """Renders a :class:`~gipp_jax.model.GaussianModel`, clamped to [0, 1].

    Args:
      model: a fitted model.
      height, width: output size; default the model's own. Another size renders the same
        continuous image resampled (e.g. twice the size for 2x upscaling).
    Returns:
      (height, width, 3) float32 in [0, 1].
    """
    from gipp_jax.model import activated_colors, filtered_covariance, pixel_means

    height = model.height if height is None else int(height)
    width = model.width if width is None else int(width)
    cov3 = filtered_covariance(model)
    means, cov3 = scale_gaussians(pixel_means(model), cov3, width / model.width, height / model.height)
    image = render_gaussians(means, triple_to_matrix(cov3), activated_colors(model), height,
                             width, backend=backend)
    return jnp.clip(image, 0.0, 1.0)
