"""Tile binning: which Gaussians touch which 16x16 tile, in fixed-shape buffers.

The rules are the reference rasterizer's (gsplat as used by GaussianImage++):

* Covariance ``Sigma = [[a, b], [b, c]]`` with ``det = a c - b^2``; Gaussians with
  ``det == 0`` (or non-finite parameters) are culled, and here also those with ``a == 0``.
* The exponent at offset ``d = pixel - mean`` is ``sigma = d^T Sigma^-1 d / 2``.
* Radius ``r = ceil(3 sqrt(lambda_max))`` in pixels with
  ``lambda_max = m + sqrt(max(0.1, m^2 - det))``, ``m = (a + c) / 2``.
* Tile box per axis ``[trunc(t - r/16), trunc(t + r/16 + 1))`` with ``t = center / 16``,
  clamped to the tile grid; a Gaussian with an empty box is culled.

Of a Gaussian's box, only the tiles where it can reach the weight 1/255 at some pixel are
listed (:func:`tile_reachable`): the box of ``3 sqrt(lambda_max)`` is a square around the
longest axis, and a fitted image's Gaussians (wide ones, thin rotated ones) reach a fifth
to a third of their box's tiles. Every other pair adds exactly zero to the image and to
the gradients, since the rasterizers drop weights below 1/255, so the image is the
reference's; only the work shrinks.

The box's pairs are never enumerated: the region where a Gaussian weighs 1/255 or more is
an ellipse, so in each tile row it spans one run of tiles, computed in closed form
(:func:`_row_span`, with a margin). The binning expands Gaussians into the tile rows the
ellipse crosses, rows into the tiles of their runs, and keeps those that
:func:`tile_reachable` accepts: the same pairs as testing every tile of the box, for a
fraction of the work (a fitted full-size image has 5x fewer candidates than box pairs).

The binning is shared by every rasterizer backend. It produces *chunks*: each chunk is a
run of ``chunk_size`` Gaussian slots that all belong to one tile. A tile holding ``n``
Gaussians owns ``ceil(n / chunk_size)`` chunks, so a tile can hold any number of Gaussians
(there is no per-tile cap). The only fixed capacity is the total number of (tile, Gaussian)
pairs, ``pair_capacity``; :attr:`TileBins.num_pairs` reports the true count so that callers
can detect an overflow and re-run with a larger capacity.

The inverse covariance is handed to the rasterizers factored, as ``(p, q, r) = (1/a, b/a,
a/det)`` with ``sigma = (p dx^2 + r (dy - q dx)^2) / 2`` (:func:`gaussian_sigma`), not as
the conic ``(A, B, C) = (c, -b, a) / det``. Both are the same quadratic form, but for a
needle (a fitted image has Gaussians 100 px long and half a pixel wide) ``det`` is a
difference of nearly equal products, and a compiler that fuses the conic into several loops
may round it differently in each (XLA:CPU did: each entry's loop recomputed ``det``). A
conic whose three entries carry different ``det`` is no longer the needle's: 77 px along
one, a pixel where it weighs 0.74 got almost nothing. In the factored form
``det`` enters one non-negative term, so any rounding of it only scales the needle's width.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

TILE_SIZE = 16
PIXELS_PER_TILE = TILE_SIZE * TILE_SIZE
# A Gaussian/pixel pair counts only where exp(-sigma) >= 1/255 (and sigma >= 0).
MIN_WEIGHT = 1.0 / 255.0
# Offset of a tile's center from its first pixel; rasterizers measure from the center.
TILE_HALF = (TILE_SIZE - 1) / 2.0
DEFAULT_CHUNK_SIZE = 16


def tile_grid(height: int, width: int) -> tuple[int, int]:
    """Number of tiles ``(rows, columns)`` covering an image of ``height x width`` pixels."""
    return -(-height // TILE_SIZE), -(-width // TILE_SIZE)


def max_chunks(pair_capacity: int, height: int, width: int, chunk_size: int) -> int:
    """Chunk count that ``pair_capacity`` pairs can never exceed.

    Each non-empty tile wastes less than one chunk, so ``ceil(P / C) + T`` always suffices.
    """
    rows, cols = tile_grid(height, width)
    return -(-pair_capacity // chunk_size) + rows * cols


@flax.struct.dataclass
class Footprint:
    """Per-Gaussian screen footprint. All arrays have leading dimension N.

    means: (N, 2) centers (x, y) in pixels, as given.
    precisions: (N, 3) inverse covariance factored as ``(p, q, r) = (1/a, b/a, a/det)``
      (:func:`gaussian_sigma`); zero for culled Gaussians.
    cov3: (N, 3) covariances ``(a, b, c)`` as given (zero for culled Gaussians).
    tile_min, tile_max: (N, 2) int32 tile box ``[min, max)`` as (x, y).
    num_tiles: (N,) int32 number of tiles in the box (0 for culled Gaussians).
    row_min, num_rows: (N,) int32 the tile rows ``[row_min, row_min + num_rows)`` of the
      box that the 1/255 ellipse may cross (the whole box's rows where it is no ellipse).
    extent: (N, 2) half-widths (x, y) in pixels of the rectangle around each center that
      holds every pixel where the Gaussian weighs 1/255 or more (:func:`reach_extent`).
    """

    means: jax.Array
    precisions: jax.Array
    cov3: jax.Array
    tile_min: jax.Array
    tile_max: jax.Array
    num_tiles: jax.Array
    row_min: jax.Array
    num_rows: jax.Array
    extent: jax.Array


def covariance_to_triple(covariances: jax.Array) -> jax.Array:
    """(N, 2, 2) symmetric matrices -> (N, 3) ``(a, b, c)`` with ``b`` the mean off-diagonal."""
    return jnp.stack(
        [
            covariances[:, 0, 0],
            0.5 * (covariances[:, 0, 1] + covariances[:, 1, 0]),
            covariances[:, 1, 1],
        ],
        axis=-1,
    )


def gaussian_sigma(p, q, r, dx, dy):
    """``sigma = d^T Sigma^-1 d / 2`` at offsets ``d = (dx, dy)`` from the mean, with the
    inverse covariance factored as ``(p, q, r)`` (:class:`Footprint`); broadcasting
    arrays, JAX or NumPy. ``(A, B, C) = (p + r q^2, -r q, r)`` is the same form as a conic."""
    e = dy - q * dx
    return 0.5 * (p * dx * dx + r * e * e)


def carrier_phase(kx, ky, phi, dx, dy):
    """Phase ``theta = 2 pi (kx dx + ky dy) + phi`` of a primitive's cosine carrier at offsets
    ``d = (dx, dy)`` from its mean, for a frequency ``(kx, ky)`` in cycles per pixel and a
    phase ``phi`` in radians; the weight drawn is ``exp(-sigma) cos(theta)``, and
    ``k = 0, phi = 0`` is the plain Gaussian. Broadcasting arrays, JAX or NumPy."""
    return (2.0 * math.pi) * (kx * dx + ky * dy) + phi


def footprint(means: jax.Array, cov3: jax.Array, height: int, width: int) -> Footprint:
    """Inverse covariances and tile boxes of N Gaussians.

    Args:
      means: (N, 2) centers (x, y) in pixels; pixel (row i, column j) sits at x=j, y=i.
      cov3: (N, 3) covariances ``(a, b, c)`` in pixels^2.
      height, width: image size in pixels.
    """
    a, b, c = cov3[:, 0], cov3[:, 1], cov3[:, 2]
    det = a * c - b * b
    ok = ((det != 0) & (a != 0) & jnp.all(jnp.isfinite(cov3), axis=-1)
          & jnp.all(jnp.isfinite(means), axis=-1))
    safe_a = jnp.where(ok, a, 1.0)
    precisions = jnp.stack([1.0 / safe_a, b / safe_a, safe_a / jnp.where(ok, det, 1.0)], axis=-1)

    mid = 0.5 * (a + c)
    lambda_max = mid + jnp.sqrt(jnp.maximum(0.1, mid * mid - det))
    radius = jnp.ceil(3.0 * jnp.sqrt(jnp.maximum(lambda_max, 0.0)))
    ok &= lambda_max > 0  # the reference gets NaN there and draws nothing

    rows, cols = tile_grid(height, width)
    grid = jnp.array([cols, rows], jnp.float32)
    center = means / TILE_SIZE
    extent = (radius / TILE_SIZE)[:, None]

    def to_tile(v):
        # The reference casts with C's (int), i.e. truncation, then clamps to the grid.
        v = jnp.clip(v, -1.0, grid + 1.0)
        return jnp.clip(jnp.trunc(v), 0.0, grid).astype(jnp.int32)

    tile_min = to_tile(center - extent)
    tile_max = to_tile(center + extent + 1.0)
    size = tile_max - tile_min
    num_tiles = jnp.where(ok, size[:, 0] * size[:, 1], 0)
    tile_max = jnp.where(ok[:, None], tile_max, tile_min)

    # Tile rows of the box that pixel rows within the ellipse's height (plus margin) meet.
    cov3 = jnp.where(ok[:, None], cov3, 0.0)
    ellipse = _is_ellipse(cov3)
    extent = reach_extent(cov3)
    half_height = extent[:, 1]
    my = jnp.clip(means[:, 1], -1e9, 1e9)
    first = jnp.ceil((jnp.clip(my - half_height, -32.0, rows * TILE_SIZE + 32.0) - (TILE_SIZE - 1)) / TILE_SIZE)
    last = jnp.floor(jnp.clip(my + half_height, -32.0, rows * TILE_SIZE + 32.0) / TILE_SIZE)
    row_lo = jnp.where(ellipse, jnp.maximum(first.astype(jnp.int32), tile_min[:, 1]), tile_min[:, 1])
    row_hi = jnp.where(ellipse, jnp.minimum(last.astype(jnp.int32) + 1, tile_max[:, 1]), tile_max[:, 1])
    num_rows = jnp.where(num_tiles > 0, jnp.maximum(row_hi - row_lo, 0), 0)
    return Footprint(means=means, precisions=jnp.where(ok[:, None], precisions, 0.0), cov3=cov3,
                     tile_min=tile_min, tile_max=tile_max, num_tiles=num_tiles, row_min=row_lo,
                     num_rows=num_rows, extent=extent)


# Largest sigma whose weight exp(-sigma) the rasterizers keep (>= 1/255), and the margin by
# which a tile's least sigma must exceed it before the tile is skipped: float32 rounding
# of sigma is a few ulps of its largest term, far below 1e-5 of it.
SIGMA_LIMIT = math.log(255.0)
_SIGMA_MARGIN = 0.05
_SIGMA_RELATIVE_MARGIN = 1e-5
# The ellipse d^T Sigma^-1 d <= _REACH holds every pixel that weighs 1/255 or more. Its
# spans are widened by _span_margin pixels: float32 error in a needle's determinant moves
# its ends by far less, and tile_reachable, exact, decides each candidate.
_REACH = 2.0 * (SIGMA_LIMIT + _SIGMA_MARGIN)


def _is_ellipse(cov3: jax.Array) -> jax.Array:
    a, b, c = cov3[:, 0], cov3[:, 1], cov3[:, 2]
    return (a > 0) & (c > 0) & (a * c - b * b > 0)


def _span_margin(cov3: jax.Array) -> jax.Array:
    """Pixels by which each Gaussian's spans are widened: one, plus 1% of its extent."""
    return 1.0 + 0.01 * jnp.sqrt(_REACH * jnp.maximum(jnp.maximum(cov3[:, 0], cov3[:, 2]), 0.0))


def reach_extent(cov3: jax.Array) -> jax.Array:
    """(N, 2) half-widths (x, y), in pixels, of the ellipse ``d^T Sigma^-1 d <= _REACH``
    (every pixel where a Gaussian of covariance ``(a, b, c)`` weighs 1/255 or more lies
    within ``sqrt(_REACH a)`` of its center in x and ``sqrt(_REACH c)`` in y), each widened
    by :func:`_span_margin`."""
    return jnp.sqrt(_REACH * jnp.maximum(cov3[:, 0::2], 0.0)) + _span_margin(cov3)[:, None]


def _row_span(fp: Footprint, gauss: jax.Array, tile_row: jax.Array, cols: int) -> tuple[jax.Array, jax.Array]:
    """The run of tiles in row ``tile_row`` that Gaussian ``gauss`` may reach, within its box.

    The ellipse's cross-section at a height ``dy`` from its center is centered on
    ``(b / c) dy`` with half-width ``sqrt((R - dy^2 / c) det / c)``; its right end is
    concave in ``dy`` and largest at the ellipse's rightmost point ``dy* = b sqrt(R / a)``,
    so over the tile row's band of pixel rows it is largest at ``dy*`` clipped to the band
    (the left end, mirrored). Where the Gaussian is no ellipse, the box's whole row.

    Args: gauss, tile_row: (P,) int32. Returns ``(first_column, count)``, each (P,) int32.
    """
    cov3 = fp.cov3[gauss]
    a, b, c = cov3[:, 0], cov3[:, 1], cov3[:, 2]
    ellipse = _is_ellipse(cov3)
    safe_a, safe_c = jnp.where(ellipse, a, 1.0), jnp.where(ellipse, c, 1.0)
    det = jnp.where(ellipse, a * c - b * b, 0.0)
    mx, my = fp.means[gauss, 0], fp.means[gauss, 1]
    half_height = jnp.sqrt(_REACH * safe_c)
    band_lo = jnp.clip(TILE_SIZE * tile_row.astype(jnp.float32) - my, -half_height, half_height)
    band_hi = jnp.clip(TILE_SIZE * tile_row.astype(jnp.float32) + (TILE_SIZE - 1) - my, -half_height, half_height)
    rightmost = b * jnp.sqrt(_REACH / safe_a)

    def end(dy, sign):
        half_width = jnp.sqrt(jnp.maximum(_REACH - dy * dy / safe_c, 0.0) * det / safe_c)
        return b / safe_c * dy + sign * half_width

    margin = _span_margin(cov3)
    left = mx + end(jnp.clip(-rightmost, band_lo, band_hi), -1.0) - margin
    right = mx + end(jnp.clip(rightmost, band_lo, band_hi), 1.0) + margin
    limit = float(cols * TILE_SIZE + 32)
    first = jnp.ceil((jnp.clip(left, -32.0, limit) - (TILE_SIZE - 1)) / TILE_SIZE).astype(jnp.int32)
    last = jnp.floor(jnp.clip(right, -32.0, limit) / TILE_SIZE).astype(jnp.int32)
    box_lo, box_hi = fp.tile_min[gauss, 0], fp.tile_max[gauss, 0]
    first = jnp.where(ellipse, jnp.maximum(first, box_lo), box_lo)
    stop = jnp.where(ellipse, jnp.minimum(last + 1, box_hi), box_hi)
    return first, jnp.maximum(stop - first, 0)


def tile_reachable(means: jax.Array, precisions: jax.Array, tiles_xy: jax.Array) -> jax.Array:
    """Whether each Gaussian may weigh at least 1/255 at some pixel of its tile.

    Args:
      means: (P, 2) centers (x, y) in pixels; precisions: (P, 3) ``(p, q, r)`` (:class:`Footprint`).
      tiles_xy: (P, 2) int tile coordinates (column, row).
    Returns:
      (P,) bool, False only where ``sigma`` exceeds ``log(255)`` by a margin at every point
      of the tile's square of pixel centers (so at every pixel the rasterizers would weigh).
      The offsets are computed as the rasterizers compute them (``pixel - (mean - tile
      center)``, all in float32), so the square holds each pixel's offset exactly; ``sigma``
      is convex for a positive-definite covariance, and its least value over a square lies at
      the center or on one of the four sides, each a clamped one-dimensional minimum. A
      Gaussian whose covariance is not positive definite is always reachable.
    """
    center = tiles_xy.astype(jnp.float32) * TILE_SIZE + TILE_HALF
    rel = means - center
    lo, hi = -TILE_HALF - rel, TILE_HALF - rel  # (P, 2) offsets of the first and last pixel
    p, q, r = precisions[:, 0], precisions[:, 1], precisions[:, 2]
    definite = (p > 0) & (r > 0)
    # The conic's first entry; sigma's least value on a side y = const is at x = r q y / A,
    # on a side x = const at y = q x.
    conic_a = jnp.where(definite, p + r * q * q, 1.0)

    def sigma(dx, dy):
        return gaussian_sigma(p, q, r, dx, dy)

    x0, x1, y0, y1 = lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]
    least = jnp.minimum(
        jnp.minimum(sigma(x0, jnp.clip(q * x0, y0, y1)), sigma(x1, jnp.clip(q * x1, y0, y1))),
        jnp.minimum(sigma(jnp.clip(r * q * y0 / conic_a, x0, x1), y0),
                    sigma(jnp.clip(r * q * y1 / conic_a, x0, x1), y1)))
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    far_x, far_y = jnp.maximum(-x0, x1), jnp.maximum(-y0, y1)
    largest_term = 0.5 * (jnp.abs(p) * far_x * far_x + jnp.abs(r) * (far_y + jnp.abs(q) * far_x) ** 2)
    limit = SIGMA_LIMIT + _SIGMA_MARGIN + _SIGMA_RELATIVE_MARGIN * largest_term
    return ~definite | inside | (least <= limit)


