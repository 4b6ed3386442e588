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
depending on the ones before it and touching only one Gaussian's tiles. So lines across
the image part each sweep's Gaussians into sides that do not touch, the two sides of a line
searched at once in two processes (:mod:`gipp_jax.host_worker`), those across every line
last (:func:`_stages`); the order, and so the codes, are the same in one process.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

from gipp_jax import bitstream, host_worker
from gipp_jax.attributes import COLOR, COVARIANCE_DIAGONAL, GAUSSIAN_COLUMNS, groups
from gipp_jax.codec import decode_carriers, decode_codes, file_carriers, file_gaussians, file_quantizers
from gipp_jax import quantize as q_lib
from gipp_jax.raster import host, padded_rows
from gipp_jax.raster.host import Geometry, gaussian_weights, geometry, squared_error

# For a primitive with a carrier, this many of the placements best by the unclamped error
# (with each color candidate) are judged by the clamped error.
CLAMPED_OPTIONS = 3


def _search_rectangles(reach: np.ndarray, valid: np.ndarray, current: np.ndarray):
    """The (N, 4) rectangles ``y0, y1, x0, x1`` a sweep searches each Gaussian on, and how
    many of its placements draw there (N,): the union of its (N * moves, 4) options'
    ``reach`` that are ``valid`` (N, moves) and its (N, 4) ``current`` reach, the boxes
    that draw nothing left out; empty (``y1 <= y0``) where none draws. A Gaussian's own
    reach is all that moves before it is searched, so one computation serves the sweep."""
    n, moves = valid.shape
    boxes = np.concatenate([reach.reshape(n, moves, 4), current[:, None]], axis=1)
    drawn = np.concatenate([valid, np.ones((n, 1), bool)], axis=1)
    drawn &= (boxes[..., 1] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 2])
    big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    low = np.where(drawn[..., None], boxes[..., 0::2], big).min(axis=1)  # (N, 2): y0, x0
    high = np.where(drawn[..., None], boxes[..., 1::2], small).max(axis=1)  # y1, x1
    rects = np.stack([low[:, 0], high[:, 0], low[:, 1], high[:, 1]], axis=1)
    rects[~drawn.any(axis=1)] = 0
    return rects, drawn.sum(axis=1)


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
    parallel = host_worker.two_cores()
    image = _render(geo, colors, data.height, data.width, parallel)
    return host.removal_costs(geo, colors, image, np.asarray(target, np.float64), parallel=parallel)


def _render(geo: Geometry, colors: np.ndarray, height: int, width: int, parallel: bool) -> np.ndarray:
    """:func:`gipp_jax.raster.host.render` of ``geo``'s Gaussians with (N, 3) ``colors``,
    as the sum of the renders of their two halves (the same sum in one process or two,
    at once where ``parallel``)."""
    here, there = host.in_halves(host.render, geo, colors, height, width, parallel=parallel)
    return here + there


def refine_codes(data: bitstream.Encoded, target, *, sweeps: int = 4, progress: bool = False,
                 workers: int | None = None) -> bitstream.Encoded:
    """``data`` with codes that render ``target`` ((H, W, 3) in [0, 1]) with less squared
    error (see the module docstring); the same Gaussians, quantizers and bit depths. At
    most ``sweeps`` passes over the Gaussians; ``sweeps=0`` returns ``data`` itself.
    ``progress`` shows a bar over the Gaussians of every sweep. ``workers``: processes to
    search in, 1 or 2 (None: 2 where two cores are free to this process); the codes are
    the same for either."""

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
    parallel = host_worker.two_cores() if workers is None else workers > 1
    image = _render(current, colors, height, width, parallel)  # the decoder's render, before clamping

    steps = np.zeros((moves, codes.shape[1]), np.int64)
    for j, column in enumerate(moved_columns):
        steps[1 + 2 * j, column], steps[2 + 2 * j, column] = 1, -1
    state = _State(codes, colors, current, image)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sweeps * n, unit="Gaussian", desc="refine", dynamic_ncols=True, leave=False)
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(sweeps):
            candidates = codes[:, None, :] + steps[None]  # (N, moves, columns)
            for column in wrapping:
                candidates[:, :, column] = bottom[column] + (candidates[:, :, column] - bottom[column]) % (
                    top[column] - bottom[column] + 1)
            in_range = np.clip(candidates, bottom, top).reshape(-1, codes.shape[1])
            geo, definite = decode_geometry(in_range)
            # A move may not leave the codes' range, nor (coding b itself) make a covariance
            # that the encoder would drop, nor give a primitive an optional group it does not
            # carry (a plain Gaussian a carrier); staying is always allowed.
            valid = np.all((candidates >= bottom) & (candidates <= top), axis=2) & definite.reshape(n, moves)
            textured = bitstream.carrier_flags(codes[:, GAUSSIAN_COLUMNS:])  # all False without carriers
            for j, column in enumerate(moved_columns):
                if column in optional_columns:
                    valid[~textured, 1 + 2 * j:3 + 2 * j] = False
            valid[:, 0] = True
            rects, drawn = _search_rectangles(geo.reach, valid, state.current.reach)
            sweep = _Sweep(candidates, geo, valid, weights_of(in_range), textured, rects, drawn, target,
                           color_levels)
            if _search(state, sweep, parallel, bar) == 0:
                break
    if bar is not None:
        bar.close()
    return data.with_rows(codes)


