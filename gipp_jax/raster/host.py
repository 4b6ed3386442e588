"""Single Gaussians drawn on the host, in NumPy, by the renderer's rules.

The encoder's code search (:mod:`gipp_jax.refine`) and pruning, and a fit's relocation of
its least useful Gaussians (:mod:`gipp_jax.methods`), each ask what one Gaussian adds to the
image on the few pixels it reaches: its weights exactly as the rasterizers draw them (tile
box, the 1/255 cut-off; :func:`gaussian_weights`) and what its removal would cost
(:func:`removal_costs`). That is sequential work on small rectangles, each answer
depending on the last: NumPy's job rather than a compiled program's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax import host_worker
from gipp_jax.raster.binning import MIN_WEIGHT, TILE_SIZE, carrier_phase, footprint, gaussian_sigma


@dataclasses.dataclass(frozen=True)
class Geometry:
    """N Gaussians as the renderer draws them: ``means`` (N, 2) and ``precisions`` (N, 3)
    (factored inverse covariances ``(p, q, r)``, see
    :func:`~gipp_jax.raster.binning.gaussian_sigma`) in pixels, ``boxes`` (N, 4) int, the pixel
    rectangle ``[y0, y1) x [x0, x1)`` of the tiles each one is drawn on (empty when none),
    ``reach`` (N, 4) int, the part of that rectangle where its weight can be nonzero, and
    ``carriers``, None or (N, 3) cosine carriers ``(kx, ky, phi)`` that multiply the weights."""

    means: np.ndarray
    precisions: np.ndarray
    boxes: np.ndarray
    reach: np.ndarray
    carriers: np.ndarray | None = None

    def take(self, rows) -> Geometry:
        """The Gaussians ``rows`` (indices), in that order."""
        return Geometry(self.means[rows], self.precisions[rows], self.boxes[rows], self.reach[rows],
                        None if self.carriers is None else self.carriers[rows])

    def put(self, rows, other: Geometry) -> None:
        """Sets the Gaussians ``rows`` (indices) to ``other``'s, as many, in that order."""
        for field in dataclasses.fields(self):
            if getattr(self, field.name) is not None:
                getattr(self, field.name)[rows] = getattr(other, field.name)


# One program per shape (op by op, every call compiled dozens of small ones).
_footprint = jax.jit(footprint, static_argnums=(2, 3))


def geometry(means, cov3, height: int, width: int, carriers=None) -> Geometry:
    """The renderer's footprint (:func:`~gipp_jax.raster.binning.footprint`) of (N, 2)
    means and (N, 3) covariances ``(a, b, c)``, in pixels, with (N, 3) ``carriers`` if
    given."""
    fp = _footprint(jnp.asarray(means, jnp.float32), jnp.asarray(cov3, jnp.float32), int(height), int(width))
    tmin, tmax = np.asarray(fp.tile_min), np.asarray(fp.tile_max)
    drawn = np.asarray(fp.num_tiles) > 0
    boxes = np.stack([tmin[:, 1] * TILE_SIZE, np.minimum(tmax[:, 1] * TILE_SIZE, height),
                      tmin[:, 0] * TILE_SIZE, np.minimum(tmax[:, 0] * TILE_SIZE, width)], axis=1)
    boxes = np.where(drawn[:, None], boxes, 0).astype(np.int64)
    # The footprint's rectangle around the ellipse where the weight reaches 1/255: a fitted
    # tile box is often five times larger (it is square, from the longer axis, and whole tiles).
    means = np.asarray(means, np.float64)
    half = np.asarray(fp.extent, np.float64)[:, ::-1]  # (y, x)
    near = np.stack([np.floor(means[:, 1] - half[:, 0]), np.ceil(means[:, 1] + half[:, 0]) + 1,
                     np.floor(means[:, 0] - half[:, 1]), np.ceil(means[:, 0] + half[:, 1]) + 1], axis=1)
    near = np.nan_to_num(near, nan=0.0, posinf=1e9, neginf=-1e9).astype(np.int64)
    reach = np.stack([np.maximum(boxes[:, 0], near[:, 0]), np.minimum(boxes[:, 1], near[:, 1]),
                      np.maximum(boxes[:, 2], near[:, 2]), np.minimum(boxes[:, 3], near[:, 3])], axis=1)
    empty = (reach[:, 1] <= reach[:, 0]) | (reach[:, 3] <= reach[:, 2])
    reach = np.where(empty[:, None], 0, reach)
    carriers = None if carriers is None else np.asarray(carriers, np.float64)
    return Geometry(means, np.asarray(fp.precisions, np.float64), boxes, reach, carriers)


