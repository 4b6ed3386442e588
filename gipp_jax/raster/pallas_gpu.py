"""Tile rasterizer as Pallas kernels on Mosaic GPU (Triton-free), forward and backward.

Both kernels run one CUDA block (one warpgroup, 128 threads) per 16x16 tile and hold the
tile's 256 pixels as arrays. They consume the same :class:`~gipp_jax.raster.binning.TileBins`
as the XLA rasterizer: a tile's Gaussians are the slots of its consecutive chunks.

* forward: for every slot, the weight ``exp(-sigma)`` at the 256 pixels (kept where
  ``sigma >= 0`` and ``exp(-sigma) >= 1/255``), accumulated into the tile's colors;
* backward: for every slot, the same weights against the incoming pixel gradient, reduced
  to that slot's 8 gradients (mean, precision, color); they are summed per Gaussian outside.

``jax.custom_vjp`` ties them together, since ``pallas_call`` has no reverse-mode autodiff.
Off CUDA the same kernels run under Mosaic GPU's interpreter (slow: for tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu

from gipp_jax.raster.binning import (MIN_WEIGHT, PIXELS_PER_TILE, TILE_HALF, TILE_SIZE, TileBins,
                                     gaussian_sigma, tile_grid)
from gipp_jax.raster.xla import image_to_tiles, scatter_to_gaussians, tiles_to_image

# Per-Gaussian row of the parameter table: mean (2), precision factors (p, q, r), colors (K).
_MEAN, _PRECISION, _COLOR = 0, 2, 5


def _interpret_params(interpret: bool):
    if not interpret:
        return None
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    return InterpretGPUParams()


def _compiler_params():
    return plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup)


def _table(means, precisions, colors):
    """(N + 1, 5 + K) parameter table; the last row (the empty-slot index N) is zero."""
    table = jnp.concatenate([means, precisions, colors], axis=1).astype(jnp.float32)
    return jnp.concatenate([table, jnp.zeros((1, table.shape[1]), jnp.float32)])


def _tile_pixels(cols: int):
    """Inside a kernel: the tile's center and its pixels' offsets from it, (256,) each."""
    t = lax.axis_index("tile")
    cx = ((t % cols) * TILE_SIZE).astype(jnp.float32) + TILE_HALF
    cy = ((t // cols) * TILE_SIZE).astype(jnp.float32) + TILE_HALF
    pix = lax.broadcasted_iota(jnp.int32, (PIXELS_PER_TILE,), 0)
    lx = (pix % TILE_SIZE).astype(jnp.float32) - TILE_HALF
    ly = (pix // TILE_SIZE).astype(jnp.float32) - TILE_HALF
    return t, cx, cy, lx, ly


def _slot_weight(table_ref, g, cx, cy, lx, ly):
    """Weights (256,) of Gaussian row ``g`` on the tile, with its offsets ``dx, dy``; the
    arithmetic is the XLA rasterizer's, operation for operation."""
    dx = lx - (table_ref[g, _MEAN] - cx)
    dy = ly - (table_ref[g, _MEAN + 1] - cy)
    p, q, r = (table_ref[g, _PRECISION + i] for i in range(3))
    sigma = gaussian_sigma(p, q, r, dx, dy)
    weight = jnp.exp(-sigma)
    return jnp.where((sigma >= 0.0) & (weight >= MIN_WEIGHT), weight, 0.0), dx, dy


def _forward_kernel(chunk_size, cols, k, tile_chunks_ref, slots_ref, table_ref, out_ref):
    t, cx, cy, lx, ly = _tile_pixels(cols)
    first = tile_chunks_ref[t, 0] * chunk_size
    count = tile_chunks_ref[t, 1] * chunk_size

    def body(i, acc):
        g = slots_ref[first + i]
        weight, _, _ = _slot_weight(table_ref, g, cx, cy, lx, ly)
        return tuple(acc[j] + weight * table_ref[g, _COLOR + j] for j in range(k))

    zero = jnp.zeros((PIXELS_PER_TILE,), jnp.float32)
    acc = lax.fori_loop(0, count, body, (zero,) * k)
    for j in range(k):
        out_ref[t, j] = acc[j]


