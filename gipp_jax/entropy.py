"""Entropy models: what a code costs and how the range coder writes it.

A ``.gipp`` payload is one stream of ``constriction``'s range coder. Each channel of it is
coded by an entropy model, one small class each, all with the same three methods:

* ``bits(symbols)``: what coding ``symbols`` costs, in bits: the sum of ``-log2`` of the
  probabilities the coder is given for them, so a payload is the sum over its channels
  within the range coder's few words of rounding;
* ``encode(coder, symbols)`` and ``decode(coder, count)``: the range coder's calls.

A model is data (its alphabet, its prior's parameters) and keeps no state between calls:
an adaptive model learns afresh in each call, the same way in the encoder and the decoder.
The models:

* :class:`AdaptiveCategorical`: a categorical that learns from what it has coded, in
  blocks of :data:`BLOCK` symbols, starting from a prior (:func:`discretised_gaussian`,
  whose two parameters a file stores in two bytes: :func:`pack_priors`);
* :class:`UniformCodes`: each symbol uniform over an alphabet of its own (raw bits);
* :class:`MortonGaps`: sorted Morton codes of positions as their gaps: each gap's bit
  length (adaptive, with the prior of uniformly scattered points), then the bits below its
  leading one (uniform).

And what turns codes into better-coded symbols before a model sees them:
:func:`fit_color_predictors` and :func:`predict_color` (green and blue predicted from the
channels before them). Which channels a file codes, in which order, and its header are
:mod:`gipp_jax.bitstream`'s.

For training, :func:`soft_bits` is a differentiable estimate (JAX) of what an adaptive
model spends on a channel: the entropy of its codes' histogram, each value's count shared
between the two codes around it, so that the estimate moves with the values and with the
quantizer's step.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 64            # an adaptive model's probabilities are refreshed every BLOCK symbols
BIN_WEIGHT = 32.0     # the prior's weight, in observations, against coarse-bin counts
SYMBOL_WEIGHT = 64.0  # the prior's weight inside a bin against that bin's symbol counts
BINS = 32
PRIOR_FLOOR = 0.02    # the share of a prior spread evenly: heavy enough tails for any symbol


class EntropyModel(Protocol):
    """What every entropy model of this module provides (see the module docstring)."""

    def bits(self, symbols: np.ndarray) -> float: ...

    def encode(self, coder, symbols: np.ndarray) -> None: ...

    def decode(self, coder, count: int) -> np.ndarray: ...


def discretised_gaussian(mean: float, std: float, size: int) -> np.ndarray:
    """(size,) probabilities of symbols ``0 .. size-1`` under a Gaussian of ``mean`` and
    ``std`` (at least half a symbol), mixed with :data:`PRIOR_FLOOR` of a uniform."""
    k = np.arange(size, dtype=np.float64)
    std = max(float(std), 0.5)
    p = np.exp(-0.5 * ((k - mean) / std) ** 2)
    p = p / p.sum() if np.isfinite(p).all() and p.sum() > 0 else np.full(size, 1.0 / size)
    return (1.0 - PRIOR_FLOOR) * p + PRIOR_FLOOR / size


def pack_priors(symbols: np.ndarray, sizes: list[int]) -> np.ndarray:
    """The parameters of a :func:`discretised_gaussian` prior for each column of (N, C)
    ``symbols`` (column j over ``sizes[j]`` symbols), one byte each for the mean (a fraction
    of the alphabet) and the std (log scale, 1/16 octave from 0.5): (2 C,) uint8."""
    packed = np.zeros((len(sizes), 2), np.uint8)
    for j, size in enumerate(sizes):
        col = symbols[:, j].astype(np.float64)
        mean, std = (col.mean(), col.std()) if col.size else (0.0, 1.0)
        packed[j, 0] = np.clip(np.rint(mean / max(size - 1, 1) * 255), 0, 255)
        packed[j, 1] = np.clip(np.rint((np.log2(max(std, 0.5)) + 1.0) * 16), 0, 255)
    return packed.ravel()


def unpack_priors(packed: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """The priors :func:`pack_priors`' bytes describe, one per alphabet of ``sizes``."""
    pairs = np.asarray(packed, np.float64).reshape(len(sizes), 2)
    return [discretised_gaussian(m / 255 * max(size - 1, 1), 2.0 ** (s / 16 - 1.0), size)
            for (m, s), size in zip(pairs, sizes)]