@flax.struct.dataclass
class TileBins:
    """Gaussians grouped by tile in fixed-size chunks.

    chunk_gaussians: (Q, C) int32 Gaussian index per slot; ``N`` marks an empty slot.
    chunk_tiles: (Q,) int32 tile index (row-major over the tile grid) of each chunk.
    num_pairs: () int32 true number of (tile, Gaussian) pairs.
    num_chunks: () int32 true number of chunks. The binning is complete iff
      ``num_pairs <= pair_capacity`` and ``num_chunks <= chunk_capacity``.
    tile_chunks: (T, 2) int32 per tile: its first chunk and its number of chunks (the
      chunks of a tile are consecutive), clipped to the buffer.
    """

    chunk_gaussians: jax.Array
    chunk_tiles: jax.Array
    num_pairs: jax.Array
    num_chunks: jax.Array
    tile_chunks: jax.Array

    def usage(self) -> jax.Array:
        """(2,) int32 ``[num_pairs, num_chunks]``: what a render of these bins needed."""
        return jnp.stack([self.num_pairs, self.num_chunks])


def _owner(starts: jax.Array, length: int) -> jax.Array:
    """For each position p < length, the last index k with ``starts[k] <= p``.

    ``starts`` is non-decreasing; this is ``searchsorted(starts, p, 'right') - 1`` in O(length).
    """
    marks = jnp.zeros(length + 1, jnp.int32).at[starts].add(1, mode="drop")
    return jnp.cumsum(marks[:length]) - 1