def _search(state: _State, sweep: _Sweep, parallel: bool, bar) -> int:
    """One sweep over ``state``'s Gaussians in :func:`_stages`' order, each stage's two
    sides at once where ``parallel``; returns how many moved."""
    stages, last = _stages(state, sweep)
    moved = 0
    for first, second, region in stages:
        if len(first) and len(second):
            moved_here, (moved_there, part) = host_worker.both(
                (_refine_in_order, (state, sweep, first, bar)),
                (_refine_part, (state.take(second), sweep.take(second), region)), parallel=parallel)
            state.update(second, part, region)
            moved += moved_here + moved_there
            if bar is not None:
                bar.update(len(second))
        else:
            moved += _refine_in_order(state, sweep, first, bar) + _refine_in_order(state, sweep, second, bar)
    return moved + _refine_in_order(state, sweep, last, bar)


@dataclasses.dataclass
class _State:
    """What a sweep changes: (N, C) ``codes`` and (N, 3) ``colors``, the Gaussians'
    ``current`` geometry and the (H, W, 3) unclamped ``image`` they render."""

    codes: np.ndarray
    colors: np.ndarray
    current: Geometry
    image: np.ndarray

    def take(self, rows: np.ndarray) -> _State:
        """The Gaussians ``rows`` alone (copies), on the whole image."""
        return _State(self.codes[rows], self.colors[rows], self.current.take(rows), self.image)

    def update(self, rows: np.ndarray, part: _State, region) -> None:
        """Takes the Gaussians ``rows`` and the image in ``region`` from ``part``, a
        :meth:`take` of them that a sweep changed there."""
        self.codes[rows], self.colors[rows] = part.codes, part.colors
        self.current.put(rows, part.current)
        self.image[region] = part.image


@dataclasses.dataclass(frozen=True)
class _Sweep:
    """One sweep's options: each Gaussian's (N, moves, C) ``candidates`` codes, their
    geometry ``geo`` (N * moves rows) and (N * moves,) color ``weights``, which are
    ``valid`` (N, moves); which Gaussians are ``textured`` (N,); the (N, 4) rectangles
    each is searched on and its (N,) placements ``drawn`` there (:func:`_search_rectangles`);
    the ``target`` and the color ``levels``."""

    candidates: np.ndarray
    geo: Geometry
    valid: np.ndarray
    weights: np.ndarray
    textured: np.ndarray
    rects: np.ndarray
    drawn: np.ndarray
    target: np.ndarray
    levels: _ColorLevels

    def take(self, rows: np.ndarray) -> _Sweep:
        moves = self.candidates.shape[1]
        options = (rows[:, None] * moves + np.arange(moves)).reshape(-1)
        return _Sweep(self.candidates[rows], self.geo.take(options), self.valid[rows], self.weights[options],
                      self.textured[rows], self.rects[rows], self.drawn[rows], self.target,
                      self.levels)


