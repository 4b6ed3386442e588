"""Tile rasterizer as Pallas kernels on Mosaic GPU (Triton-free), forward and backward.

Both kernels run one CUDA block (one warpgroup, 128 threads) per 16x16 tile and hold the
tile's 256 pixels as arrays. They consume the same :class:`~gipp_jax.raster.binning.TileBins`
as the XLA rasterizer: a tile's Gaussians are the slots of its consecutive chunks.

* forward: for every slot, the weight ``exp(-sigma)`` at the 256 pixels (kept where
  ``sigma >= 0`` and ``exp(-sigma) >= 1/255``), accumulated into the tile's colors;
* backward: for every slot, the same weights against the incoming pixel gradient, reduced
  to that slot's 8 gradients (mean, precision, color); they are summed per Gaussian outside.

With carriers (``(kx, ky, phi)`` per primitive, three more columns of the parameter table)
both kernels multiply the envelope by ``cos(2 pi k.d + phi)`` and the backward kernel writes
the carrier's 3 gradients too; without them the kernels are traced without a carrier.

``jax.custom_vjp`` ties them together, since ``pallas_call`` has no reverse-mode autodiff.
Which form of a kernel runs follows the platform the program is lowered for, not the host's
backend (:func:`_kernel_call`): compiled for CUDA, under Mosaic GPU's interpreter elsewhere
(slow: for tests). So a program lowered on a CPU host for a GPU holds the compiled kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.extend import core as jex_core
from jax.interpreters import batching, mlir

from gipp_jax.raster.binning import (MIN_WEIGHT, PIXELS_PER_TILE, TILE_HALF, TILE_SIZE, TileBins,
                                     carrier_phase, gaussian_sigma, tile_grid)
from gipp_jax.raster.xla import image_to_tiles, scatter_to_gaussians, tiles_to_image, zero_bin_cotangents

# Per-Gaussian row of the parameter table: mean (2), precision factors (p, q, r), colors (K),
# then, with carriers, (kx, ky, phi) from column 5 + K.
_MEAN, _PRECISION, _COLOR = 0, 2, 5


def _interpret_params(interpret: bool):
    if not interpret:
        return None
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    return InterpretGPUParams()


def _compiler_params():
    return plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup)


def _table(means, precisions, colors, carriers):
    """(N + 1, 5 + K [+ 3]) parameter table; the last row (the empty-slot index N) is zero."""
    columns = [means, precisions, colors] + ([] if carriers is None else [carriers])
    table = jnp.concatenate(columns, axis=1).astype(jnp.float32)
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
    """Envelope weights (256,) of Gaussian row ``g`` on the tile, with its offsets ``dx, dy``;
    the arithmetic is the XLA rasterizer's, operation for operation."""
    dx = lx - (table_ref[g, _MEAN] - cx)
    dy = ly - (table_ref[g, _MEAN + 1] - cy)
    p, q, r = (table_ref[g, _PRECISION + i] for i in range(3))
    sigma = gaussian_sigma(p, q, r, dx, dy)
    weight = jnp.exp(-sigma)
    return jnp.where((sigma >= 0.0) & (weight >= MIN_WEIGHT), weight, 0.0), dx, dy


def _slot_phase(table_ref, g, carrier, dx, dy):
    """Carrier phase (256,) of row ``g``, whose carrier starts at column ``carrier``."""
    return carrier_phase(table_ref[g, carrier], table_ref[g, carrier + 1], table_ref[g, carrier + 2], dx, dy)


def _forward_kernel(chunk_size, cols, k, carrier, tile_chunks_ref, slots_ref, table_ref, out_ref):
    t, cx, cy, lx, ly = _tile_pixels(cols)
    first = tile_chunks_ref[t, 0] * chunk_size
    count = tile_chunks_ref[t, 1] * chunk_size

    def body(i, acc):
        g = slots_ref[first + i]
        weight, dx, dy = _slot_weight(table_ref, g, cx, cy, lx, ly)
        if carrier:
            weight = weight * jnp.cos(_slot_phase(table_ref, g, carrier, dx, dy))
        return tuple(acc[j] + weight * table_ref[g, _COLOR + j] for j in range(k))

    zero = jnp.zeros((PIXELS_PER_TILE,), jnp.float32)
    acc = lax.fori_loop(0, count, body, (zero,) * k)
    for j in range(k):
        out_ref[t, j] = acc[j]