def _count_span_pairs(fp: Footprint, cols: int) -> jax.Array:
    """The () number of buffer entries :func:`bin_gaussians` needs, in a loop over the rows
    of the tallest Gaussian (no buffer of its own)."""
    gauss = jnp.arange(fp.num_rows.shape[0], dtype=jnp.int32)

    def body(state):
        k, total = state
        _, count = _row_span(fp, gauss, fp.row_min + k, cols)
        return k + 1, total + jnp.sum(jnp.where(k < fp.num_rows, count, 0))

    _, total = jax.lax.while_loop(lambda s: s[0] < jnp.max(fp.num_rows, initial=0), body,
                                  (jnp.int32(0), jnp.int32(0)))
    return jnp.maximum(jnp.sum(fp.num_rows), total)


def count_pairs(fp: Footprint, height: int, width: int) -> jax.Array:
    """The () int32 ``num_pairs`` :func:`bin_gaussians` reports for ``fp``: the pair
    capacity it needs (traceable, and needs no capacity itself)."""
    return _count_span_pairs(fp, tile_grid(height, width)[1])


# Candidates are generated, tested and placed in blocks of this many, one block per loop
# iteration, and only the blocks in use run: a fit's pair buffer holds about twice the pairs
# its renders use, and binning every entry of it (row spans, the reach test, a sort over the
# whole buffer) cost as much again as binning the use.
BIN_BLOCK = 8192


