"""Learnable scalar quantizers (LSQ+) for Gaussian attributes, as pure functions.

A quantizer maps a channel to integer codes ``clip(round((f(x) - offset) / scale), 0, 2^b - 1)``
and back to ``f^-1(code * scale + offset)``, with ``f`` the identity (LSQ+) or
``log(|x| + 1e-6)`` (the log quantizer of the covariance diagonal). ``scale`` and ``offset``
are learned; rounding passes its gradient straight through.

The reference's split, used by :func:`init_gaussian_quantizers`:

* position: LSQ+, 12 bits, per channel (x, y);
* covariance (the *filtered* one, so the decoder never needs the filter variance): the
  diagonal ``(a, c)`` with the log quantizer, the off-diagonal ``b`` with LSQ+, 10 bits;
* color (after the sigmoid): LSQ+, 6 bits.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

LOG_EPS = 1e-6
DEFAULT_BITS = {"position": 12, "covariance": 10, "color": 6}


@flax.struct.dataclass
class Quantizer:
    """Per-channel scale and offset, each (C,), of a ``bits``-bit quantizer."""

    scale: jax.Array
    offset: jax.Array
    bits: int = flax.struct.field(pytree_node=False, default=8)
    log: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1


def _domain(q: Quantizer, x: jax.Array) -> jax.Array:
    return jnp.log(jnp.abs(x) + LOG_EPS) if q.log else x


def _from_domain(q: Quantizer, v: jax.Array) -> jax.Array:
    return jnp.exp(v) - LOG_EPS if q.log else v


def _safe_scale(q: Quantizer) -> jax.Array:
    return jnp.maximum(jnp.abs(q.scale), 1e-12)


def init_quantizer(x: jax.Array, bits: int, *, log: bool = False) -> Quantizer:
    """Min/max initialisation over the rows of ``x`` (N, C):
    ``scale = (max - min) / (2^b - 1)``, ``offset = min`` (in the quantizer's domain)."""
    probe = Quantizer(jnp.ones(x.shape[1]), jnp.zeros(x.shape[1]), bits, log)
    v = _domain(probe, x)
    lo, hi = jnp.min(v, axis=0), jnp.max(v, axis=0)
    scale = jnp.maximum(hi - lo, 1e-8) / probe.levels
    return Quantizer(scale.astype(jnp.float32), lo.astype(jnp.float32), bits, log)


def to_codes(q: Quantizer, x: jax.Array) -> jax.Array:
    """(N, C) values -> (N, C) int32 codes in ``[0, 2^b - 1]``."""
    v = (_domain(q, x) - q.offset) / _safe_scale(q)
    return jnp.round(jnp.clip(v, 0.0, q.levels)).astype(jnp.int32)


def from_codes(q: Quantizer, codes: jax.Array) -> jax.Array:
    """(N, C) codes -> (N, C) reconstructed values."""
    return _from_domain(q, codes.astype(jnp.float32) * _safe_scale(q) + q.offset)


def fake_quantize(q: Quantizer, x: jax.Array) -> jax.Array:
    """Quantize-dequantize with a straight-through rounding gradient (for training);
    differentiable w.r.t. ``x``, ``q.scale`` and ``q.offset``."""
    scale = _safe_scale(q)
    v = jnp.clip((_domain(q, x) - q.offset) / scale, 0.0, q.levels)
    rounded = v + jax.lax.stop_gradient(jnp.round(v) - v)
    return _from_domain(q, rounded * scale + q.offset)


@flax.struct.dataclass
class GaussianQuantizers:
    """The four quantizers of a Gaussian: position (2 ch), covariance diagonal (2 ch, log),
    covariance off-diagonal (1 ch), color (3 ch)."""

    position: Quantizer
    cov_diag: Quantizer
    cov_off: Quantizer
    color: Quantizer


def init_gaussian_quantizers(means, cov3, colors, bits: dict | None = None) -> GaussianQuantizers:
    bits = {**DEFAULT_BITS, **(bits or {})}
    return GaussianQuantizers(
        position=init_quantizer(means, bits["position"]),
        cov_diag=init_quantizer(cov3[:, 0::2], bits["covariance"], log=True),
        cov_off=init_quantizer(cov3[:, 1:2], bits["covariance"]),
        color=init_quantizer(colors, bits["color"]),
    )


def fake_quantize_gaussians(qs: GaussianQuantizers, means, cov3, colors):
    """Training-time quantization of (N, 2) means, (N, 3) covariances, (N, 3) colors."""
    diag = fake_quantize(qs.cov_diag, cov3[:, 0::2])
    off = fake_quantize(qs.cov_off, cov3[:, 1:2])
    cov = jnp.stack([diag[:, 0], off[:, 0], diag[:, 1]], axis=-1)
    return fake_quantize(qs.position, means), cov, fake_quantize(qs.color, colors)


def gaussian_codes(qs: GaussianQuantizers, means, cov3, colors) -> jax.Array:
    """(N, 8) int32 codes: x, y, a, c, b, r, g, b."""
    return jnp.concatenate([to_codes(qs.position, means), to_codes(qs.cov_diag, cov3[:, 0::2]),
                            to_codes(qs.cov_off, cov3[:, 1:2]), to_codes(qs.color, colors)], axis=1)


def gaussians_from_codes(qs: GaussianQuantizers, codes: jax.Array):
    """Inverse of :func:`gaussian_codes`: ``(means, cov3, colors)``."""
    means = from_codes(qs.position, codes[:, 0:2])
    diag = from_codes(qs.cov_diag, codes[:, 2:4])
    off = from_codes(qs.cov_off, codes[:, 4:5])
    cov = jnp.stack([diag[:, 0], off[:, 0], diag[:, 1]], axis=-1)
    return means, cov, from_codes(qs.color, codes[:, 5:8])
