"""Refinement of a file's integer codes against its image: the encoder's last step.

QAT trains continuous attributes through rounding with a straight-through gradient, so the
codes it ends with are wherever its latents happen to round, not the codes that render
best. Here each Gaussian in turn moves to the best of its current geometry and the ten
neighbours one level up or down in one geometry code (x, y, the two log-diagonal codes,
the off-diagonal) and, for a primitive with a carrier, the six one level up or down in one
carrier code (kx, ky, and the phase, which wraps around), each with the color codes then
best for it (which groups move, wrap or belong to flagged primitives only is
:mod:`gipp_jax.attributes`' table): the image is linear in a Gaussian's color, so that
color is the least-squares one against the residual of all other Gaussians, rounded per
channel to the color quantizer's levels (for a one-dimensional quadratic, the nearest level
is the best one). The error is the decoder's: weights by the renderer's rules
(:func:`gipp_jax.raster.host.gaussian_weights`), the image clamped to [0, 1], tracked on
the rendered image, so every move lowers the decoded file's squared error. Sweeps over all
Gaussians repeat until none moves or ``sweeps`` have run.

The codes' statistics barely change (files within 1% of their size), so this is distortion
for free; docs/studies/compression.md has what it gains on Kodak.

It runs in NumPy on the host, like the entropy coder: a sequential search, each move
depending on the ones before it and touching only one Gaussian's tiles.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from gipp_jax import bitstream
from gipp_jax.attributes import COLOR, COVARIANCE_DIAGONAL, GAUSSIAN_COLUMNS, groups
from gipp_jax.codec import decode_carriers, decode_codes, file_carriers, file_gaussians, file_quantizers
from gipp_jax import quantize as q_lib
from gipp_jax.raster import host, padded_rows
from gipp_jax.raster.host import Geometry, gaussian_weights, geometry, squared_error

# For a primitive with a carrier, this many of the placements best by the unclamped error
# (with each color candidate) are judged by the clamped error.
CLAMPED_OPTIONS = 3


def _union(boxes: np.ndarray):
    drawn = boxes[(boxes[:, 1] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 2])]
    if drawn.size == 0:
        return None
    return drawn[:, 0].min(), drawn[:, 1].max(), drawn[:, 2].min(), drawn[:, 3].max()


@dataclasses.dataclass(frozen=True)
class _ColorLevels:
    """The color quantizer's levels: ``code * scale / w + offset``, codes in ``[0, top w]``,
    ``w`` each row's weight (sized colors; 1 otherwise)."""

    scale: np.ndarray
    offset: np.ndarray
    top: int

    def nearest(self, colors: np.ndarray, w: np.ndarray) -> np.ndarray:
        w = w[:, None]
        return np.clip(np.round((colors - self.offset) * w / self.scale), 0, self.top * w)

    def value(self, codes: np.ndarray, w: np.ndarray) -> np.ndarray:
        return codes * self.scale / w[:, None] + self.offset