def _block_loop(body, init, count: jax.Array, capacity: int, block: int):
    """``acc = body(start, acc)`` for the blocks ``[start, start + block)`` of a buffer of
    ``capacity`` entries that start below ``count`` (a traced scalar; under vmap, the
    largest of the batch)."""
    num_blocks = -(-capacity // block)
    in_use = jnp.clip((jnp.minimum(count, capacity) + block - 1) // block, 0, num_blocks).astype(jnp.int32)
    return jax.lax.fori_loop(jnp.int32(0), in_use, lambda i, acc: body(i * block, acc), init)


def _rank_in_runs(keys: jax.Array) -> jax.Array:
    """For sorted ``keys`` (B,), each entry's index within its run of equal keys."""
    index = jnp.arange(keys.shape[0], dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones(1, bool), keys[1:] != keys[:-1]])
    return index - jax.lax.cummax(jnp.where(starts, index, 0))


def bin_gaussians(
    fp: Footprint,
    height: int,
    width: int,
    pair_capacity: int,
    chunk_capacity: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> TileBins:
    """Lists, per tile, every Gaussian whose tile box covers it and which may reach one of
    its pixels (see module docstring). ``num_pairs`` counts the candidates of the row
    spans (what ``pair_capacity`` must hold; :func:`count_pairs`), ``num_chunks`` the
    chunks of the reachable ones.

    ``chunk_capacity`` (default: :func:`max_chunks`, which cannot overflow) is the length
    of the chunk buffer, and so the amount of rasterization work; a tight value is faster.

    The work follows the pairs in use, not the buffers: Gaussians are laid out in tile
    rows, rows in candidate tiles, and candidates are tested and placed in blocks of
    :data:`BIN_BLOCK`, skipping the blocks past the use. Candidates come in Gaussian
    order, each block is sorted by tile (a small sort) and the blocks are placed one after
    the other, so a tile's Gaussians are in index order whatever the buffer sizes: the
    sums, and a fit, do not depend on the capacities (a resumed fit sizes them anew).
    """
    rows, cols = tile_grid(height, width)
    num_tiles = rows * cols
    n = fp.num_tiles.shape[0]
    q = chunk_capacity or max_chunks(pair_capacity, height, width, chunk_size)
    if n == 0:  # nothing to list (index 0 marks an empty slot)
        return TileBins(chunk_gaussians=jnp.zeros((q, chunk_size), jnp.int32),
                        chunk_tiles=jnp.zeros(q, jnp.int32), num_pairs=jnp.int32(0),
                        num_chunks=jnp.int32(0), tile_chunks=jnp.zeros((num_tiles, 2), jnp.int32))
    block = max(1, min(BIN_BLOCK, pair_capacity))
    length = -(-pair_capacity // block) * block  # the buffers, padded to whole blocks
    local = jnp.arange(block, dtype=jnp.int32)

    # Tile rows: each Gaussian's rows of its box that its ellipse crosses, end to end, and
    # the run of tiles its ellipse may reach in each.
    row_offsets = jnp.cumsum(fp.num_rows) - fp.num_rows
    num_rows = jnp.sum(fp.num_rows)
    row_gaussian = jnp.clip(_owner(row_offsets, length), 0, n - 1)

    def rows_of_block(start, acc):
        pos = start + local
        gauss = jax.lax.dynamic_slice(row_gaussian, (start,), (block,))
        tile_row = fp.row_min[gauss] + pos - row_offsets[gauss]
        first, count = _row_span(fp, gauss, tile_row, cols)
        count = jnp.where((pos < num_rows) & (pos < pair_capacity), count, 0)
        return tuple(jax.lax.dynamic_update_slice(buf, v, (start,))
                     for buf, v in zip(acc, (gauss, tile_row, first, count)))

    zeros = jnp.zeros(length, jnp.int32)
    row_gauss, row_tile, row_first, row_count = _block_loop(
        rows_of_block, (zeros, zeros, zeros, zeros), num_rows, pair_capacity, block)
    pair_offsets = jnp.cumsum(row_count) - row_count
    total = jnp.sum(row_count)
    pair_row = jnp.clip(_owner(pair_offsets, length), 0, length - 1)

    # Candidates: each row's run of tiles, kept where the Gaussian may reach the tile;
    # key = tile * (n + 1) + gauss, the tile num_tiles for what is not kept.
    wide = (num_tiles + 1) * (n + 1) >= 2 ** 31  # no single int32 key: sort (tile, gauss)

    def candidates_of_block(start, acc):
        tiles_buf, gauss_buf, tile_counts = acc
        pos = start + local
        row = jax.lax.dynamic_slice(pair_row, (start,), (block,))
        gauss, tx, ty = row_gauss[row], row_first[row] + pos - pair_offsets[row], row_tile[row]
        valid = (pos < total) & (pos < pair_capacity)
        valid &= tile_reachable(fp.means[gauss], fp.precisions[gauss], jnp.stack([tx, ty], axis=-1))
        tile = jnp.where(valid, ty * cols + tx, num_tiles)
        tile_counts = tile_counts.at[tile].add(1, mode="drop")
        if wide:
            tiles_buf = jax.lax.dynamic_update_slice(tiles_buf, tile, (start,))
            gauss_buf = jax.lax.dynamic_update_slice(gauss_buf, gauss, (start,))
        else:
            tiles_buf = jax.lax.dynamic_update_slice(tiles_buf, tile * (n + 1) + gauss, (start,))
        return tiles_buf, gauss_buf, tile_counts

    tiles_buf, gauss_buf, tile_counts = _block_loop(
        candidates_of_block, (jnp.full(length, num_tiles if wide else num_tiles * (n + 1), jnp.int32),
                              zeros if wide else jnp.zeros(0, jnp.int32),
                              jnp.zeros(num_tiles, jnp.int32)),
        total, pair_capacity, block)

    tile_chunks = (tile_counts + chunk_size - 1) // chunk_size
    chunk_start = jnp.cumsum(tile_chunks) - tile_chunks

    # Placement: each block sorted by tile (Gaussians in order within a tile), then laid in
    # its tiles' chunks after what the blocks before it placed there.
    def place_block(start, acc):
        slots, filled = acc
        if wide:
            tile, gauss = jax.lax.sort((jax.lax.dynamic_slice(tiles_buf, (start,), (block,)),
                                        jax.lax.dynamic_slice(gauss_buf, (start,), (block,))),
                                       num_keys=1, is_stable=True)
        else:
            key = jax.lax.sort(jax.lax.dynamic_slice(tiles_buf, (start,), (block,)))
            tile, gauss = key // (n + 1), key % (n + 1)
        safe_tile = jnp.minimum(tile, num_tiles - 1)
        dest = chunk_start[safe_tile] * chunk_size + filled[safe_tile] + _rank_in_runs(tile)
        dest = jnp.where(tile < num_tiles, dest, q * chunk_size)
        return (slots.at[dest].set(gauss, mode="drop"),
                filled.at[tile].add(1, mode="drop"))

    slots, _ = _block_loop(place_block, (jnp.full(q * chunk_size, n, jnp.int32),
                                         jnp.zeros(num_tiles, jnp.int32)),
                           total, pair_capacity, block)

    # Rows beyond the buffer were not counted: the caller needs the true size to grow.
    num_pairs = jax.lax.cond(num_rows > pair_capacity, lambda: _count_span_pairs(fp, cols),
                             lambda: jnp.maximum(num_rows, total))
    # Empty tiles share their start with the next tile, so the owner is the non-empty one.
    chunk_tiles = jnp.clip(_owner(chunk_start, q), 0, num_tiles - 1)
    return TileBins(
        chunk_gaussians=slots.reshape(q, chunk_size),
        chunk_tiles=chunk_tiles,
        num_pairs=num_pairs,
        num_chunks=jnp.sum(tile_chunks),
        tile_chunks=jnp.stack([jnp.minimum(chunk_start, q),
                               jnp.clip(q - chunk_start, 0, tile_chunks)], axis=-1),
    )


def round_capacity(num_pairs: int, headroom: float = 1.5, minimum: int = 1024) -> int:
    """A pair capacity for ``num_pairs`` with headroom, rounded up to 2^k or 1.5 * 2^k.

    The coarse rounding keeps the number of distinct compiled shapes small.
    """
    want = max(minimum, int(math.ceil(num_pairs * headroom)))
    power = 1 << (want - 1).bit_length()
    return power * 3 // 4 if power * 3 // 4 >= want else power