def gaussian_weights(geo: Geometry, rect) -> np.ndarray:
    """(N, h, w) weights ``exp(-sigma)`` (times ``cos(theta)`` with carriers) of ``geo``'s
    Gaussians on the pixel rectangle ``rect = (y0, y1, x0, x1)``, zero where the renderer
    skips the pair (outside the Gaussian's tiles, ``sigma < 0``, envelope below 1/255)."""
    y0, y1, x0, x1 = rect
    # float32, as the renderer: half the time of float64 here, where most of it goes.
    dx = (np.arange(x0, x1)[None, None, :] - geo.means[:, 0, None, None]).astype(np.float32)
    dy = (np.arange(y0, y1)[None, :, None] - geo.means[:, 1, None, None]).astype(np.float32)
    p, q, r = (geo.precisions[:, k, None, None].astype(np.float32) for k in range(3))
    sigma = gaussian_sigma(p, q, r, dx, dy)
    weight = np.exp(-sigma)
    bx = geo.boxes[:, :, None, None]
    rows = np.arange(y0, y1)[None, :, None]
    cols = np.arange(x0, x1)[None, None, :]
    # The tile box tested by row and by column, then broadcast: one full-size operation.
    inside = ((rows >= bx[:, 0]) & (rows < bx[:, 1])) & ((cols >= bx[:, 2]) & (cols < bx[:, 3]))
    inside &= sigma >= 0.0
    inside &= weight >= MIN_WEIGHT
    weight = np.where(inside, weight, np.float32(0.0))
    if geo.carriers is not None:
        kx, ky, phi = (geo.carriers[:, k, None, None].astype(np.float32) for k in range(3))
        weight = weight * np.cos(carrier_phase(kx, ky, phi, dx, dy))
    return weight


def render(geo: Geometry, colors: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float64 plain sum of ``geo``'s Gaussians with (N, 3) ``colors``, before clamping."""
    image = np.zeros((height, width, 3))
    for i in range(len(colors)):
        y0, y1, x0, x1 = rect = geo.reach[i]
        if y1 > y0 and x1 > x0:
            image[y0:y1, x0:x1] += gaussian_weights(geo.take([i]), rect)[0][..., None] * colors[i]
    return image


def squared_error(render: np.ndarray, goal: np.ndarray) -> float:
    """Summed squared error of a render clamped to [0, 1] against ``goal``, as decoded."""
    return float(np.sum(np.square(np.clip(render, 0.0, 1.0) - goal)))


def removal_costs(geo: Geometry, colors: np.ndarray, image: np.ndarray, target: np.ndarray, *,
                  parallel: bool = False) -> np.ndarray:
    """(N,) increase of the squared error (summed over pixels and channels, values in [0, 1])
    of ``image``, the unclamped (H, W, 3) render of these N Gaussians with (N, 3) ``colors``
    (and of any others), against ``target`` when each Gaussian alone is removed. The clamp
    to [0, 1] is the decoder's: where the plain sum overshoots 1 (a bright area drawn by
    overlapping Gaussians) a removal may cost nothing at all; without the clamp it would look
    like a gain, and all of them would go. With ``parallel``, each half of them in a process
    of its own (:mod:`gipp_jax.host_worker`; the encoder's pruning, not a fit, whose few
    calls would not pay for starting it); each cost is the same either way."""
    return np.concatenate(in_halves(_removal_costs, geo, colors, image, target, parallel=parallel))


def in_halves(function, geo: Geometry, colors: np.ndarray, *args, parallel: bool) -> tuple:
    """``function(geo, colors, *args)`` of the first half of the Gaussians and of the second,
    the second in :mod:`gipp_jax.host_worker`'s process at once where ``parallel``."""
    first, second = np.arange(len(colors) // 2), np.arange(len(colors) // 2, len(colors))
    return host_worker.both((function, (geo.take(first), colors[first], *args)),
                            (function, (geo.take(second), colors[second], *args)), parallel=parallel)


def _removal_costs(geo: Geometry, colors: np.ndarray, image: np.ndarray, target: np.ndarray) -> np.ndarray:
    cost = np.zeros(len(colors))
    for i in range(len(colors)):
        y0, y1, x0, x1 = rect = geo.reach[i]
        if y1 > y0 and x1 > x0:
            shown, goal = image[y0:y1, x0:x1], target[y0:y1, x0:x1]
            without = shown - gaussian_weights(geo.take([i]), rect)[0][..., None] * colors[i]
            cost[i] = squared_error(without, goal) - squared_error(shown, goal)
    return cost
