"""Learnable scalar quantizers (LSQ+) for Gaussian attributes, as pure functions.

A quantizer maps a channel to integer codes ``clip(round((f(x) - offset) / scale), 0, 2^b - 1)``
and back to ``f^-1(code * scale + offset)``, with ``f`` the identity (LSQ+) or
``log(|x| + 1e-6)`` (the log quantizer of the covariance diagonal). ``scale`` and ``offset``
are learned; rounding passes its gradient straight through. The scale and offset a quantizer
*uses* are its parameters rounded to float16 (:func:`quantizer_parameters`), also with a
straight-through gradient, so that training, the file's 2-byte header fields and the decoder
all see the same numbers.

The reference's split, used by :func:`init_gaussian_quantizers`:

* position: LSQ+, 12 bits, per channel (x, y);
* covariance (the *filtered* one, so the decoder never needs the filter variance): the
  diagonal ``(a, c)`` with the log quantizer, the off-diagonal ``b`` with LSQ+, 10 bits;
* color (after the sigmoid): LSQ+, 6 bits.

The off-diagonal can instead be coded as the correlation ``rho = b / sqrt(a c)``
(``correlation=True``, the default of :mod:`gipp_jax.compress`): ``rho`` lies in (-1, 1)
whatever the Gaussian's size, so every decoded covariance is positive definite (``|rho|``
is clipped to :data:`MAX_CORRELATION`) and a few very large Gaussians cannot stretch the
quantizer's range, as they do to ``b`` (an off-diagonal of thousands of px^2 next to ones
below 1 px^2: with ``b`` coded, such fits lost most Gaussians to non-positive-definite codes).
With ``arcsine=True`` (the default of :mod:`gipp_jax.compress`) its codes are uniform in
``(2 / pi) asin(rho)`` rather than in ``rho``: the steps in ``rho`` shrink towards +-1, where
a needle-shaped Gaussian's shape changes fastest with ``rho``. A fifth to a third of the
Gaussians of a compressed Kodak image have ``|rho| > 0.9``; re-quantizing such files to 6
correlation bits costs 1.0 dB uniform in ``rho`` and 0.07 dB uniform in ``asin(rho)``.

Sized colors (``GaussianQuantizers.color_classes``, the default of :mod:`gipp_jax.compress`):
a Gaussian's color error costs the image its squared size in pixels (the integral of its
kernel squared, ``pi sqrt(det cov)``), so a uniform color step spends the same precision on
a Gaussian of one pixel and on one of a thousand. Each Gaussian's color step is the color
quantizer's divided by a weight ``2^(t / 2)``, ``t`` in ``[-4, 4]`` a class read off its
covariance-diagonal codes alone (:func:`color_weights`): half an octave of weight per
``span`` codes of ``a`` and ``c`` together, which :func:`color_classes_for` sets so that the
weight grows as the square root of the Gaussian's size. Codes stay integers in ``[0, (2^b
- 1) * w]``: the class is integer arithmetic on codes, the same in every encoder and decoder.

Carriers (:class:`CarrierQuantizer`): a primitive's cosine carrier ``(kx, ky, phi)`` on a
fixed grid, nothing learned: frequencies in steps of ``2^-frequency_bits`` cycles per pixel
(``kx`` in ``[0, 0.5]``, ``ky`` in ``[-0.5, 0.5]``: ``(k, phi)`` and ``(-k, -phi)`` draw the
same atom, so ``kx >= 0`` saves a bit), phases in ``2^phase_bits`` steps around the circle,
wrapping. The codes ``(0, 0, 0)`` are the plain Gaussian, so a plain primitive needs no
carrier codes at all (the file's flag says which carry one).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax.attributes import COLOR, COVARIANCE_DIAGONAL, DEPTHS, LEARNED_GROUPS, AttributeGroup, depth_of
from gipp_jax.bitstream import MAX_CARRIER_BITS, SIZED_COLOR_EXTRA_BITS
from gipp_jax.entropy import soft_bits
from gipp_jax.model import check_color_activation

LOG_EPS = 1e-6
HALF_MIN = 2.0 ** -14  # the smallest normal float16: the least scale a quantizer uses
HALF_MAX = float(jnp.finfo(jnp.float16).max)
MAX_CORRELATION = 0.999
DEFAULT_BITS = {"position": 12, "covariance": 10, "color": 6}  # the reference's; QAT trains at these
MAX_POSITION_BITS = 12  # what the file format stores
# Sized colors' classes t in [-4, 4]: weights 2^(t / 2) in [1/4, 4], codes 2 bits deeper.
COLOR_CLASS_LIMIT = 2 * SIZED_COLOR_EXTRA_BITS
# 2^(t / 2) for t = -4..4 from exact powers of two and sqrt(2) (correctly rounded).
COLOR_WEIGHTS = np.array([2.0 ** (t // 2) * (math.sqrt(2.0) if t % 2 else 1.0)
                          for t in range(-COLOR_CLASS_LIMIT, COLOR_CLASS_LIMIT + 1)], np.float32)
COLOR_SIZE_EXPONENT = 0.5  # a color step shrinks as size^-0.5 (size: the geometric mean of the std devs)


# Carriers: steps of 1/256 cycle per pixel and 16 phases. A carrier so coded costs the
# render more than at 1/1024 and 64 phases (steps of 1/256 alone took 0.30 dB off a fitted
# full-size kodim08 before any refinement), but QAT and the code search win most of it back
# and the bits saved buy primitives:
# files of 10 / 6 re-quantized to 8 / 4 and refined (kodim01 at 0.5 bpp, kodim03 at 0.15,
# kodim06 at 1) were 4.3-5.1% smaller for 0.08-0.12 dB, where the rate's slope prices those
# bits at 0.16-0.22 dB; 9 / 5, 8 / 5, 9 / 4, 8 / 3 and 7 / 4 each did less
# (docs/studies/carriers.md).
FREQUENCY_BITS = 8
PHASE_BITS = 4
MAX_FREQUENCY_BITS, MAX_PHASE_BITS = MAX_CARRIER_BITS  # what the file format stores


def position_bits_for(height: int, width: int, *, bits: int = 10, side: int = 192) -> int:
    """Position depth for an image of ``height`` x ``width`` pixels that keeps the step, in
    pixels, that ``bits`` bits have on an image whose longer side is ``side`` (10 bits on
    192 px: 0.19 px): one bit more per doubling of the longer side, within
    1..:data:`MAX_POSITION_BITS`. A position code spans the whole side, so a fixed depth is
    4x coarser in pixels on a 4x larger image, and the rendered error grows with the step
    relative to the Gaussians' widths."""
    shift = round(math.log2(max(height, width, 1) / side))
    return min(max(bits + shift, 1), MAX_POSITION_BITS)


