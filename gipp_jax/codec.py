"""The ``.gipp`` codec: a model's Gaussians to a file's codes and back.

:func:`model_codes` quantizes a model with its quantizers into what :mod:`gipp_jax.bitstream`
writes; :func:`file_gaussians` is the decoder's view of a file, and :func:`decode_image`
renders it. The encoder (:mod:`gipp_jax.compress`) and the refinement of codes
(:mod:`gipp_jax.refine`) both build on these.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax import bitstream
from gipp_jax import model as model_lib
from gipp_jax import quantize as q_lib
from gipp_jax.densify import is_positive_definite
from gipp_jax.raster import model_attributes, padded_rows, render_triples, scale_carriers, scale_gaussians


def compact(model: model_lib.GaussianModel) -> model_lib.GaussianModel:
    """``model`` with its active rows only (a host-side change of shape)."""
    keep = np.flatnonzero(np.asarray(model.active))
    # Taken in NumPy: op by op in JAX, every new count compiled its own gathers.
    rows = {k: jnp.asarray(np.asarray(getattr(model, k))[keep])
            for k in ("means", "cov_params", "colors", "filter_var", "carriers") if getattr(model, k) is not None}
    return model.replace(**rows, active=jnp.ones(keep.size, bool))


def attributes(model: model_lib.GaussianModel):
    """The attributes a file codes: pixel centers, covariances ``(a, b, c)`` and colors in
    [0, 1], what the renderer draws (:func:`~gipp_jax.raster.model_attributes`)."""
    return model_attributes(model)


def header_floats(qs: q_lib.GaussianQuantizers) -> np.ndarray:
    """The 16 (float16-valued) parameters the quantizers use, in the header's order
    (:func:`~gipp_jax.quantize.parameters_of`)."""
    return np.asarray(q_lib.parameters_of(qs), np.float32)


def quantizers_from_header(floats: np.ndarray, bits, correlation: bool = False, arcsine: bool = False,
                            color_classes: tuple[int, int] | None = None) -> q_lib.GaussianQuantizers:
    """The quantizers a header's 16 floats and flags describe, at depths ``bits``."""
    return q_lib.quantizers_from_parameters(floats, bits, correlation, arcsine, color_classes)


def file_quantizers(data: bitstream.Encoded) -> q_lib.GaussianQuantizers:
    """The quantizers a decoded (or to-be-encoded) file's header describes."""
    qs = quantizers_from_header(data.quantizers, data.bits, data.correlation, data.arcsine, data.color_classes)
    return qs if data.carrier_bits is None else qs.replace(carriers=q_lib.CarrierQuantizer(*data.carrier_bits))


def file_carriers(data: bitstream.Encoded) -> np.ndarray | None:
    """A file's (N, 3) carriers ``(kx, ky, phi)`` as the decoder sees them (NumPy float32),
    or None for a file of plain Gaussians."""
    if data.carriers is None:
        return None
    codes, = padded_rows(np.asarray(data.carriers, np.int32))
    carriers = decode_carriers(q_lib.CarrierQuantizer(*data.carrier_bits), codes)
    return np.asarray(carriers)[:data.codes.shape[0]]


@jax.jit
def decode_carriers(cq: q_lib.CarrierQuantizer, codes: jax.Array) -> jax.Array:
    """(N, 3) carrier codes decoded on ``cq``'s grid (one program per N)."""
    return q_lib.carriers_from_codes(cq, codes)


def file_gaussians(data: bitstream.Encoded):
    """A file's Gaussians as the decoder sees them: ``(means, cov3, colors)``, (N, 2),
    (N, 3) ``(a, b, c)`` and (N, 3) NumPy float32 arrays, in pixels and [0, 1]. Decoded in
    one program per bucket of rows (:func:`~gipp_jax.raster.padded_rows`), not op by op per N."""
    codes, = padded_rows(np.asarray(data.codes, np.int32))
    decoded = decode_codes(file_quantizers(data), codes)[:3]
    return tuple(np.asarray(x)[:data.codes.shape[0]] for x in decoded)


@jax.jit
def decode_codes(qs: q_lib.GaussianQuantizers, codes: jax.Array):
    """(N, 8) int32 codes decoded with ``qs`` (one program): (N, 2) means, (N, 3)
    covariances ``(a, b, c)``, (N, 3) colors and whether each covariance is positive definite."""
    means, cov3, colors = q_lib.gaussians_from_codes(qs, codes)
    return means, cov3, colors, is_positive_definite(cov3)


