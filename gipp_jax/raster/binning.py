"""Tile binning: which Gaussians touch which 16x16 tile, in fixed-shape buffers.

The rules are the reference rasterizer's (gsplat as used by GaussianImage++):

* Covariance ``Sigma = [[a, b], [b, c]]`` with ``det = a c - b^2``; Gaussians with
  ``det == 0`` (or non-finite parameters) are culled.
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

The binning is shared by every rasterizer backend. It produces *chunks*: each chunk is a
run of ``chunk_size`` Gaussian slots that all belong to one tile. A tile holding ``n``
Gaussians owns ``ceil(n / chunk_size)`` chunks, so a tile can hold any number of Gaussians
(there is no per-tile cap). The only fixed capacity is the total number of (tile, Gaussian)
pairs, ``pair_capacity``; :attr:`TileBins.num_pairs` reports the true count so that callers
can detect an overflow and re-run with a larger capacity.
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
    conics: (N, 3) inverse covariance ``(A, B, C)``, with
      ``sigma = 0.5 (A dx^2 + C dy^2) + B dx dy``.
    tile_min, tile_max: (N, 2) int32 tile box ``[min, max)`` as (x, y).
    num_tiles: (N,) int32 number of tiles in the box (0 for culled Gaussians).
    """

    means: jax.Array
    conics: jax.Array
    tile_min: jax.Array
    tile_max: jax.Array
    num_tiles: jax.Array


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


def footprint(means: jax.Array, cov3: jax.Array, height: int, width: int) -> Footprint:
    """Conics and tile boxes of N Gaussians.

    Args:
      means: (N, 2) centers (x, y) in pixels; pixel (row i, column j) sits at x=j, y=i.
      cov3: (N, 3) covariances ``(a, b, c)`` in pixels^2.
      height, width: image size in pixels.
    """
    a, b, c = cov3[:, 0], cov3[:, 1], cov3[:, 2]
    det = a * c - b * b
    ok = (det != 0) & jnp.all(jnp.isfinite(cov3), axis=-1) & jnp.all(jnp.isfinite(means), axis=-1)
    inv_det = 1.0 / jnp.where(ok, det, 1.0)
    conics = jnp.stack([c * inv_det, -b * inv_det, a * inv_det], axis=-1)

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
    return Footprint(means=means, conics=jnp.where(ok[:, None], conics, 0.0), tile_min=tile_min,
                     tile_max=tile_max, num_tiles=num_tiles)


# Largest sigma whose weight exp(-sigma) the rasterizers keep (>= 1/255), and the margin by
# which a tile's least sigma must exceed it before the tile is skipped: float32 rounding
# of sigma is a few ulps of its largest term, far below 1e-5 of it.
SIGMA_LIMIT = math.log(255.0)
_SIGMA_MARGIN = 0.05
_SIGMA_RELATIVE_MARGIN = 1e-5


def tile_reachable(means: jax.Array, conics: jax.Array, tiles_xy: jax.Array) -> jax.Array:
    """Whether each Gaussian may weigh at least 1/255 at some pixel of its tile.

    Args:
      means: (P, 2) centers (x, y) in pixels; conics: (P, 3) ``(A, B, C)``.
      tiles_xy: (P, 2) int tile coordinates (column, row).
    Returns:
      (P,) bool, False only where ``sigma`` exceeds ``log(255)`` by a margin at every point
      of the tile's square of pixel centers (so at every pixel the rasterizers would weigh).
      The offsets are computed as the rasterizers compute them (``pixel - (mean - tile
      center)``, all in float32), so the square holds each pixel's offset exactly; ``sigma``
      is convex for a positive-definite conic, and its least value over a square lies at the
      center or on one of the four sides, each a clamped one-dimensional minimum. A conic
      that is not positive definite is always reachable.
    """
    center = tiles_xy.astype(jnp.float32) * TILE_SIZE + TILE_HALF
    rel = means - center
    lo, hi = -TILE_HALF - rel, TILE_HALF - rel  # (P, 2) offsets of the first and last pixel
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    definite = (a > 0) & (c > 0) & (a * c - b * b > 0)
    safe_a, safe_c = jnp.where(definite, a, 1.0), jnp.where(definite, c, 1.0)

    def sigma(dx, dy):
        return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy

    x0, x1, y0, y1 = lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]
    least = jnp.minimum(
        jnp.minimum(sigma(x0, jnp.clip(-b * x0 / safe_c, y0, y1)), sigma(x1, jnp.clip(-b * x1 / safe_c, y0, y1))),
        jnp.minimum(sigma(jnp.clip(-b * y0 / safe_a, x0, x1), y0), sigma(jnp.clip(-b * y1 / safe_a, x0, x1), y1)))
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    far_x, far_y = jnp.maximum(-x0, x1), jnp.maximum(-y0, y1)
    largest_term = 0.5 * (jnp.abs(a) * far_x * far_x + jnp.abs(c) * far_y * far_y) + jnp.abs(b) * far_x * far_y
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