def _backward_kernel(chunk_size, cols, k, tile_chunks_ref, slots_ref, table_ref, grad_ref,
                     out_ref):
    t, cx, cy, lx, ly = _tile_pixels(cols)
    first = tile_chunks_ref[t, 0] * chunk_size
    count = tile_chunks_ref[t, 1] * chunk_size
    grads = [grad_ref[t, j] for j in range(k)]

    def body(i, carry):
        slot = first + i
        g = slots_ref[slot]
        weight, dx, dy = _slot_weight(table_ref, g, cx, cy, lx, ly)
        g_dot_c = grads[0] * table_ref[g, _COLOR]
        for j in range(1, k):
            g_dot_c = g_dot_c + grads[j] * table_ref[g, _COLOR + j]
        d_sigma = -weight * g_dot_c
        p, q, r = (table_ref[g, _PRECISION + m] for m in range(3))
        e = dy - q * dx  # sigma = (p dx^2 + r e^2) / 2
        sdx = jnp.sum(d_sigma * dx)
        se = jnp.sum(d_sigma * e)
        out_ref[slot, _MEAN] = -(p * sdx - r * q * se)
        out_ref[slot, _MEAN + 1] = -(r * se)
        out_ref[slot, _PRECISION] = 0.5 * jnp.sum(d_sigma * dx * dx)
        out_ref[slot, _PRECISION + 1] = -r * jnp.sum(d_sigma * e * dx)
        out_ref[slot, _PRECISION + 2] = 0.5 * jnp.sum(d_sigma * e * e)
        for j in range(k):
            out_ref[slot, _COLOR + j] = jnp.sum(weight * grads[j])
        return carry

    lax.fori_loop(0, count, body, 0)


def _launch(kernel, out_type, height, width, interpret, *args):
    rows, cols = tile_grid(height, width)
    return plgpu.kernel(
        kernel, out_type=out_type, grid=(rows * cols,), grid_names=("tile",),
        compiler_params=_compiler_params(), interpret=_interpret_params(interpret))(*args)


def _forward(means, precisions, colors, bins: TileBins, height, width, interpret):
    rows, cols = tile_grid(height, width)
    q, c = bins.chunk_gaussians.shape
    k = colors.shape[1]
    kernel = functools.partial(_forward_kernel, c, cols, k)
    tiles = _launch(kernel, jax.ShapeDtypeStruct((rows * cols, k, PIXELS_PER_TILE), jnp.float32),
                    height, width, interpret, bins.tile_chunks, bins.chunk_gaussians.reshape(-1),
                    _table(means, precisions, colors))
    return tiles_to_image(tiles, height, width)


def _backward(means, precisions, colors, bins: TileBins, height, width, interpret, grad_image):
    _, cols = tile_grid(height, width)
    n, k = colors.shape
    q, c = bins.chunk_gaussians.shape
    kernel = functools.partial(_backward_kernel, c, cols, k)
    per_slot = _launch(kernel, jax.ShapeDtypeStruct((q * c, 5 + k), jnp.float32), height, width,
                       interpret, bins.tile_chunks, bins.chunk_gaussians.reshape(-1),
                       _table(means, precisions, colors), image_to_tiles(grad_image.astype(jnp.float32)))
    # Slots no tile visits (beyond the last chunk) hold index N, whatever the kernel left there.
    per_slot = jnp.where((bins.chunk_gaussians.reshape(-1) < n)[:, None], per_slot, 0.0)
    per_gaussian = scatter_to_gaussians(bins, per_slot.reshape(q, c, -1), n)
    return (per_gaussian[:, _MEAN:_PRECISION], per_gaussian[:, _PRECISION:_COLOR],
            per_gaussian[:, _COLOR:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def rasterize(means, precisions, colors, bins: TileBins, height: int, width: int,
              interpret: bool = False) -> jax.Array:
    """Same contract as :func:`gipp_jax.raster.xla.rasterize`, on Mosaic GPU kernels.

    ``interpret=True`` runs the kernels under Mosaic GPU's interpreter (any platform)."""
    return _forward(means, precisions, colors, bins, height, width, interpret)


def _rasterize_fwd(means, precisions, colors, bins, height, width, interpret):
    out = _forward(means, precisions, colors, bins, height, width, interpret)
    return out, (means, precisions, colors, bins)


def _rasterize_bwd(height, width, interpret, residuals, grad_image):
    means, precisions, colors, bins = residuals
    grads = _backward(means, precisions, colors, bins, height, width, interpret, grad_image)
    zero_bins = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, jax.dtypes.float0), bins)
    return (*grads, zero_bins)


rasterize.defvjp(_rasterize_fwd, _rasterize_bwd)