def _best_option(weights: np.ndarray, rest: np.ndarray, goal: np.ndarray, color, levels: _ColorLevels,
                 color_weights: np.ndarray, kept_codes: np.ndarray | None = None):
    """Of K placements of one Gaussian, (K, h, w) ``weights`` on a rectangle where the
    other Gaussians render ``rest`` (h, w, 3) against ``goal``, the one with the least
    squared error, each with its best color codes (at its (K,) ``color_weights``):
    ``(k, color codes (3,), render)``. ``color`` is kept for a placement drawn nowhere.

    Placements are judged by the unclamped error, from sums over the rectangle; the caller
    judges the one chosen by the clamped error. A carrier's negative lobes are clamped where
    the image is dark, where the unclamped error misleads (a carrier that matches exactly,
    moved back, lost to another move) and its least-squares color is biased: with
    ``kept_codes`` (3,), the :data:`CLAMPED_OPTIONS` best placements with their
    least-squares color codes and the best with ``kept_codes`` are judged by the clamped
    error (in float32: it only chooses)."""
    flat = weights.reshape(len(weights), -1).astype(np.float64)
    norm = np.einsum("kp,kp->k", flat, flat)
    pull = flat @ (goal - rest).reshape(-1, 3)
    least_squares = np.where(norm[:, None] > 0, pull / np.maximum(norm, 1e-30)[:, None], color)
    codes = levels.nearest(least_squares, color_weights)
    colors = levels.value(codes, color_weights)
    change = np.sum(colors * (norm[:, None] * colors - 2.0 * pull), axis=1)
    if kept_codes is None:
        k = int(np.argmin(change))
        return k, codes[k], rest + weights[k][..., None].astype(np.float64) * colors[k]
    kept_colors = levels.value(np.broadcast_to(kept_codes, codes.shape), color_weights)
    kept_change = np.sum(kept_colors * (norm[:, None] * kept_colors - 2.0 * pull), axis=1)
    ks = list(np.argsort(change, kind="stable")[:CLAMPED_OPTIONS]) + [int(np.argmin(kept_change))]
    options = [(k, codes[k], colors[k]) for k in ks[:-1]] + [(ks[-1], kept_codes, kept_colors[ks[-1]])]
    drawn = rest.astype(np.float32)[None] + weights[ks][..., None] * np.stack([c for _, _, c in options])[
        :, None, None, :].astype(np.float32)
    errors = np.sum(np.square(np.clip(drawn, 0.0, 1.0) - goal.astype(np.float32)[None]), axis=(1, 2, 3))
    k, chosen_codes, chosen_colors = options[int(np.argmin(errors))]
    return k, np.asarray(chosen_codes), rest + weights[k][..., None].astype(np.float64) * chosen_colors


def removal_costs(data: bitstream.Encoded, target, keep=None) -> np.ndarray:
    """Increase of the decoded image's squared error against ``target`` ((H, W, 3)) when
    each Gaussian alone is removed, of the file of ``data``'s Gaussians ``keep`` (an index
    array; default all), one cost per kept Gaussian: :func:`gipp_jax.raster.host.removal_costs`
    (exact by the decoder's rules, its clamp included) of the decoded Gaussians."""

    keep = np.arange(data.codes.shape[0]) if keep is None else np.asarray(keep)
    # All of data's Gaussians decoded (one shape, compiled once), then the kept ones taken.
    means, cov3, colors = file_gaussians(data)
    geo = geometry(means, cov3, data.height, data.width, file_carriers(data)).take(keep)
    colors = np.asarray(colors, np.float64)[keep]
    image = host.render(geo, colors, data.height, data.width)
    return host.removal_costs(geo, colors, image, np.asarray(target, np.float64))