def _owner(starts: jax.Array, length: int) -> jax.Array:
    """For each position p < length, the last index k with ``starts[k] <= p``.

    ``starts`` is non-decreasing; this is ``searchsorted(starts, p, 'right') - 1`` in O(length).
    """
    marks = jnp.zeros(length + 1, jnp.int32).at[starts].add(1, mode="drop")
    return jnp.cumsum(marks[:length]) - 1


def bin_gaussians(
    fp: Footprint,
    height: int,
    width: int,
    pair_capacity: int,
    chunk_capacity: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> TileBins:
    """Lists, per tile, every Gaussian whose tile box covers it and which may reach one of
    its pixels (see module docstring). ``num_pairs`` counts the box's pairs (what
    ``pair_capacity`` must hold), ``num_chunks`` the chunks of the reachable ones.

    ``chunk_capacity`` (default: :func:`max_chunks`, which cannot overflow) is the length
    of the chunk buffer, and so the amount of rasterization work; a tight value is faster.
    """
    rows, cols = tile_grid(height, width)
    num_tiles = rows * cols
    n = fp.num_tiles.shape[0]
    q = chunk_capacity or max_chunks(pair_capacity, height, width, chunk_size)

    counts = fp.num_tiles
    offsets = jnp.cumsum(counts) - counts
    total = jnp.sum(counts)

    # Expand each Gaussian into its tiles: pair p belongs to Gaussian owner[p].
    pair = jnp.arange(pair_capacity, dtype=jnp.int32)
    gauss = jnp.clip(_owner(offsets, pair_capacity), 0, max(n - 1, 0))
    local = pair - offsets[gauss]
    box_w = jnp.maximum(fp.tile_max[gauss, 0] - fp.tile_min[gauss, 0], 1)
    tx = fp.tile_min[gauss, 0] + local % box_w
    ty = fp.tile_min[gauss, 1] + local // box_w
    valid = (pair < total) & tile_reachable(fp.means[gauss], fp.conics[gauss], jnp.stack([tx, ty], axis=-1))
    tile = jnp.where(valid, ty * cols + tx, num_tiles)
    tile_counts = jnp.zeros(num_tiles + 1, jnp.int32).at[tile].add(1)[:num_tiles]

    # The chunk buffer holds at most q * chunk_size pairs; where that is fewer than the
    # boxes' pairs, the reachable ones are compacted first, so that the sort (the costliest
    # step) runs over the pairs that can be drawn. Any left out make num_chunks > q. The
    # sort is stable: a tile's Gaussians in index order whatever the buffer sizes, so the
    # sums, and a fit, do not depend on the capacities (a resumed fit sizes them anew).
    kept = q * chunk_size
    if kept < pair_capacity:
        rank = jnp.cumsum(valid.astype(jnp.int32)) - 1
        at = jnp.where(valid & (rank < kept), rank, kept)
        tile = jnp.full(kept, num_tiles, jnp.int32).at[at].set(tile, mode="drop")
        gauss = jnp.zeros(kept, jnp.int32).at[at].set(gauss, mode="drop")
    tile, gauss = jax.lax.sort((tile, gauss), num_keys=1, is_stable=True)

    tile_start = jnp.cumsum(tile_counts) - tile_counts
    tile_chunks = (tile_counts + chunk_size - 1) // chunk_size
    chunk_start = jnp.cumsum(tile_chunks) - tile_chunks

    safe_tile = jnp.minimum(tile, num_tiles - 1)
    dest = chunk_start[safe_tile] * chunk_size + (jnp.arange(tile.shape[0], dtype=jnp.int32)
                                                  - tile_start[safe_tile])
    dest = jnp.where(tile < num_tiles, dest, q * chunk_size)
    slots = jnp.full(q * chunk_size, n, jnp.int32).at[dest].set(gauss, mode="drop")

    # Empty tiles share their start with the next tile, so the owner is the non-empty one.
    chunk_tiles = jnp.clip(_owner(chunk_start, q), 0, num_tiles - 1)
    return TileBins(
        chunk_gaussians=slots.reshape(q, chunk_size),
        chunk_tiles=chunk_tiles,
        num_pairs=total,
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