def _stages(state: _State, sweep: _Sweep):
    """The sweep's order: ``(stages, last)``. Each of the :data:`STAGES` stages is
    ``(first, second, region)``: of the Gaussians not yet ordered, those whose options all
    lie on one side of a line across the image, and those on the other side (index arrays,
    each ascending); ``region`` (slices) is the second side's part of the image. The two
    sides do not touch, so they can be searched at once. The lines alternate between the
    image's axes, the longer first, each parting the estimated work of what is left in
    two; ``last`` are those across every line."""
    y0, y1, x0, x1 = sweep.rects.T
    drawn = y1 > y0
    low, high = np.stack([y0, x0], axis=1), np.stack([y1, x1], axis=1)
    # Each option is drawn on the union of all: a search's time goes as that area times the options.
    cost = (y1 - y0) * (x1 - x0) * sweep.drawn + _ITERATION_COST
    height, width = state.image.shape[:2]
    axis = 1 if width >= height else 0
    left = np.flatnonzero(drawn)  # the others are not searched: any order
    stages = []
    for stage in range(STAGES):
        lo, hi = low[left, axis], high[left, axis]
        split = _balanced_split(lo, hi, cost[left], state.image.shape[axis])
        first, second = left[hi <= split], left[lo >= split]
        if stage == 0:
            first = np.union1d(first, np.flatnonzero(~drawn))
        region = (slice(None), slice(split, None)) if axis == 1 else (slice(split, None),)
        stages.append((first, second, region))
        left = left[(lo < split) & (hi > split)]
        axis = 1 - axis
    return stages, left


def _balanced_split(lo: np.ndarray, hi: np.ndarray, cost: np.ndarray, size: int) -> int:
    """The line ``0 <= split <= size`` across spans ``[lo, hi)`` (with their costs) that
    leaves the least work to do when the spans below it (``hi <= split``) and those above
    (``lo >= split``) are searched at once and then those across it."""
    lines = np.arange(size + 1)
    by_hi, by_lo = np.argsort(hi), np.argsort(lo)
    below = np.concatenate([[0], np.cumsum(cost[by_hi])])[np.searchsorted(hi[by_hi], lines, side="right")]
    above_cum = np.concatenate([[0], np.cumsum(cost[by_lo])])
    above = above_cum[-1] - above_cum[np.searchsorted(lo[by_lo], lines, side="left")]
    return int(np.argmin(np.maximum(below, above) + (cost.sum() - below - above)))


# Lines the refinement's sweeps are parted by (:func:`_stages`); each leaves fewer Gaussians
# to search in one process.
STAGES = 3

# A Gaussian's search costs about as much as drawing this many more option-pixels (the
# interpreter's share), in the estimate that parts the work in two.
_ITERATION_COST = 10000


def _refine_part(state: _State, sweep: _Sweep, region) -> tuple[int, _State]:
    """The worker's half (:mod:`gipp_jax.host_worker`): its Gaussians searched in order,
    and how many moved; the image returned is the part of it in ``region``."""
    moved = _refine_in_order(state, sweep, np.arange(state.codes.shape[0]), None)
    return moved, _State(state.codes, state.colors, state.current, state.image[region])


def _refine_in_order(state: _State, sweep: _Sweep, order: np.ndarray, bar) -> int:
    """Searches the Gaussians ``order`` one after the other, moving each to its best
    option (see the module docstring); returns how many moved."""
    codes, colors, current, image = state.codes, state.colors, state.current, state.image
    candidates, geo, valid, target, levels = sweep.candidates, sweep.geo, sweep.valid, sweep.target, sweep.levels
    moves = candidates.shape[1]
    moved = 0
    for i in order:
        if bar is not None:
            bar.update()
        rows = i * moves + np.flatnonzero(valid[i])
        y0, y1, x0, x1 = rect = tuple(sweep.rects[i])
        if y1 <= y0:
            continue
        options = geo.take(rows)
        shown, goal = image[y0:y1, x0:x1], target[y0:y1, x0:x1]
        rest = shown - gaussian_weights(current.take([i]), rect)[0][..., None] * colors[i]
        k, color_codes, render = _best_option(gaussian_weights(options, rect), rest, goal, colors[i],
                                              levels, sweep.weights[rows],
                                              codes[i, COLOR.span].copy() if sweep.textured[i] else None)
        if squared_error(render, goal) < squared_error(shown, goal) * (1.0 - 1e-9) - 1e-12:
            row = rows[k]
            codes[i] = candidates[i, row - i * moves]
            codes[i, COLOR.span] = color_codes
            colors[i] = levels.value(color_codes[None], sweep.weights[row:row + 1])[0]
            current.put([i], geo.take([row]))
            image[y0:y1, x0:x1] = render
            moved += 1
    return moved