# Colors without the sigmoid (a fit's own, unbounded: a compressed Kodak image's span about
# [-1.6, 0.7] against [0, 0.6] after the sigmoid) take this many bits more than sigmoid ones,
# for about the same step; the entropy coder charges little for the rarely used outer levels.
IDENTITY_COLOR_EXTRA_BITS = 2


def color_bits_for(activation: str, sigmoid_bits: int) -> int:
    """The color depth for colors with ``activation`` ("identity" or "sigmoid") that keeps
    the step of ``sigmoid_bits`` bits on sigmoid colors, within 1..16."""
    extra = IDENTITY_COLOR_EXTRA_BITS if check_color_activation(activation) == "identity" else 0
    return min(max(sigmoid_bits + extra, 1), 16)


# A position step of at most this fraction of the mean spacing between Gaussians: on full-size
# Kodak files one position bit less (the step doubled) cost 0.01-0.02 dB at a spacing of 45
# steps and 0.1 dB at 24 (tools/depth_probe.py, docs/studies/compression.md).
STEPS_PER_SPACING = 32


def position_bits_for_density(height: int, width: int, num_gaussians: int) -> int:
    """The least position depth whose step, in pixels, is at most 1/:data:`STEPS_PER_SPACING`
    of the mean spacing ``sqrt(H W / N)`` of ``num_gaussians`` Gaussians on a ``height`` x
    ``width`` image, within 1..:data:`MAX_POSITION_BITS`: sparse Gaussians are wide, and a
    step that is small against their width costs the rendered image little."""
    spacing = math.sqrt(height * width / max(num_gaussians, 1))
    codes = max(height, width, 1) * STEPS_PER_SPACING / spacing
    return min(max(math.ceil(math.log2(max(codes, 1.0))), 1), MAX_POSITION_BITS)