def refine_codes(data: bitstream.Encoded, target, *, sweeps: int = 4,
                 progress: bool = False) -> bitstream.Encoded:
    """``data`` with codes that render ``target`` ((H, W, 3) in [0, 1]) with less squared
    error (see the module docstring); the same Gaussians, quantizers and bit depths. At
    most ``sweeps`` passes over the Gaussians; ``sweeps=0`` returns ``data`` itself.
    ``progress`` shows a bar over the Gaussians of every sweep."""

    n = data.codes.shape[0]
    if sweeps <= 0 or n == 0:
        return data
    height, width = data.height, data.width
    target = np.asarray(target, np.float64)
    qs = file_quantizers(data)
    color_levels = _ColorLevels(*(np.asarray(v, np.float64) for v in q_lib.quantizer_parameters(qs.color)),
                                qs.color.levels)
    codes = data.rows()  # (N, 8), or (N, 11) with the carrier codes after the Gaussian's
    bottom, top = bitstream.column_limits(data)
    searched = groups(data.carriers is not None)
    # Stay, then each moved code one level up and down (the colors are solved for each).
    moved_columns = [c for g in searched if g.moved for c in g.columns]
    optional_columns = [c for g in searched if g.optional for c in g.columns]
    wrapping = [c for g in searched for c in g.wrapping]
    moves = 1 + 2 * len(moved_columns)

    def weights_of(c: np.ndarray) -> np.ndarray:
        """(N,) color weights of (N, 8+) codes (ones without sized colors)."""
        if qs.color_classes is None:
            return np.ones(c.shape[0])
        diagonal = jnp.asarray(c[:, COVARIANCE_DIAGONAL.span], jnp.int32)
        return np.asarray(q_lib.color_weights(diagonal, qs.color_classes), np.float64)

    def decode_geometry(c: np.ndarray) -> tuple[Geometry, np.ndarray]:
        """Their geometry (carriers included), and whether each covariance is positive
        definite; decoded in buckets of rows (one program for every sweep and call)."""
        m = c.shape[0]
        padded, = padded_rows(c.astype(np.int32))
        means, cov3, _, definite = decode_codes(qs, jnp.asarray(padded[:, :GAUSSIAN_COLUMNS]))
        carriers = None
        if data.carriers is not None:
            carriers = np.asarray(decode_carriers(qs.carriers, jnp.asarray(padded[:, GAUSSIAN_COLUMNS:])))
        return geometry(means, cov3, height, width, carriers).take(np.arange(m)), np.asarray(definite)[:m]

    current, _ = decode_geometry(codes)
    colors = color_levels.value(codes[:, COLOR.span], weights_of(codes))
    image = host.render(current, colors, height, width)  # the decoder's render, before clamping

    steps = np.zeros((moves, codes.shape[1]), np.int64)
    for j, column in enumerate(moved_columns):
        steps[1 + 2 * j, column], steps[2 + 2 * j, column] = 1, -1
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sweeps * n, unit="Gaussian", desc="refine", dynamic_ncols=True, leave=False)
    for _ in range(sweeps):
        moved = 0
        candidates = codes[:, None, :] + steps[None]  # (N, moves, columns)
        for column in wrapping:
            candidates[:, :, column] = bottom[column] + (candidates[:, :, column] - bottom[column]) % (
                top[column] - bottom[column] + 1)
        in_range = np.clip(candidates, bottom, top).reshape(-1, codes.shape[1])
        geo, definite = decode_geometry(in_range)
        candidate_weights = weights_of(in_range)
        # A move may not leave the codes' range, nor (coding b itself) make a covariance
        # that the encoder would drop, nor give a primitive an optional group it does not
        # carry (a plain Gaussian a carrier); staying is always allowed.
        valid = np.all((candidates >= bottom) & (candidates <= top), axis=2) & definite.reshape(n, moves)
        textured = bitstream.carrier_flags(codes[:, GAUSSIAN_COLUMNS:])  # all False without carriers
        for j, column in enumerate(moved_columns):
            if column in optional_columns:
                valid[~textured, 1 + 2 * j:3 + 2 * j] = False
        valid[:, 0] = True
        for i in range(n):
            if bar is not None:
                bar.update()
            rows = i * moves + np.flatnonzero(valid[i])
            options = geo.take(rows)
            rect = _union(np.concatenate([options.reach, current.reach[i:i + 1]]))
            if rect is None:
                continue
            y0, y1, x0, x1 = rect
            shown, goal = image[y0:y1, x0:x1], target[y0:y1, x0:x1]
            rest = shown - gaussian_weights(current.take([i]), rect)[0][..., None] * colors[i]
            k, color_codes, render = _best_option(gaussian_weights(options, rect), rest, goal, colors[i],
                                                  color_levels, candidate_weights[rows],
                                                  codes[i, COLOR.span].copy() if textured[i] else None)
            if squared_error(render, goal) < squared_error(shown, goal) * (1.0 - 1e-9) - 1e-12:
                row = rows[k]
                codes[i] = candidates[i, row - i * moves]
                codes[i, COLOR.span] = color_codes
                colors[i] = color_levels.value(color_codes[None], candidate_weights[row:row + 1])[0]
                current.means[i], current.precisions[i] = geo.means[row], geo.precisions[row]
                current.boxes[i], current.reach[i] = geo.boxes[row], geo.reach[row]
                if current.carriers is not None:
                    current.carriers[i] = geo.carriers[row]
                image[y0:y1, x0:x1] = render
                moved += 1
        if moved == 0:
            break
    if bar is not None:
        bar.close()
    return data.with_rows(codes)