def _backward_kernel(chunk_size, cols, k, carrier, tile_chunks_ref, slots_ref, table_ref, grad_ref,
                     out_ref):
    t, cx, cy, lx, ly = _tile_pixels(cols)
    first = tile_chunks_ref[t, 0] * chunk_size
    count = tile_chunks_ref[t, 1] * chunk_size
    grads = [grad_ref[t, j] for j in range(k)]

    def body(i, carry):
        slot = first + i
        g = slots_ref[slot]
        envelope, dx, dy = _slot_weight(table_ref, g, cx, cy, lx, ly)
        weight = envelope
        if carrier:
            theta = _slot_phase(table_ref, g, carrier, dx, dy)
            weight = envelope * jnp.cos(theta)
        g_dot_c = grads[0] * table_ref[g, _COLOR]
        for j in range(1, k):
            g_dot_c = g_dot_c + grads[j] * table_ref[g, _COLOR + j]
        d_sigma = -weight * g_dot_c
        p, q, r = (table_ref[g, _PRECISION + m] for m in range(3))
        e = dy - q * dx  # sigma = (p dx^2 + r e^2) / 2
        sdx = jnp.sum(d_sigma * dx)
        se = jnp.sum(d_sigma * e)
        d_mean_x, d_mean_y = -(p * sdx - r * q * se), -(r * se)
        if carrier:
            # theta = 2 pi k.d + phi: dtheta/dmean = -2 pi k, dtheta/dk = 2 pi d, dtheta/dphi = 1.
            d_theta = -envelope * jnp.sin(theta) * g_dot_c
            t0 = jnp.sum(d_theta)
            two_pi = 2.0 * jnp.pi
            d_mean_x = d_mean_x - two_pi * table_ref[g, carrier] * t0
            d_mean_y = d_mean_y - two_pi * table_ref[g, carrier + 1] * t0
            out_ref[slot, carrier] = two_pi * jnp.sum(d_theta * dx)
            out_ref[slot, carrier + 1] = two_pi * jnp.sum(d_theta * dy)
            out_ref[slot, carrier + 2] = t0
        out_ref[slot, _MEAN] = d_mean_x
        out_ref[slot, _MEAN + 1] = d_mean_y
        out_ref[slot, _PRECISION] = 0.5 * jnp.sum(d_sigma * dx * dx)
        out_ref[slot, _PRECISION + 1] = -r * jnp.sum(d_sigma * e * dx)
        out_ref[slot, _PRECISION + 2] = 0.5 * jnp.sum(d_sigma * e * e)
        for j in range(k):
            out_ref[slot, _COLOR + j] = jnp.sum(weight * grads[j])
        return carry

    lax.fori_loop(0, count, body, 0)


def _launch(kernel, out_type, height, width, interpret, *args):
    """Runs ``kernel`` over the tiles: compiled (``interpret=False``), interpreted
    (``True``), or compiled or interpreted by the platform the program is lowered for (``None``)."""
    rows, cols = tile_grid(height, width)

    def build(interpreted):
        call = plgpu.kernel(kernel, out_type=out_type, grid=(rows * cols,), grid_names=("tile",),
                            compiler_params=_compiler_params(), interpret=_interpret_params(interpreted))
        return lambda *a: (call(*a),)

    if interpret is None:
        return _kernel_call(build(False), build(True), *args)[0]
    return build(interpret)(*args)[0]


# A kernel call lowered by the platform the program is lowered for: the compiled kernel on
# CUDA, the interpreter elsewhere. ``lax.platform_dependent`` cannot make this choice: the
# interpreter's host callbacks are an ordered effect, and a conditional lowered for CUDA keeps
# only the compiled branch but is still expected to thread that effect's token. This call
# carries the interpreter's effects wherever it is lowered; on CUDA their tokens pass through.
_kernel_call_p = jex_core.Primitive("gipp_mosaic_gpu_kernel")
_kernel_call_p.multiple_results = True


def _kernel_call(compiled, interpreted, *args):
    """``compiled(*args)`` where the program is lowered for CUDA, else ``interpreted(*args)``;
    both return a tuple of arrays of the same shapes."""
    return _kernel_call_p.bind(*args, compiled=compiled, interpreted=interpreted)


def _kernel_call_impl(*args, compiled, interpreted):
    return jax.jit(functools.partial(_kernel_call, compiled, interpreted))(*args)


def _kernel_call_abstract_eval(*avals, compiled, interpreted):
    jaxpr = jax.make_jaxpr(interpreted)(*avals)  # the same outputs as the compiled kernel's
    return jaxpr.out_avals, jaxpr.effects