@flax.struct.dataclass
class Quantizer:
    """Per-channel scale and offset, each (C,), of a ``bits``-bit quantizer."""

    scale: jax.Array
    offset: jax.Array
    bits: int = flax.struct.field(pytree_node=False, default=8)
    log: bool = flax.struct.field(pytree_node=False, default=False)
    arcsine: bool = flax.struct.field(pytree_node=False, default=False)  # codes uniform in asin(x)

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1


def _domain(q: Quantizer, x: jax.Array) -> jax.Array:
    if q.log:
        return jnp.log(jnp.abs(x) + LOG_EPS)
    if q.arcsine:  # in [-1, 1]
        return jnp.arcsin(jnp.clip(x, -MAX_CORRELATION, MAX_CORRELATION)) * (2.0 / jnp.pi)
    return x


def _from_domain(q: Quantizer, v: jax.Array) -> jax.Array:
    if q.log:
        return jnp.exp(v) - LOG_EPS
    if q.arcsine:
        return jnp.sin(v * (jnp.pi / 2.0))
    return v


def _to_half(x: jax.Array) -> jax.Array:
    """Rounds to the nearest float16 (kept as float32); the gradient passes straight through."""
    x = jnp.clip(x, -HALF_MAX, HALF_MAX)
    return x + jax.lax.stop_gradient(x.astype(jnp.float16).astype(jnp.float32) - x)


def quantizer_parameters(q: Quantizer) -> tuple[jax.Array, jax.Array]:
    """The (scale, offset) a quantizer uses, each (C,) float32 holding float16 values;
    the scale is positive."""
    return _to_half(jnp.maximum(jnp.abs(q.scale), HALF_MIN)), _to_half(q.offset)


def init_quantizer(x: jax.Array, bits: int, *, log: bool = False, arcsine: bool = False) -> Quantizer:
    """Min/max initialisation over the rows of ``x`` (N, C):
    ``scale = (max - min) / (2^b - 1)``, ``offset = min`` (in the quantizer's domain)."""
    probe = Quantizer(jnp.ones(x.shape[1]), jnp.zeros(x.shape[1]), bits, log, arcsine)
    v = _domain(probe, x)
    lo, hi = jnp.min(v, axis=0), jnp.max(v, axis=0)
    scale = jnp.maximum(hi - lo, 1e-8) / probe.levels
    return Quantizer(scale.astype(jnp.float32), lo.astype(jnp.float32), bits, log, arcsine)


def with_bits(q: Quantizer, bits: int) -> Quantizer:
    """A ``bits``-bit quantizer on every ``2^(q.bits - bits)``-th level of ``q`` (same
    offset, scale times that power of two): re-quantizing to fewer bits without retraining."""
    if bits > q.bits:
        raise ValueError(f"cannot refine a {q.bits}-bit quantizer to {bits} bits")
    scale, offset = quantizer_parameters(q)
    return Quantizer(scale * 2.0 ** (q.bits - bits), offset, bits, q.log, q.arcsine)


def _row_steps(q: Quantizer, levels, weights: jax.Array | None):
    """``(scale, offset, top)`` a quantizer uses: its parameters and largest code (``levels``
    if given), the step divided and the largest code multiplied by each row's weight when
    ``weights`` (N,) are given (sized colors)."""
    scale, offset = quantizer_parameters(q)
    top = q.levels if levels is None else levels
    if weights is not None:
        scale, top = scale / weights[:, None], top * weights[:, None]
    return scale, offset, top


def to_codes(q: Quantizer, x: jax.Array, weights: jax.Array | None = None, levels=None) -> jax.Array:
    """(N, C) values -> (N, C) int32 codes in ``[0, 2^b - 1]`` (times each row's weight,
    with ``weights``; ``levels`` overrides ``2^b - 1`` as in :func:`fake_quantize`)."""
    scale, offset, top = _row_steps(q, levels, weights)
    v = (_domain(q, x) - offset) / scale
    return jnp.round(jnp.clip(v, 0.0, top)).astype(jnp.int32)