@jax.jit
def _codes_and_definite(qs: q_lib.GaussianQuantizers, means, cov3, colors):
    """(N, 8) codes of Gaussians given as (N, 2) means, (N, 3) covariances ``(a, b, c)`` and
    (N, 3) colors, and whether each decodes positive definite."""
    codes = q_lib.gaussian_codes(qs, means, cov3, colors)
    return codes, decode_codes(qs, codes)[3]


@jax.jit
def _model_codes_and_definite(model: model_lib.GaussianModel, qs: q_lib.GaussianQuantizers):
    return _codes_and_definite(qs, *attributes(model))


def _as_stored(qs: q_lib.GaussianQuantizers, bits) -> tuple[np.ndarray, tuple | None, q_lib.GaussianQuantizers]:
    """``qs`` as a file stores them at depths ``bits``: the header's floats, the sized colors'
    classes and the quantizers those decode to (float16 steps and offsets)."""
    floats = header_floats(qs)
    classes = None if qs.color_classes is None else tuple(int(v) for v in np.asarray(qs.color_classes))
    return floats, classes, quantizers_from_header(floats, bits, qs.correlation, qs.cov_off.arcsine, classes)


def model_codes(model: model_lib.GaussianModel, qs: q_lib.GaussianQuantizers) -> bitstream.Encoded:
    """A model's active Gaussians quantized with ``qs`` (at the quantizers' own bit depths),
    ready for :func:`bitstream.encode`; those no longer positive definite are dropped."""
    model = compact(model)
    bits = q_lib.depths_of(qs)
    arcsine = qs.cov_off.arcsine
    cq = qs.carriers
    floats, classes, qs = _as_stored(qs, bits)
    codes, definite = (np.asarray(v) for v in _model_codes_and_definite(model, qs))
    data = bitstream.Encoded(model.height, model.width, bits, floats, codes, qs.correlation, arcsine, classes)
    if cq is not None and model.carriers is not None:
        data = dataclasses.replace(data, carriers=np.asarray(_carrier_codes(cq, model.carriers)),
                                   carrier_bits=(cq.frequency_bits, cq.phase_bits))
    return data.take(definite)


@jax.jit
def _carrier_codes(cq: q_lib.CarrierQuantizer, carriers: jax.Array) -> jax.Array:
    return q_lib.carrier_codes(cq, carriers)


def coarser_codes(data: bitstream.Encoded, factor: float) -> bitstream.Encoded:
    """``data``'s Gaussians as decoded, coded again with every quantizer's step ``factor``
    (>= 1) times as large, offsets and bit depths kept (sized colors' classes set again for
    the coarser covariance step): the same Gaussians in fewer bits, each attribute moved by
    at most half a coarse step. Gaussians no longer positive definite are dropped."""
    qs = file_quantizers(data)
    means, cov3, colors = file_gaussians(data)
    coarse = qs.replace(**{name: q.replace(scale=q.scale * factor) for name, q in q_lib.learned_quantizers(qs).items()})
    if coarse.color_classes is not None:
        coarse = q_lib.with_color_classes(coarse, jnp.asarray(cov3))
    floats, classes, coarse = _as_stored(coarse, data.bits)
    n = data.codes.shape[0]
    codes, definite = (np.asarray(v)[:n] for v in _codes_and_definite(coarse, *padded_rows(means, cov3, colors)))
    # The carriers' grid is fixed: their codes stay.
    return dataclasses.replace(data, quantizers=floats, codes=codes, color_classes=classes).take(definite)


def encode_model(model: model_lib.GaussianModel, qs: q_lib.GaussianQuantizers) -> bytes:
    """Quantizes a model's active Gaussians with ``qs`` and serialises them."""
    return bitstream.encode(model_codes(model, qs))


def decode_image(blob: bytes, scale: float = 1.0) -> np.ndarray:
    """Renders a ``.gipp`` file's bytes: (round(H * scale), round(W * scale), 3) in [0, 1].
    Raises :class:`~gipp_jax.bitstream.FormatError` for bytes that are not such a file."""
    data = bitstream.decode(blob)
    means, cov3, colors = file_gaussians(data)
    height = max(1, round(data.height * scale))
    width = max(1, round(data.width * scale))
    sx, sy = width / data.width, height / data.height
    means, cov3 = scale_gaussians(means, cov3, sx, sy)
    carriers = scale_carriers(file_carriers(data), sx, sy)
    return np.clip(np.asarray(render_triples(means, cov3, colors, height, width, carriers=carriers)), 0.0, 1.0)


