"""Tile rasterizer in plain XLA: runs on every backend (CPU, GPU, TPU).

Works chunk by chunk (see :mod:`gipp_jax.raster.binning`): each chunk evaluates its
``C`` Gaussians on the 256 pixels of its tile, and chunks are summed into their tiles.
The backward pass is written by hand (``jax.custom_vjp``): it recomputes the Gaussian
weights instead of storing them, and reduces every per-pixel sum to small matrix products
with the pixel-moment trick documented in :func:`_backward`.

Primitives may carry a cosine carrier (``carriers``, (N, 3) ``(kx, ky, phi)``): the weight
is then the envelope's, kept by the same rules, times ``cos(2 pi k.d + phi)``
(:func:`~gipp_jax.raster.binning.carrier_phase`). Without carriers (``None``) no carrier
is traced: plain Gaussians compile to the same program as before carriers existed.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from gipp_jax.raster.binning import (MIN_WEIGHT, PIXELS_PER_TILE, TILE_HALF, TILE_SIZE, TileBins,
                                     carrier_phase, gaussian_sigma, tile_grid)

def _tile_origins(chunk_tiles: jax.Array, cols: int) -> jax.Array:
    """(Q,) tile indices -> (Q, 2) pixel coordinates (x, y) of each tile's center."""
    tx = (chunk_tiles % cols) * TILE_SIZE
    ty = (chunk_tiles // cols) * TILE_SIZE
    return jnp.stack([tx, ty], axis=-1).astype(jnp.float32) + TILE_HALF


def _local_pixels() -> tuple[jax.Array, jax.Array]:
    """(256,) x and y offsets of a tile's pixels (row-major) from the tile center: centered
    so that the moment sums in the backward pass stay well conditioned in float32."""
    local = jnp.arange(PIXELS_PER_TILE, dtype=jnp.int32)
    lx = (local % TILE_SIZE).astype(jnp.float32) - TILE_HALF
    ly = (local // TILE_SIZE).astype(jnp.float32) - TILE_HALF
    return lx, ly


def _weights(means_rel: jax.Array, precisions: jax.Array) -> jax.Array:
    """Gaussian weights of each chunk slot at each pixel of its tile.

    Args:
      means_rel: (Q, C, 2) Gaussian centers relative to the tile center.
      precisions: (Q, C, 3) factored inverse covariances ``(p, q, r)``.
    Returns:
      (Q, C, 256) weights ``exp(-sigma)``, zero where the reference skips the pair.
      Pixels are the minor axis: every per-pixel sum is then a contiguous reduction.
    """
    lx, ly = _local_pixels()
    dx = lx - means_rel[..., 0:1]
    dy = ly - means_rel[..., 1:2]
    sigma = gaussian_sigma(precisions[..., 0:1], precisions[..., 1:2], precisions[..., 2:3], dx, dy)
    return _threshold(jnp.exp(-sigma))


def _waves(means_rel: jax.Array, carriers: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(cos(theta), sin(theta))``, (Q, C, 256) each: the carrier of each chunk slot at each
    pixel of its tile, for (Q, C, 2) centers relative to the tile center and (Q, C, 3)
    carriers ``(kx, ky, phi)`` (:func:`~gipp_jax.raster.binning.carrier_phase`)."""
    lx, ly = _local_pixels()
    theta = carrier_phase(carriers[..., 0:1], carriers[..., 1:2], carriers[..., 2:3],
                          lx - means_rel[..., 0:1], ly - means_rel[..., 1:2])
    return cos_sin(theta)


# 2 pi split in two float32 constants (Cody and Waite): theta - n (HI + LO) loses no bits to
# the product for the multiples n of a render (|theta| of at most a few thousand).
_TWO_PI_HI = 6.28125
_TWO_PI_LO = 2.0 * math.pi - 6.28125
_COS_TERMS = tuple((-1) ** n / math.factorial(2 * n) for n in range(9))
_SIN_TERMS = tuple((-1) ** n / math.factorial(2 * n + 1) for n in range(9))


def cos_sin(theta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(cos(theta), sin(theta))`` within 1e-6 for float32 ``theta``: reduced to
    ``[-pi, pi]``, then the Taylor series to degree 16 and 17 (the first term left out is
    below 1e-7 there). XLA:CPU's ``cos`` and ``sin`` took 2.5x the time of the whole render
    and its gradient at every pixel of a full-size fit (a fitted kodim08: 110 ms against
    39 ms with these polynomials, the plain Gaussians' 41 ms), its libm calls not vectorized;
    these are multiply-adds that vectorize on every backend."""
    turns = jnp.round(theta * (1.0 / (2.0 * math.pi)))
    r = (theta - turns * _TWO_PI_HI) - turns * _TWO_PI_LO
    r2 = r * r

    def horner(terms):
        acc = jnp.full_like(r2, terms[-1])
        for c in terms[-2::-1]:
            acc = acc * r2 + c
        return acc

    return horner(_COS_TERMS), r * horner(_SIN_TERMS)


def _threshold(weight: jax.Array) -> jax.Array:
    """``weight`` where ``1/255 <= weight <= 1`` (i.e. ``sigma >= 0``), else 0.

    Written with min/max instead of comparisons: XLA:CPU vectorizes those fusions and runs
    them several times faster. Both indicators are exact: for ``w >= t`` the difference
    ``w - t`` is >= 0 in floating point, and any ``w < t`` falls short by far more than 1e-30.
    """
    big = jnp.float32(1e30)
    above = jnp.clip((weight - MIN_WEIGHT) * big + 1.0, 0.0, 1.0)
    below = jnp.clip((1.0 - weight) * big + 1.0, 0.0, 1.0)
    return jnp.minimum(weight, 1.0) * above * below


def _gather(bins: TileBins, means, precisions, colors, carriers, cols):
    """Per-slot parameters, (Q, C, ...): centers relative to the tile, precisions, colors
    and, unless ``carriers`` is None, carriers. Empty slots (index N) read a zero row: zero
    precision and zero color, so they add nothing and their gradients are dropped by the scatter."""
    def padded(x):
        return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])[bins.chunk_gaussians]

    centers = _tile_origins(bins.chunk_tiles, cols)
    gathered = (padded(means) - centers[:, None, :], padded(precisions), padded(colors))
    if carriers is not None:
        gathered += (padded(carriers),)
    # The barrier keeps XLA from fusing the gathers into the per-pixel loops, where they
    # would be recomputed 256 times per slot.
    return jax.lax.optimization_barrier(gathered)


def tiles_to_image(tiles: jax.Array, height: int, width: int) -> jax.Array:
    """(T, K, 256) per-tile pixels -> (height, width, K) image."""
    rows, cols = tile_grid(height, width)
    k = tiles.shape[1]
    img = tiles.reshape(rows, cols, k, TILE_SIZE, TILE_SIZE).transpose(0, 3, 1, 4, 2)
    return img.reshape(rows * TILE_SIZE, cols * TILE_SIZE, k)[:height, :width]


def image_to_tiles(image: jax.Array) -> jax.Array:
    """(height, width, K) image -> (T, K, 256), zero-padded to whole tiles."""
    height, width, k = image.shape
    rows, cols = tile_grid(height, width)
    padded = jnp.pad(image, ((0, rows * TILE_SIZE - height), (0, cols * TILE_SIZE - width), (0, 0)))
    tiles = padded.reshape(rows, TILE_SIZE, cols, TILE_SIZE, k).transpose(0, 2, 4, 1, 3)
    return tiles.reshape(rows * cols, k, PIXELS_PER_TILE)


# Chunks are processed in blocks of this many, one block per loop iteration: a block's
# (chunks x slots x pixels) intermediates then stay in cache, where materialising them for
# all chunks at once made every pass bound by memory traffic (measured 2x slower).
CHUNK_BLOCK = 64
# Fewer chunks than this run in one pass: the loop's overhead outweighs the cache's gain
# (a 192x128 image's 282 chunks rendered 1.3x slower in blocks).
MIN_BLOCKED_CHUNKS = 512


def _accumulate(fn, init, xs: tuple, fills: tuple, count: jax.Array, block: int | None = None):
    """``acc = fn(acc, *block_of_xs)`` over the leading (chunk) axis of the arrays ``xs``.

    Blocks of ``block`` (default :data:`CHUNK_BLOCK`) chunks run one per loop iteration;
    ``fn`` adds a block's contribution into the accumulator (a scatter-add, in place), so
    nothing of size (chunks x ...) is materialised. Blocks that start at or past ``count``
    (the chunks in use, a traced scalar) are not run: a fit's buffers hold about twice the
    chunks its renders use, and the work follows the use, not the buffer. The last block
    is padded with ``fills[i]`` for ``xs[i]`` (values that add nothing). Under
    :data:`MIN_BLOCKED_CHUNKS` chunks, one call of ``fn`` over all of them.
    """
    q = xs[0].shape[0]
    if q < MIN_BLOCKED_CHUNKS:
        return fn(init, *xs)
    block = max(1, min(block or CHUNK_BLOCK, q))
    pad = (-q) % block
    num_blocks = (q + pad) // block

    def split(x, fill):
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
        return x.reshape((num_blocks, block) + x.shape[1:])

    blocks = tuple(split(x, fill) for x, fill in zip(xs, fills))

    def body(i, acc):
        return fn(acc, *(jax.lax.dynamic_index_in_dim(x, i, keepdims=False) for x in blocks))

    # A loop of as many blocks as are in use (under vmap: as the busiest image uses).
    in_use = jnp.clip((count + block - 1) // block, 0, num_blocks).astype(jnp.int32)
    return jax.lax.fori_loop(jnp.int32(0), in_use, body, init)


def _forward(means, precisions, colors, carriers, bins: TileBins, height: int, width: int):
    rows, cols = tile_grid(height, width)

    def add_chunks(tiles, chunk_tiles, means_rel, prec_q, colors_q, *carriers_q):
        # The block's weights computed once (the barrier), then the slots summed one by one,
        # written out: XLA:CPU runs that as one vectorized loop over the pixels, a third
        # faster than a reduction over the slot axis and twice as fast as an einsum.
        weights = _weights(means_rel, prec_q)
        if carriers_q:
            weights = weights * _waves(means_rel, carriers_q[0])[0]
        weights = jax.lax.optimization_barrier(weights)
        pixels = sum(weights[:, c, None, :] * colors_q[:, c, :, None] for c in range(weights.shape[1]))
        return tiles.at[chunk_tiles].add(pixels, mode="drop", indices_are_sorted=True)

    # Padded chunks have zero colors: they add nothing to tile 0.
    init = jnp.zeros((rows * cols, colors.shape[1], PIXELS_PER_TILE), jnp.float32)
    gathered = _gather(bins, means, precisions, colors, carriers, cols)
    tiles = _accumulate(add_chunks, init, (bins.chunk_tiles,) + gathered, (0,) * (1 + len(gathered)),
                        bins.num_chunks)
    return tiles_to_image(tiles, height, width)


def _backward(means, precisions, colors, carriers, bins: TileBins, height: int, width: int, grad_image):
    """Gradients of ``sum(grad_image * render)`` w.r.t. means, precisions, colors and (unless
    None) carriers.

    Per slot, with ``w = exp(-sigma)`` and ``g`` the pixel's incoming gradient:
    ``dL/dcolor = sum_p w g``; ``dL/dsigma_p = -w (g . color)``. Since
    ``sigma = 0.5 A dx^2 + B dx dy + 0.5 C dy^2`` with ``d = pixel - mean`` and the conic
    ``(A, B, C)`` formed from the factors ``(p, q, r)``, every remaining sum over pixels is
    a combination of the moments ``sum_p s_p {1, x, y, x^2, xy, y^2}`` of ``s = dL/dsigma``
    (``x, y`` from the tile's center); those six moments for all slots are one
    (Q*C, 256) x (256, 6) matrix product. The conic's gradients go to the factors by the
    chain rule. The price is float32 conditioning: for a small Gaussian far from its tile's
    center the expansion loses about ``(|x| + |mean|)^2 / dx^2`` in precision, which puts the
    gradients within ~1e-4 (up to ~3e-4 relative to their largest value) of a direct sum,
    against ~1e-5 for the Mosaic GPU kernel's direct sums; computing the sums directly on
    XLA:CPU costs twice the time of the whole backward pass.

    With carriers, ``w = e cos(theta)`` (``e`` the envelope): ``dL/dsigma_p = -w (g . color)``
    as before, and ``t_p = dL/dtheta_p = -e sin(theta) (g . color)``; since
    ``theta = 2 pi k.d + phi``, the carrier's gradients and its share of the mean's are
    ``sum_p t_p {1, x, y}``, three more moments of the same product.
    """
    rows, cols = tile_grid(height, width)
    n, k = means.shape[0], colors.shape[1]
    width_out = 5 + k + (0 if carriers is None else 3)
    g_tiles = image_to_tiles(grad_image)  # (T, K, 256); each block gathers its chunks' tiles

    def add_chunks(grads, gaussians, chunk_tiles, means_rel, prec_q, colors_q, *carriers_q):
        per_slot = jnp.concatenate(_chunk_backward(means_rel, prec_q, colors_q, g_tiles[chunk_tiles],
                                                   *carriers_q), -1)
        # Empty slots (index N) fall outside and are dropped, whatever they hold.
        return grads.at[gaussians.reshape(-1)].add(per_slot.reshape(-1, width_out), mode="drop")

    init = jnp.zeros((n, width_out), jnp.float32)
    gathered = _gather(bins, means, precisions, colors, carriers, cols)
    grads = _accumulate(add_chunks, init, (bins.chunk_gaussians, bins.chunk_tiles) + gathered,
                        (n,) + (0,) * (1 + len(gathered)), bins.num_chunks)
    d_carriers = None if carriers is None else grads[:, 5 + k:]
    return grads[:, :2], grads[:, 2:5], grads[:, 5:5 + k], d_carriers


def _chunk_backward(means_rel, prec_q, colors_q, g_tiles, carriers_q=None):
    """Per-slot gradients of a block of chunks (see :func:`_backward`).

    Args: (B, C, ...) slot parameters and (B, K, 256) the incoming gradient of each chunk's
    tile. Returns (B, C, 2), (B, C, 3), (B, C, K) gradients w.r.t. means, precisions,
    colors, and (B, C, 3) w.r.t. the carriers if ``carriers_q`` is given.
    """
    blocks, slots = means_rel.shape[:2]
    envelope = weights = _weights(means_rel, prec_q)  # (B, C, 256)
    if carriers_q is not None:
        cos_theta, sin_theta = _waves(means_rel, carriers_q)
        weights = envelope * cos_theta
    d_colors_q = jnp.einsum("qcp,qkp->qck", weights, g_tiles)
    # g . color, written out: a K=3 contraction is far faster as a fused loop than a dot.
    g_dot_c = sum(g_tiles[:, None, k, :] * colors_q[..., k:k + 1] for k in range(colors_q.shape[-1]))
    d_sigma = -weights * g_dot_c  # (B, C, 256)

    lx, ly = _local_pixels()
    monomials = jnp.stack([jnp.ones_like(lx), lx, ly, lx * lx, lx * ly, ly * ly], axis=-1)
    m = (d_sigma.reshape(blocks * slots, PIXELS_PER_TILE) @ monomials).reshape(blocks, slots, 6)
    s0, sx, sy, sxx, sxy, syy = (m[..., i] for i in range(6))
    mx, my = means_rel[..., 0], means_rel[..., 1]
    # sum s dx^2, sum s dx dy, sum s dy^2 with dx = x - mx, dy = y - my.
    sdxdx = sxx - 2 * mx * sx + mx * mx * s0
    sdydy = syy - 2 * my * sy + my * my * s0
    sdxdy = sxy - mx * sy - my * sx + mx * my * s0
    sdx = sx - mx * s0
    sdy = sy - my * s0
    # Gradients w.r.t. the conic (A, B, C) = (p + r q^2, -r q, r), then by the chain rule
    # w.r.t. (p, q, r); the conic's entries are formed here from one (p, q, r), so they agree.
    p, q, r = prec_q[..., 0], prec_q[..., 1], prec_q[..., 2]
    ca, cb, cc = p + r * q * q, -r * q, r
    d_a, d_b, d_c = 0.5 * sdxdx, sdxdy, 0.5 * sdydy
    d_prec_q = jnp.stack([d_a, r * (2 * q * d_a - d_b), q * q * d_a - q * d_b + d_c], axis=-1)
    # dsigma/dmean = -(A dx + B dy, B dx + C dy)
    d_means_q = -jnp.stack([ca * sdx + cb * sdy, cb * sdx + cc * sdy], axis=-1)
    if carriers_q is None:
        return d_means_q, d_prec_q, d_colors_q
    d_theta = -envelope * sin_theta * g_dot_c
    t = (d_theta.reshape(blocks * slots, PIXELS_PER_TILE) @ monomials[:, :3]).reshape(blocks, slots, 3)
    t0, tdx, tdy = t[..., 0], t[..., 1] - mx * t[..., 0], t[..., 2] - my * t[..., 0]
    two_pi = 2.0 * jnp.pi
    # dtheta/dmean = -2 pi k, dtheta/dk = 2 pi d, dtheta/dphi = 1.
    d_means_q = d_means_q - two_pi * carriers_q[..., :2] * t0[..., None]
    d_carriers_q = jnp.stack([two_pi * tdx, two_pi * tdy, t0], axis=-1)
    return d_means_q, d_prec_q, d_colors_q, d_carriers_q


def scatter_to_gaussians(bins: TileBins, per_slot: jax.Array, n: int) -> jax.Array:
    """Sums (Q, C, ...) per-slot values into (N, ...) per-Gaussian values; empty slots
    (index N) fall outside and are dropped, whatever they hold."""
    flat = bins.chunk_gaussians.reshape(-1)
    values = per_slot.reshape((flat.shape[0],) + per_slot.shape[2:])
    return jax.ops.segment_sum(values, flat, n)


def rasterize(means, precisions, colors, bins: TileBins, height: int, width: int,
              carriers=None) -> jax.Array:
    """Sum of N Gaussians over an image, tile by tile.

    Args:
      means: (N, 2) centers (x, y) in pixels.
      precisions: (N, 3) factored inverse covariances ``(p, q, r)``
        (:class:`~gipp_jax.raster.binning.Footprint`).
      colors: (N, K) colors.
      bins: the tile binning of these Gaussians.
      height, width: static image size.
      carriers: None, or (N, 3) cosine carriers ``(kx, ky, phi)`` in cycles per pixel and
        radians.
    Returns:
      (height, width, K) float32 image, not clamped.
    """
    return _rasterize(means, precisions, colors, carriers, bins, height, width)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _rasterize(means, precisions, colors, carriers, bins, height, width):
    return _forward(means, precisions, colors, carriers, bins, height, width)


def _rasterize_fwd(means, precisions, colors, carriers, bins, height, width):
    out = _forward(means, precisions, colors, carriers, bins, height, width)
    return out, (means, precisions, colors, carriers, bins)


def _rasterize_bwd(height, width, residuals, grad_image):
    means, precisions, colors, carriers, bins = residuals
    grads = _backward(means, precisions, colors, carriers, bins, height, width, grad_image)
    return (*grads, zero_bin_cotangents(bins))


def zero_bin_cotangents(bins: TileBins):
    """The (empty, float0) cotangent of integer tile bins in a custom VJP."""
    return jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, jax.dtypes.float0), bins)


_rasterize.defvjp(_rasterize_fwd, _rasterize_bwd)