def from_codes(q: Quantizer, codes: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """(N, C) codes -> (N, C) reconstructed values (each row's step divided by its weight)."""
    scale, offset, _ = _row_steps(q, None, weights)
    return _from_domain(q, codes.astype(jnp.float32) * scale + offset)


def color_weights(diag_codes: jax.Array, color_classes: jax.Array) -> jax.Array:
    """(N,) float32 color-step divisors of sized colors from (N, 2) integer codes of the
    covariance diagonal and ``color_classes`` (2,) int ``(reference, span)``: class
    ``t = round((a + c - reference) / span)`` clipped to [-4, 4], weight ``2^(t / 2)``.
    Integer arithmetic only, so every decoder reads the same classes."""
    u = diag_codes[:, 0].astype(jnp.int32) + diag_codes[:, 1].astype(jnp.int32)
    ref, span = color_classes[0].astype(jnp.int32), jnp.maximum(color_classes[1].astype(jnp.int32), 1)
    t = jnp.clip(jnp.floor_divide(2 * (u - ref) + span, 2 * span), -COLOR_CLASS_LIMIT, COLOR_CLASS_LIMIT)
    return jnp.asarray(COLOR_WEIGHTS)[t + COLOR_CLASS_LIMIT]


def color_classes_for(cov_diag: Quantizer, diag_codes: jax.Array) -> jax.Array:
    """(2,) int32 ``(reference, span)`` of sized colors for Gaussians whose diagonal codes
    under ``cov_diag`` (its scale the step of those codes) are ``diag_codes`` (N, 2):
    the median code sum as the reference, and the span of codes in which a Gaussian's size
    ``(a c)^(1/4)`` grows by ``2^(1 / (2 COLOR_SIZE_EXPONENT))``, half an octave of weight."""
    scale, _ = quantizer_parameters(cov_diag)
    u = diag_codes[:, 0] + diag_codes[:, 1]
    span = jnp.round(2.0 * math.log(2.0) / (COLOR_SIZE_EXPONENT * jnp.mean(scale)))
    # At most the codes' whole range (Gaussians all of a size: one class), as files hold it.
    span = jnp.clip(span, 1.0, 2.0 * cov_diag.levels)
    return jnp.stack([jnp.round(jnp.median(u)), span]).astype(jnp.int32)


def fake_quantize(q: Quantizer, x: jax.Array, levels: jax.Array | None = None,
                  weights: jax.Array | None = None) -> jax.Array:
    """Quantize-dequantize with a straight-through rounding gradient (for training);
    differentiable w.r.t. ``x``, ``q.scale`` and ``q.offset``. ``levels`` (a () array, may
    be traced) overrides the largest code ``2^bits - 1``, so that one compiled program
    trains at several depths. ``weights`` (N,) divide each row's step and multiply its
    largest code (sized colors)."""
    scale, offset, top = _row_steps(q, levels, weights)
    v = jnp.clip((_domain(q, x) - offset) / scale, 0.0, top)
    rounded = v + jax.lax.stop_gradient(jnp.round(v) - v)
    return _from_domain(q, rounded * scale + offset)


def code_units(q: Quantizer, x: jax.Array, levels: jax.Array | None = None,
               weights: jax.Array | None = None) -> jax.Array:
    """(N, C) values in ``q``'s code units before rounding, clipped to its codes (what
    :func:`fake_quantize` rounds; differentiable w.r.t. ``x`` and ``q``'s parameters)."""
    scale, offset, top = _row_steps(q, levels, weights)
    return jnp.clip((_domain(q, x) - offset) / scale, 0.0, top)


@flax.struct.dataclass
class GaussianQuantizers:
    """The four quantizers of a Gaussian: position (2 ch), covariance diagonal (2 ch, log),
    covariance off-diagonal (1 ch: ``b``, or the correlation ``b / sqrt(a c)`` when
    ``correlation``; uniform in its arcsine when ``cov_off.arcsine``), color (3 ch)."""

    position: Quantizer
    cov_diag: Quantizer
    cov_off: Quantizer
    color: Quantizer
    correlation: bool = flax.struct.field(pytree_node=False, default=False)
    # Sized colors: (2,) int32 (reference, span) of color_weights; None: one color step.
    color_classes: jax.Array | None = None
    # The carriers' grid, for primitives with carriers; None: plain Gaussians.
    carriers: CarrierQuantizer | None = None


def _correlation(cov3: jax.Array) -> jax.Array:
    """(N, 1) ``b / sqrt(a c)`` of (N, 3) covariances (a, b, c)."""
    return cov3[:, 1:2] / jnp.sqrt(jnp.maximum(cov3[:, 0:1] * cov3[:, 2:3], 1e-30))


def _off_diagonal(qs: GaussianQuantizers, off: jax.Array, diag: jax.Array) -> jax.Array:
    """(N,) ``b`` from the decoded off-diagonal channel (N, 1) and diagonal (N, 2)."""
    if not qs.correlation:
        return off[:, 0]
    rho = jnp.clip(off[:, 0], -MAX_CORRELATION, MAX_CORRELATION)
    return rho * jnp.sqrt(diag[:, 0] * diag[:, 1])


def _group_values(correlation: bool, means, cov3, colors) -> dict[str, jax.Array]:
    """Each learned group's (N, C) values as its quantizer takes them, by group name: the
    off-diagonal channel holds ``b`` or, with ``correlation``, ``b / sqrt(a c)``."""
    return {"position": means, "cov_diag": cov3[:, 0::2],
            "cov_off": _correlation(cov3) if correlation else cov3[:, 1:2], "color": colors}


def _from_group_values(qs: GaussianQuantizers, values: dict[str, jax.Array]):
    """``(means, cov3, colors)`` from each learned group's decoded (N, C) values."""
    diag = values["cov_diag"]
    cov = jnp.stack([diag[:, 0], _off_diagonal(qs, values["cov_off"], diag), diag[:, 1]], axis=-1)
    return values["position"], cov, values["color"]


def learned_quantizers(qs: GaussianQuantizers) -> dict[str, Quantizer]:
    """``qs``' learned quantizers by group name (:data:`~gipp_jax.attributes.LEARNED_GROUPS`,
    in the file's column order): what QAT trains and the header stores."""
    return {g.name: getattr(qs, g.name) for g in LEARNED_GROUPS}


def depths_of(qs: GaussianQuantizers) -> tuple[int, ...]:
    """``qs``' bit depths ``(position, covariance, color)`` (:data:`~gipp_jax.attributes.DEPTHS`),
    as a file records them."""
    depths = {g.depth: getattr(qs, g.name).bits for g in LEARNED_GROUPS}
    return tuple(depths[d] for d in DEPTHS)


def _arcsine(group: AttributeGroup, correlation: bool, arcsine: bool) -> bool:
    return group.domain == "correlation" and correlation and arcsine


def init_gaussian_quantizers(means, cov3, colors, bits: dict | None = None, *,
                             correlation: bool = False, arcsine: bool = False,
                             sized_colors: bool = False,
                             carriers: CarrierQuantizer | None = None) -> GaussianQuantizers:
    """Min/max-initialised quantizers for these Gaussians; ``arcsine`` (with
    ``correlation`` only) codes the correlation uniformly in its arcsine; ``sized_colors``
    divides each color step by a weight of the Gaussian's size (see the module docstring);
    ``carriers``: the carriers' grid, for primitives with carriers."""
    bits = {**DEFAULT_BITS, **(bits or {})}
    values = _group_values(correlation, means, cov3, colors)
    qs = GaussianQuantizers(
        **{g.name: init_quantizer(values[g.name], depth_of(g, bits), log=g.domain == "log",
                                  arcsine=_arcsine(g, correlation, arcsine)) for g in LEARNED_GROUPS},
        correlation=correlation, carriers=carriers,
    )
    return with_color_classes(qs, cov3) if sized_colors else qs


def quantizers_from_parameters(floats, bits, correlation: bool = False, arcsine: bool = False,
                               color_classes=None, carriers: CarrierQuantizer | None = None) -> GaussianQuantizers:
    """The quantizers of a file's header: ``floats`` (16,) each learned group's scales then
    offsets, one per channel, in :data:`~gipp_jax.attributes.LEARNED_GROUPS`' order (as
    :func:`parameters_of` writes them), at depths ``bits`` ``(position, covariance, color)``."""
    f = jnp.asarray(floats, jnp.float32)
    quantizers, at = {}, 0
    for g in LEARNED_GROUPS:
        c = g.channels
        quantizers[g.name] = Quantizer(f[at:at + c], f[at + c:at + 2 * c], depth_of(g, bits), g.domain == "log",
                                       _arcsine(g, correlation, arcsine))
        at += 2 * c
    return GaussianQuantizers(**quantizers, correlation=correlation, carriers=carriers,
                              color_classes=None if color_classes is None else jnp.asarray(color_classes, jnp.int32))


def parameters_of(qs: GaussianQuantizers) -> jax.Array:
    """(16,) float32 (float16-valued) scales and offsets ``qs`` uses, each learned group's
    scales then offsets in :data:`~gipp_jax.attributes.LEARNED_GROUPS`' order: a file's header."""
    return jnp.concatenate([p for q in learned_quantizers(qs).values() for p in quantizer_parameters(q)])


def with_color_classes(qs: GaussianQuantizers, cov3: jax.Array) -> GaussianQuantizers:
    """``qs`` with sized colors' classes set for Gaussians of covariances ``cov3`` (N, 3)
    at ``qs``' covariance step (:func:`color_classes_for`)."""
    classes = color_classes_for(qs.cov_diag, to_codes(qs.cov_diag, cov3[:, 0::2]))
    return qs.replace(color_classes=classes)


def gaussian_quantizers_with_bits(qs: GaussianQuantizers, bits: dict) -> GaussianQuantizers:
    """:func:`with_bits` for each learned group (``bits`` as in :data:`DEFAULT_BITS`)."""
    return qs.replace(**{g.name: with_bits(getattr(qs, g.name), depth_of(g, bits)) for g in LEARNED_GROUPS})


def _color_weights_of(qs: GaussianQuantizers, diag_codes: jax.Array) -> jax.Array | None:
    """(N,) sized colors' weights from (N, 2) covariance-diagonal codes, or None."""
    return None if qs.color_classes is None else color_weights(diag_codes, qs.color_classes)


def _training_groups(qs: GaussianQuantizers, means, cov3, colors, levels: jax.Array | None):
    """What training quantizes, per learned group: ``(values, levels, color_weights)``, each
    group's (N, C) values by name, its largest code (None: its depth's) by name, and the
    sized colors' (N,) weights from the covariance diagonal's codes (not differentiated), or None."""
    values = _group_values(qs.correlation, means, cov3, colors)
    lv = dict(zip((g.name for g in LEARNED_GROUPS), [None] * len(LEARNED_GROUPS) if levels is None else levels))
    diagonal = COVARIANCE_DIAGONAL.name
    weights = None
    if qs.color_classes is not None:
        weights = _color_weights_of(qs, jax.lax.stop_gradient(to_codes(qs.cov_diag, values[diagonal],
                                                                        levels=lv[diagonal])))
    return values, lv, weights


def fake_quantize_gaussians(qs: GaussianQuantizers, means, cov3, colors, levels: jax.Array | None = None):
    """Training-time quantization of (N, 2) means, (N, 3) covariances, (N, 3) colors.
    ``levels``: optionally the (4,) largest codes of the learned groups (position,
    covariance diagonal, off-diagonal, color), overriding the quantizers' depths (see
    :func:`fake_quantize`)."""
    values, lv, weights = _training_groups(qs, means, cov3, colors, levels)
    return _from_group_values(qs, {g.name: fake_quantize(getattr(qs, g.name), values[g.name], lv[g.name],
                                                         weights if g is COLOR else None) for g in LEARNED_GROUPS})


def estimated_bits(qs: GaussianQuantizers, means, cov3, colors, active: jax.Array, height: int, width: int,
                   levels: jax.Array | None = None) -> jax.Array:
    """A differentiable estimate of the payload bits a file of the ``active`` (N,) rows of
    these Gaussians would spend at ``qs`` (``levels`` as in :func:`fake_quantize_gaussians`),
    for a rate term in training. Each covariance and color channel by
    :func:`~gipp_jax.entropy.soft_bits` of its values in code units (green and blue as the
    file codes them: residuals of their least-squares prediction from the channels before
    them); the positions as the file's sorted Morton gaps cost ``N`` points scattered over
    the image's ``(W / step_x) (H / step_y)`` position codes, ``log2(e codes / N)`` bits each.
    Carriers are not counted."""
    values, lv, weights = _training_groups(qs, means, cov3, colors, levels)
    w = active.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    step, _ = quantizer_parameters(qs.position)
    codes = float(height) * float(width) / (step[0] * step[1])
    bits = n * jnp.log2(jnp.maximum(math.e * codes / n, 1.0))
    for g in LEARNED_GROUPS:
        if g.depth == "position":
            continue
        q = getattr(qs, g.name)
        size = (1 << q.bits) << (SIZED_COLOR_EXTRA_BITS if g is COLOR and weights is not None else 0)
        v = code_units(q, values[g.name], lv[g.name], weights if g is COLOR else None)
        if g is COLOR:
            v = jnp.stack([v[:, 0], *_color_residuals(v, w)], axis=1) + jnp.array([0.0, size - 1.0, size - 1.0])
        for c in range(g.channels):
            alphabet = 2 * size - 1 if g is COLOR and c > 0 else size
            bits = bits + soft_bits(v[:, c], alphabet, w)
    return bits


def _color_residuals(v: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Green's and blue's (N,) residuals of their weighted least-squares prediction from
    the channels before them (``g ~ r``, ``b ~ r, g``) in code units; the coefficients are
    not differentiated, as a file's header fixes them."""
    fixed = jax.lax.stop_gradient(v)

    def residual(target: int, inputs: list[int]) -> jax.Array:
        design = jnp.stack([jnp.ones_like(w)] + [fixed[:, i] for i in inputs], axis=1)
        gram = design.T @ (design * w[:, None]) + 1e-6 * jnp.eye(design.shape[1])
        coef = jnp.linalg.solve(gram, design.T @ (fixed[:, target] * w))
        return v[:, target] - jnp.stack([jnp.ones_like(w)] + [v[:, i] for i in inputs], axis=1) @ coef

    return residual(1, [0]), residual(2, [0, 1])


def quantizer_levels(qs: GaussianQuantizers) -> jax.Array:
    """(4,) float32 largest codes of ``qs``' learned quantizers (position, covariance
    diagonal, off-diagonal, color): the ``levels`` argument of :func:`fake_quantize_gaussians`."""
    return jnp.array([q.levels for q in learned_quantizers(qs).values()], jnp.float32)


def tagged_with_bits(qs: GaussianQuantizers, bits: dict) -> GaussianQuantizers:
    """``qs`` with its quantizers' recorded depths set to ``bits`` (as in
    :data:`DEFAULT_BITS`), scales and offsets unchanged: not a re-quantization
    (:func:`gaussian_quantizers_with_bits` is), only the static label that a compiled
    program is keyed on and a file records."""
    return qs.replace(**{g.name: getattr(qs, g.name).replace(bits=depth_of(g, bits)) for g in LEARNED_GROUPS})


def gaussian_codes(qs: GaussianQuantizers, means, cov3, colors) -> jax.Array:
    """(N, 8) int32 codes: x, y, a, c, b (or the correlation), r, g, b (each learned
    group's columns, :mod:`gipp_jax.attributes`)."""
    values = _group_values(qs.correlation, means, cov3, colors)
    diag = to_codes(qs.cov_diag, values[COVARIANCE_DIAGONAL.name])
    weights = _color_weights_of(qs, diag)
    return jnp.concatenate([diag if g is COVARIANCE_DIAGONAL else
                            to_codes(getattr(qs, g.name), values[g.name], weights if g is COLOR else None)
                            for g in LEARNED_GROUPS], axis=1)


def gaussians_from_codes(qs: GaussianQuantizers, codes: jax.Array):
    """Inverse of :func:`gaussian_codes`: ``(means, cov3, colors)``."""
    weights = _color_weights_of(qs, codes[:, COVARIANCE_DIAGONAL.span])
    return _from_group_values(qs, {g.name: from_codes(getattr(qs, g.name), codes[:, g.span],
                                                      weights if g is COLOR else None) for g in LEARNED_GROUPS})


@flax.struct.dataclass
class CarrierQuantizer:
    """The fixed grid of carriers ``(kx, ky, phi)`` (see the module docstring): no learned
    parameters, only its depths."""

    frequency_bits: int = flax.struct.field(pytree_node=False, default=FREQUENCY_BITS)
    phase_bits: int = flax.struct.field(pytree_node=False, default=PHASE_BITS)

    @property
    def frequency_top(self) -> int:
        """The largest ``|code|`` of a frequency: 0.5 cycle per pixel."""
        return 1 << (self.frequency_bits - 1)

    @property
    def phase_levels(self) -> int:
        return 1 << self.phase_bits

    def validate(self) -> CarrierQuantizer:
        if not (1 <= self.frequency_bits <= MAX_FREQUENCY_BITS and 1 <= self.phase_bits <= MAX_PHASE_BITS):
            raise ValueError(f"carrier depths must be in 1..{MAX_FREQUENCY_BITS} (frequency) and "
                             f"1..{MAX_PHASE_BITS} (phase)")
        return self


def canonical_carriers(carriers: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(carriers', sign)``: (N, 3) carriers with ``kx >= 0`` (and ``ky >= 0`` where
    ``kx = 0``), each row the same atom as before, and the (N,) sign (+-1) it was multiplied by."""
    kx, ky = carriers[:, 0], carriers[:, 1]
    sign = jnp.where((kx < 0) | ((kx == 0) & (ky < 0)), -1.0, 1.0).astype(carriers.dtype)
    return carriers * sign[:, None], sign


def carrier_codes(cq: CarrierQuantizer, carriers: jax.Array) -> jax.Array:
    """(N, 3) carriers -> (N, 3) int32 codes ``(kx, ky, phi)``: ``kx`` in ``[0, top]``,
    ``ky`` in ``[-top, top]`` (``top`` = :attr:`CarrierQuantizer.frequency_top`), ``phi``
    in ``[0, 2^phase_bits)``; canonical (``ky >= 0`` where ``kx = 0``). ``(0, 0, 0)`` is the
    plain Gaussian's."""
    c, _ = canonical_carriers(jnp.asarray(carriers, jnp.float32))
    step, top, levels = 2.0 ** -cq.frequency_bits, cq.frequency_top, cq.phase_levels
    kx = jnp.clip(jnp.round(c[:, 0] / step), 0, top).astype(jnp.int32)
    ky = jnp.clip(jnp.round(c[:, 1] / step), -top, top).astype(jnp.int32)
    phi = jnp.mod(jnp.round(c[:, 2] * (levels / (2.0 * jnp.pi))).astype(jnp.int32), levels)
    flip = (kx == 0) & (ky < 0)  # canonical again where kx rounded to zero
    return jnp.stack([kx, jnp.where(flip, -ky, ky), jnp.where(flip, jnp.mod(-phi, levels), phi)], axis=-1)


def carriers_from_codes(cq: CarrierQuantizer, codes: jax.Array) -> jax.Array:
    """(N, 3) codes -> (N, 3) float32 carriers, phases in ``[-pi, pi)``."""
    codes = jnp.asarray(codes, jnp.int32)
    step, levels = 2.0 ** -cq.frequency_bits, cq.phase_levels
    phi = jnp.where(codes[:, 2] >= levels // 2, codes[:, 2] - levels, codes[:, 2])
    return jnp.stack([codes[:, 0] * step, codes[:, 1] * step, phi * (2.0 * jnp.pi / levels)],
                     axis=-1).astype(jnp.float32)


def fake_quantize_primitives(qs: GaussianQuantizers, attributes: tuple, levels: jax.Array | None = None) -> tuple:
    """Training-time quantization of a model's attributes ``(means, cov3, colors)`` or, for
    primitives with carriers, ``(means, cov3, colors, carriers)``: each group on its
    quantizer (:func:`fake_quantize_gaussians`, ``levels`` as there) or grid
    (:func:`fake_quantize_carriers`)."""
    quantized = tuple(fake_quantize_gaussians(qs, *attributes[:3], levels=levels))
    return quantized + tuple(fake_quantize_carriers(qs.carriers, c) for c in attributes[3:])


def fake_quantize_carriers(cq: CarrierQuantizer, carriers: jax.Array) -> jax.Array:
    """Training-time quantization of (N, 3) carriers: the values the codes decode to, with
    a straight-through gradient (through the canonical sign flip)."""
    c, _ = canonical_carriers(carriers)
    return c + jax.lax.stop_gradient(carriers_from_codes(cq, carrier_codes(cq, carriers)) - c)