class _Counts:
    """The state of an :class:`AdaptiveCategorical` while it codes: two levels, the
    probability of one of :data:`BINS` coarse bins (bin counts against the prior's bin
    mass, worth ``bin_weight`` observations), times the probability of the symbol inside
    its bin (symbol counts against the prior's shape inside the bin, worth
    :data:`SYMBOL_WEIGHT`)."""

    def __init__(self, size: int, prior: np.ndarray, bin_weight: float):
        self.bin_weight = bin_weight
        width = max(1, size // BINS)
        self.bin_of = np.arange(size) // width
        self.prior_bin = np.bincount(self.bin_of, weights=prior)
        self.in_bin = prior / self.prior_bin[self.bin_of]
        self.bin_counts = np.zeros(self.prior_bin.size)
        self.counts = np.zeros(size)

    def row(self) -> np.ndarray:
        p_bin = (self.bin_counts + self.bin_weight * self.prior_bin) / (self.bin_counts.sum() + self.bin_weight)
        p_in = (self.counts + SYMBOL_WEIGHT * self.in_bin) / (self.bin_counts[self.bin_of] + SYMBOL_WEIGHT)
        return p_bin[self.bin_of] * p_in

    def observe(self, symbols: np.ndarray) -> None:
        np.add.at(self.counts, symbols, 1.0)
        np.add.at(self.bin_counts, self.bin_of[symbols], 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class AdaptiveCategorical:
    """A categorical over ``size`` symbols that learns from the symbols it has coded: one
    row of probabilities per block of :data:`BLOCK` symbols, from the counts so far blended
    with ``prior`` (:class:`_Counts`). With few symbols the prior rules; with thousands the
    bins, then the symbols, take over."""

    size: int
    prior: np.ndarray                # (size,) probabilities
    bin_weight: float = BIN_WEIGHT

    def bits(self, symbols: np.ndarray) -> float:
        symbols = np.asarray(symbols, np.int64)
        counts, total = self._counts(), 0.0
        for start in range(0, len(symbols), BLOCK):
            block = symbols[start:start + BLOCK]
            total -= float(np.log2(counts.row()[block]).sum())
            counts.observe(block)
        return total

    def encode(self, coder, symbols: np.ndarray) -> None:
        self._code(coder, np.asarray(symbols, np.int64), len(symbols))

    def decode(self, coder, count: int) -> np.ndarray:
        return self._code(coder, None, count)

    def _counts(self) -> _Counts:
        return _Counts(self.size, self.prior, self.bin_weight)

    def _code(self, coder, symbols: np.ndarray | None, count: int) -> np.ndarray:
        import constriction

        model = constriction.stream.model.Categorical(perfect=False)
        counts = self._counts()
        out = np.zeros(count, np.int64)
        for start in range(0, count, BLOCK):
            stop = min(count, start + BLOCK)
            probs = np.tile(counts.row(), (stop - start, 1))
            if symbols is None:
                block = np.asarray(coder.decode(model, probs), np.int64)
            else:
                block = symbols[start:stop]
                coder.encode(block.astype(np.int32), model, probs)
            out[start:stop] = block
            counts.observe(block)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class UniformCodes:
    """Symbol i uniform over ``0 .. sizes[i]-1`` (an alphabet of one costs nothing)."""

    sizes: np.ndarray  # (N,) int

    def bits(self, symbols: np.ndarray) -> float:
        return float(np.log2(self.sizes).sum())

    def encode(self, coder, symbols: np.ndarray) -> None:
        import constriction

        keep = self.sizes >= 2
        if keep.any():
            coder.encode(np.asarray(symbols)[keep].astype(np.int32), constriction.stream.model.Uniform(),
                         self.sizes[keep].astype(np.int32))

    def decode(self, coder, count: int) -> np.ndarray:
        import constriction

        keep = self.sizes >= 2
        out = np.zeros(self.sizes.shape, np.int64)
        if keep.any():
            out[keep] = np.asarray(coder.decode(constriction.stream.model.Uniform(),
                                                self.sizes[keep].astype(np.int32)), np.int64)
        return out


def _leading(lengths: np.ndarray) -> np.ndarray:
    """The value of a gap's leading one, for gaps of bit length ``lengths`` (0 for 0)."""
    return np.where(lengths >= 1, 1 << np.maximum(lengths - 1, 0), 0)


def _below_leading_sizes(lengths: np.ndarray) -> np.ndarray:
    """How many values the bits below a gap's leading one can take."""
    return np.where(lengths >= 2, 1 << np.maximum(lengths - 1, 0), 1)


@dataclasses.dataclass(frozen=True)
class MortonGaps:
    """``count`` sorted Morton codes of points on a ``2^depth x 2^depth`` grid, coded as the
    gaps between consecutive codes (the first from 0): each gap's bit length with an
    :class:`AdaptiveCategorical` whose prior (:func:`gap_length_prior`) costs no header
    bytes, then the bits below its leading one with :class:`UniformCodes`."""

    count: int
    depth: int  # bits per axis of the grid

    def split(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) sorted Morton codes to their gaps' bit lengths and the values below them."""
        gaps = np.diff(np.asarray(codes, np.int64), prepend=0)
        lengths = np.array([int(g).bit_length() for g in gaps], np.int64)
        return lengths, gaps - _leading(lengths)

    def lengths_model(self) -> AdaptiveCategorical:
        return AdaptiveCategorical(2 * self.depth + 1, gap_length_prior(self.count, self.depth))

    def bits(self, codes: np.ndarray) -> float:
        lengths, _ = self.split(codes)
        return self.lengths_model().bits(lengths) + UniformCodes(_below_leading_sizes(lengths)).bits(None)

    def encode(self, coder, codes: np.ndarray) -> None:
        lengths, rest = self.split(codes)
        self.lengths_model().encode(coder, lengths)
        UniformCodes(_below_leading_sizes(lengths)).encode(coder, rest)

    def decode(self, coder, count: int | None = None) -> np.ndarray:
        lengths = self.lengths_model().decode(coder, self.count)
        rest = UniformCodes(_below_leading_sizes(lengths)).decode(coder, self.count)
        return np.cumsum(_leading(lengths) + rest)


def gap_length_prior(n: int, pos_bits: int) -> np.ndarray:
    """P(bit length of a Morton gap) for ``n`` points scattered uniformly over the grid:
    gaps are about exponential with rate n / 4^b, so length 0 has 1 - e^-rate and length
    l >= 1 has e^(-rate 2^(l-1)) - e^(-rate 2^l)."""
    rate = max(n, 1) / float(1 << (2 * pos_bits))
    edges = np.exp(-rate * np.concatenate([[0.0], 2.0 ** np.arange(2 * pos_bits + 1)]))
    p = -np.diff(np.append(edges, 0.0))[: 2 * pos_bits + 1]
    p = p / p.sum()
    return (1.0 - PRIOR_FLOOR) * p + PRIOR_FLOOR / p.size


def fit_color_predictors(colors: np.ndarray) -> np.ndarray:
    """(5,) least-squares coefficients of ``g ~ p0 + p1 r`` and ``b ~ p2 + p3 r + p4 g``
    over (N, 3) color codes (zeros with fewer than three rows)."""
    coef = np.zeros(5)
    if colors.shape[0] >= 3:
        ones = np.ones(colors.shape[0])
        coef[0:2] = np.linalg.lstsq(np.stack([ones, colors[:, 0]], 1), colors[:, 1], rcond=None)[0]
        coef[2:5] = np.linalg.lstsq(np.stack([ones, colors[:, 0], colors[:, 1]], 1), colors[:, 2], rcond=None)[0]
    return coef


def predict_color(colors: np.ndarray, j: int, coef: np.ndarray, size: int) -> np.ndarray:
    """The prediction of channel ``j`` (1: green, 2: blue) of (N, 3) color codes from the
    channels before it with coefficients ``coef`` (as stored), as codes in [0, size)."""
    c = coef.astype(np.float64)
    r, g = colors[:, 0].astype(np.float64), colors[:, 1].astype(np.float64)
    pred = c[0] + c[1] * r if j == 1 else c[2] + c[3] * r + c[4] * g
    return np.clip(np.rint(pred), 0, size - 1).astype(np.int64)


def empirical_bits(symbols) -> float:
    """Total zeroth-order entropy of a sequence of integer symbols, in bits: what an
    entropy coder with the sequence's own histogram needs, less the histogram."""
    _, counts = np.unique(np.asarray(symbols), return_counts=True)
    p = counts / max(counts.sum(), 1)
    return float(-np.sum(counts * np.log2(p)))


def soft_bits(values: jax.Array, size: int, weights: jax.Array | None = None) -> jax.Array:
    """A differentiable estimate, in bits, of coding the (N,) codes ``round(values)`` over
    ``0 .. size-1`` with an adaptive model (:class:`AdaptiveCategorical`): ``N`` times the
    entropy of their histogram, where each value's count is shared between the two codes
    around it in proportion to its distance from each (so at integer values it is the
    codes' own empirical entropy, :func:`empirical_bits`). ``weights`` (N,) count each row
    (0 for rows that are not coded). Values are clipped to ``[0, size - 1]``."""
    v = jnp.clip(values.astype(jnp.float32), 0.0, size - 1.0)
    w = jnp.ones_like(v) if weights is None else weights.astype(jnp.float32)
    below = jnp.floor(v)
    frac = v - below
    index = below.astype(jnp.int32)
    counts = (jnp.zeros(size, jnp.float32).at[index].add(w * (1.0 - frac))
              .at[jnp.minimum(index + 1, size - 1)].add(w * frac))
    p = counts / jnp.maximum(jnp.sum(w), 1.0)
    return -jnp.sum(counts * jnp.log2(jnp.where(counts > 0, p, 1.0)))