def _lower_compiled(ctx, *args, compiled, interpreted):
    return mlir.lower_fun(compiled, multiple_results=True)(ctx, *args)


def _lower_interpreted(ctx, *args, compiled, interpreted):
    return mlir.lower_fun(interpreted, multiple_results=True)(ctx, *args)


def _kernel_call_batch(args, dims, *, compiled, interpreted):
    args = [x if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(args, dims)]
    axes = tuple(None if d is None else 0 for d in dims)
    outs = _kernel_call(jax.vmap(compiled, axes), jax.vmap(interpreted, axes), *args)
    return outs, [0] * len(outs)


_kernel_call_p.def_impl(_kernel_call_impl)
_kernel_call_p.def_effectful_abstract_eval(_kernel_call_abstract_eval)
mlir.register_lowering(_kernel_call_p, _lower_compiled, platform="cuda")
mlir.register_lowering(_kernel_call_p, _lower_interpreted)
batching.primitive_batchers[_kernel_call_p] = _kernel_call_batch


def _carrier_column(k: int, carriers) -> int:
    """Column of the table where the carrier starts (0: no carrier)."""
    return 0 if carriers is None else _COLOR + k


def _forward(means, precisions, colors, carriers, bins: TileBins, height, width, interpret):
    rows, cols = tile_grid(height, width)
    q, c = bins.chunk_gaussians.shape
    k = colors.shape[1]
    kernel = functools.partial(_forward_kernel, c, cols, k, _carrier_column(k, carriers))
    tiles = _launch(kernel, jax.ShapeDtypeStruct((rows * cols, k, PIXELS_PER_TILE), jnp.float32),
                    height, width, interpret, bins.tile_chunks, bins.chunk_gaussians.reshape(-1),
                    _table(means, precisions, colors, carriers))
    return tiles_to_image(tiles, height, width)


def _backward(means, precisions, colors, carriers, bins: TileBins, height, width, interpret, grad_image):
    _, cols = tile_grid(height, width)
    n, k = colors.shape
    q, c = bins.chunk_gaussians.shape
    carrier = _carrier_column(k, carriers)
    kernel = functools.partial(_backward_kernel, c, cols, k, carrier)
    table = _table(means, precisions, colors, carriers)
    per_slot = _launch(kernel, jax.ShapeDtypeStruct((q * c, table.shape[1]), jnp.float32), height, width,
                       interpret, bins.tile_chunks, bins.chunk_gaussians.reshape(-1),
                       table, image_to_tiles(grad_image.astype(jnp.float32)))
    # Slots no tile visits (beyond the last chunk) hold index N, whatever the kernel left there.
    per_slot = jnp.where((bins.chunk_gaussians.reshape(-1) < n)[:, None], per_slot, 0.0)
    per_gaussian = scatter_to_gaussians(bins, per_slot.reshape(q, c, -1), n)
    return (per_gaussian[:, _MEAN:_PRECISION], per_gaussian[:, _PRECISION:_COLOR],
            per_gaussian[:, _COLOR:_COLOR + k], per_gaussian[:, carrier:] if carrier else None)


def rasterize(means, precisions, colors, bins: TileBins, height: int, width: int,
              interpret: bool | None = None, carriers=None) -> jax.Array:
    """Same contract as :func:`gipp_jax.raster.xla.rasterize`, on Mosaic GPU kernels.

    ``interpret=None``: compiled where the program is lowered for CUDA, interpreted elsewhere
    (what a forced ``backend="pallas"`` runs); ``False``: compiled (CUDA only); ``True``: under
    Mosaic GPU's interpreter on any platform."""
    return _rasterize(means, precisions, colors, carriers, bins, height, width, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _rasterize(means, precisions, colors, carriers, bins, height, width, interpret):
    return _forward(means, precisions, colors, carriers, bins, height, width, interpret)


def _rasterize_fwd(means, precisions, colors, carriers, bins, height, width, interpret):
    out = _forward(means, precisions, colors, carriers, bins, height, width, interpret)
    return out, (means, precisions, colors, carriers, bins)


def _rasterize_bwd(height, width, interpret, residuals, grad_image):
    means, precisions, colors, carriers, bins = residuals
    grads = _backward(means, precisions, colors, carriers, bins, height, width, interpret, grad_image)
    return (*grads, zero_bin_cotangents(bins))


_rasterize.defvjp(_rasterize_fwd, _rasterize_bwd)
