"""The ``.gipp`` file format: quantized Gaussians, entropy-coded.

Layout (little-endian)::

    magic "GIPP" | version u8 | bits (position, covariance, color) 3 x u8 | flags u8
    height, width, count: unsigned LEB128 varints
    [sized colors' reference, span: 2 varints, with flag bit 2]
    quantizers: 16 x f16 (position scale[2] offset[2], cov-diagonal scale[2] offset[2],
                          cov-off-diagonal scale offset, color scale[3] offset[3])
    code models: 6 x (mean u8, std u8)            (a, c, b, r, g, b symbols; ``entropy.pack_priors``)
    color predictors: 5 x f16                      (g ~ p0 + p1 r;  b ~ p2 + p3 r + p4 g)
    [carriers, with flag bit 3: frequency bits u8, phase bits u8, 3 x (mean u8, std u8)]
    payload (range-coded 32-bit words, up to the checksum) | CRC-32 u32 of all before it

Flags: bit 0 set when the covariance's off-diagonal channel holds the correlation
``rho = b / sqrt(a c)`` rather than ``b`` (:mod:`gipp_jax.quantize`); bit 1 (version 5, with
bit 0 only) when its codes are uniform in ``asin(rho)`` rather than in ``rho``; bit 2 (version
6) when each Gaussian's color step is divided by a weight of its size class, read off its
covariance-diagonal codes with the header's reference and span (``quantize.color_weights``):
its color codes then run up to ``(2^b - 1) * 4``, two bits more; bit 3 (version 7) when
primitives may carry a cosine carrier (``quantize.CarrierQuantizer``). A file without carriers
is written as version 6, byte for byte what it was before carriers. Version 5 and 4 files
(bits 0-1, bit 0 only) and version 3 files (no flags byte, off-diagonal ``b``) still decode.

The quantizers use float16 parameters while they train (:mod:`gipp_jax.quantize`), so the
2-byte fields lose nothing; header and checksum take 70 to 76 bytes.

Payload, coded with ``constriction``'s range coder (a well-kept Rust library) in one stream:

* Gaussians sorted by the Morton (Z-order) code of their quantized position; positions as
  the gaps between consecutive Morton codes, each gap as its bit length followed by the
  bits below its leading one (uniform). The lengths' prior is what N uniformly scattered
  points would give (exponential gaps), so it costs no header bytes. Sorting removes the
  order information, about log2(N!) / N bits per Gaussian.
* Covariance codes, then color codes, one channel at a time; green and blue as residuals
  of a linear prediction from the channels before them (least squares, coefficients in
  the header), since a Gaussian's color channels move together.
* With carriers: a flag per primitive (carrier or plain), then the three codes ``(kx, ky,
  phi)`` of each primitive whose flag is set, one channel at a time. A plain primitive costs
  its flag alone, by the flags' adaptive frequency (below a bit; nothing in a file without
  carriers).
* Each channel is coded by an entropy model of :mod:`gipp_jax.entropy`: the positions by
  ``MortonGaps``, every other channel by a two-level block-adaptive categorical
  (``AdaptiveCategorical``) whose prior's mean and std are the header's bytes. Few
  Gaussians get the prior; many learn the channel's real shape. This module says which
  channels a file has, in which order, and which model codes each (:func:`coded_streams`).

The rate we report is this file's size in bits over the image's pixels;
:func:`cost_breakdown` says what each channel of a file costs.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np

from gipp_jax import entropy
from gipp_jax.attributes import COLOR, GAUSSIAN_COLUMNS, GAUSSIAN_GROUPS, depth_of

MAGIC = b"GIPP"
VERSION = 7
PLAIN_VERSION = 6  # what a file without carriers is written as
READABLE_VERSIONS = (3, 4, 5, 6, 7)
FLAG_CORRELATION = 1
FLAG_ARCSINE = 2
FLAG_SIZED_COLORS = 4
FLAG_CARRIERS = 8
SIZED_COLOR_EXTRA_BITS = 2  # sized color codes reach (2^b - 1) times the largest weight, 4
MAX_SIDE = 1 << 16
_HEAD = struct.Struct("<4sB3B")
_QUANT = struct.Struct("<16e")
_MODELS = struct.Struct("<12B5e")
_CARRIERS = struct.Struct("<2B6B")
MAX_CARRIER_BITS = (16, 12)  # (frequency, phase): what a file may hold
_CRC = struct.Struct("<I")
_HALF_MAX = float(np.finfo(np.float16).max)
MIN_HEADER_BYTES = _HEAD.size + 3 + _QUANT.size + _MODELS.size


class FormatError(ValueError):
    """The bytes are not a valid ``.gipp`` file (truncated, corrupted or foreign)."""


@dataclasses.dataclass
class Encoded:
    """A decoded (or to-be-encoded) file: image size, bit depths, quantizer parameters
    (16 floats in the header's order, stored as float16) and the (N, 8) int codes
    x, y, a, c, b, r, g, b (b: the off-diagonal, or its correlation); with carriers, their
    (N, 3) codes ``(kx, ky, phi)`` (``quantize.carrier_codes``; ``(0, 0, 0)``: plain) at
    depths ``carrier_bits`` (frequency, phase)."""

    height: int
    width: int
    bits: tuple[int, int, int]
    quantizers: np.ndarray
    codes: np.ndarray
    correlation: bool = False  # the off-diagonal channel holds b / sqrt(a c)
    arcsine: bool = False      # ... and its codes are uniform in asin(b / sqrt(a c))
    color_classes: tuple[int, int] | None = None  # sized colors' (reference, span)
    carriers: np.ndarray | None = None        # (N, 3) carrier codes, or None: plain Gaussians
    carrier_bits: tuple[int, int] | None = None  # (frequency, phase) depths, with carriers

    @property
    def num_carriers(self) -> int:
        """How many primitives carry a carrier (codes other than ``(0, 0, 0)``)."""
        return 0 if self.carriers is None else int(carrier_flags(self.carriers).sum())

    def rows(self) -> np.ndarray:
        """A new (N, 8) int64 array of the codes, or (N, 11) with the carrier codes after
        them: one row per primitive, its attribute groups in :mod:`gipp_jax.attributes`' columns."""
        codes = np.array(self.codes, np.int64).reshape(-1, GAUSSIAN_COLUMNS)
        if self.carriers is None:
            return codes
        return np.concatenate([codes, np.asarray(self.carriers, np.int64).reshape(-1, 3)], axis=1)

    def with_rows(self, rows: np.ndarray) -> Encoded:
        """This file with its primitives' codes replaced by ``rows`` (as :meth:`rows`)."""
        rows = np.asarray(rows)
        changed = dataclasses.replace(self, codes=rows[:, :GAUSSIAN_COLUMNS].astype(np.asarray(self.codes).dtype))
        if self.carriers is None:
            return changed
        return dataclasses.replace(changed, carriers=rows[:, GAUSSIAN_COLUMNS:].astype(np.asarray(self.carriers).dtype))

    def take(self, rows) -> Encoded:
        """The file of the primitives ``rows`` (an index array or a boolean mask) only."""
        return dataclasses.replace(self, codes=np.asarray(self.codes)[rows],
                                   carriers=None if self.carriers is None else np.asarray(self.carriers)[rows])

    @property
    def coded_bits(self) -> tuple[int, int, int]:
        """The depths of the codes themselves: the color codes of sized colors take
        :data:`SIZED_COLOR_EXTRA_BITS` more than the color quantizer's depth."""
        pos, cov, col = self.bits
        return pos, cov, col + (SIZED_COLOR_EXTRA_BITS if self.color_classes is not None else 0)


def morton(x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """Interleaves the bits of x (even) and y (odd) positions: (N,) int64."""
    out = np.zeros(x.shape, np.int64)
    for i in range(bits):
        out |= ((x.astype(np.int64) >> i) & 1) << (2 * i)
        out |= ((y.astype(np.int64) >> i) & 1) << (2 * i + 1)
    return out


def unmorton(m: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros(m.shape, np.int64)
    y = np.zeros(m.shape, np.int64)
    for i in range(bits):
        x |= ((m >> (2 * i)) & 1) << i
        y |= ((m >> (2 * i + 1)) & 1) << i
    return x, y


def _to_f16(x) -> np.ndarray:
    return np.clip(np.nan_to_num(np.asarray(x, np.float64)), -_HALF_MAX, _HALF_MAX).astype(np.float16)


def _channel_sizes(bits) -> list[int]:
    """Alphabet sizes of the six coded channels (residual channels take 2 * size - 1)."""
    _, cov_bits, col_bits = bits
    cov, col = 1 << cov_bits, 1 << col_bits
    return [cov, cov, cov, col, 2 * col - 1, 2 * col - 1]


def code_limits(bits, sized_colors: bool = False) -> np.ndarray:
    """(8,) the largest code of each column (x, y, a, c, b, r, g, b) at bit depths
    ``(position, covariance, color)`` (color codes times the largest weight with
    ``sized_colors``), from each group's depth (:mod:`gipp_jax.attributes`)."""
    top = np.zeros(GAUSSIAN_COLUMNS, np.int64)
    for group in GAUSSIAN_GROUPS:
        extra = SIZED_COLOR_EXTRA_BITS if sized_colors and group is COLOR else 0
        top[group.span] = ((1 << depth_of(group, bits)) - 1) << extra
    return top


def column_limits(data: Encoded) -> tuple[np.ndarray, np.ndarray]:
    """The least and the largest code of each column of ``data``'s rows (:meth:`Encoded.rows`):
    (8,) each, or (11,) with carriers."""
    high = code_limits(data.bits, data.color_classes is not None)
    low = np.zeros_like(high)
    if data.carriers is None:
        return low, high
    carrier_low, carrier_high = carrier_limits(data.carrier_bits)
    return np.concatenate([low, carrier_low]), np.concatenate([high, carrier_high])


def carrier_flags(carrier_codes) -> np.ndarray:
    """(N,) bool: which rows of (N, 3) carrier codes carry a carrier (not ``(0, 0, 0)``)."""
    return np.any(np.asarray(carrier_codes) != 0, axis=1)


def carrier_alphabets(carrier_bits) -> list[int]:
    """Alphabet sizes of the three carrier channels ``kx, ky, phi`` at depths ``(frequency,
    phase)`` (``ky``'s codes shifted by the largest ``|ky|`` to be non-negative)."""
    top = 1 << (carrier_bits[0] - 1)
    return [top + 1, 2 * top + 1, 1 << carrier_bits[1]]


def carrier_limits(carrier_bits) -> tuple[np.ndarray, np.ndarray]:
    """(3,) the least and (3,) the largest carrier code of ``kx, ky, phi``."""
    top = 1 << (carrier_bits[0] - 1)
    return np.array([0, -top, 0], np.int64), np.array([top, top, (1 << carrier_bits[1]) - 1], np.int64)


def header_bytes(height: int, width: int, count: int, color_classes: tuple[int, int] | None = None,
                 carriers: bool = False) -> int:
    """Bytes of a file that are not payload: the header and the checksum (``carriers``: a
    file with carriers)."""
    classes = b"".join(_varint(v) for v in color_classes) if color_classes is not None else b""
    return (_HEAD.size + 1 + len(_varint(height)) + len(_varint(width)) + len(_varint(count)) + len(classes)
            + _QUANT.size + _MODELS.size + (_CARRIERS.size if carriers else 0) + _CRC.size)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(body: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for i in range(5):
        if offset + i >= len(body):
            raise FormatError("truncated .gipp file")
        value |= (body[offset + i] & 0x7F) << (7 * i)
        if not body[offset + i] & 0x80:
            return value, offset + i + 1
    raise FormatError("invalid image size or Gaussian count")


CHANNELS = ("position", "a", "c", "b", "red", "green", "blue")  # a payload's channels, in order
CARRIER_CHANNELS = ("carrier flag", "kx", "ky", "phase")         # ... and after them, with carriers
# The carrier flags' prior: half an observation each (Krichevsky and Trofimov's estimator),
# so that the counts rule from the first block: 0.5 log2 N bits over the flags' entropy.
FLAG_PRIOR = np.array([0.5, 0.5])
FLAG_WEIGHT = 1.0


@dataclasses.dataclass(frozen=True)
class Channel:
    """One channel of a payload: its name (:data:`CHANNELS`, :data:`CARRIER_CHANNELS`), the
    entropy model that codes it (:mod:`gipp_jax.entropy`) and its symbols."""

    name: str
    model: entropy.EntropyModel
    symbols: np.ndarray


@dataclasses.dataclass(frozen=True)
class CodedStreams:
    """What a payload codes: the (N, 8) codes sorted by Morton code, and the channels in
    their order: the sorted Morton codes, one column of the covariance and color codes each
    (green and blue as residuals of their prediction), then with carriers the flags and
    each code of the flagged primitives. ``models``, ``predictors`` and ``carrier_models``
    are the header's bytes of the priors and the color predictors' coefficients."""

    codes: np.ndarray
    channels: tuple[Channel, ...]
    models: np.ndarray
    predictors: np.ndarray
    carrier_models: np.ndarray | None = None


def _gaussian_models(n: int, coded_bits, models: np.ndarray) -> list:
    """The entropy models of a payload's :data:`CHANNELS`, from its count, the depths of its
    codes and the header's bytes of the priors."""
    alphabets = _channel_sizes(coded_bits)
    return [entropy.MortonGaps(n, coded_bits[0])] + [
        entropy.AdaptiveCategorical(size, prior)
        for size, prior in zip(alphabets, entropy.unpack_priors(models, alphabets))]


def _carrier_models(carrier_bits, carrier_models: np.ndarray) -> list:
    """The entropy models of a payload's :data:`CARRIER_CHANNELS`."""
    alphabets = carrier_alphabets(carrier_bits)
    return [entropy.AdaptiveCategorical(2, FLAG_PRIOR, FLAG_WEIGHT)] + [
        entropy.AdaptiveCategorical(size, prior)
        for size, prior in zip(alphabets, entropy.unpack_priors(carrier_models, alphabets))]


def coded_streams(data: Encoded) -> CodedStreams:
    """The channels :func:`encode` codes for ``data`` (raises ValueError for codes outside
    their bit depths)."""
    pos_bits, cov_bits, col_bits = data.coded_bits
    codes = np.asarray(data.codes, np.int64).reshape(-1, 8)
    if codes.shape[0] and ((codes < 0) | (codes > code_limits(data.bits, data.color_classes is not None))).any():
        raise ValueError(f"codes outside their bit depths {pos_bits}/{cov_bits}/{col_bits}")
    carriers = _checked_carriers(data, codes.shape[0])
    m = morton(codes[:, 0], codes[:, 1], pos_bits)
    order = np.argsort(m, kind="stable")
    codes, m = codes[order], m[order]

    predictors = _to_f16(entropy.fit_color_predictors(codes[:, 5:8]))
    col_size = 1 << col_bits
    symbols = codes[:, 2:8].copy()
    for j in (1, 2):
        symbols[:, 3 + j] = codes[:, 5 + j] - entropy.predict_color(codes[:, 5:8], j, predictors, col_size) + col_size - 1
    models = entropy.pack_priors(symbols, _channel_sizes(data.coded_bits))
    columns = [m] + list(symbols.T)
    channels = tuple(map(Channel, CHANNELS, _gaussian_models(codes.shape[0], data.coded_bits, models), columns))
    if carriers is None:
        return CodedStreams(codes, channels, models, predictors)
    carriers = carriers[order]
    flags = carrier_flags(carriers).astype(np.int64)
    carrier_symbols = carriers[flags == 1] - carrier_limits(data.carrier_bits)[0]
    carrier_models = entropy.pack_priors(carrier_symbols, carrier_alphabets(data.carrier_bits))
    channels += tuple(map(Channel, CARRIER_CHANNELS, _carrier_models(data.carrier_bits, carrier_models),
                          [flags] + list(carrier_symbols.T)))
    return CodedStreams(codes, channels, models, predictors, carrier_models)


def _checked_carriers(data: Encoded, n: int) -> np.ndarray | None:
    """``data``'s (N, 3) carrier codes as int64, or None; ValueError where they do not fit
    their depths."""
    if data.carriers is None:
        return None
    if data.carrier_bits is None:
        raise ValueError("carrier codes without carrier depths")
    carriers = np.asarray(data.carriers, np.int64)
    lo, hi = carrier_limits(data.carrier_bits)
    if carriers.shape != (n, 3) or ((carriers < lo) | (carriers > hi)).any():
        raise ValueError(f"carrier codes outside their depths {data.carrier_bits[0]}/{data.carrier_bits[1]}")
    return carriers


def cost_breakdown(data: Encoded) -> dict[str, float]:
    """Bits each channel of ``data``'s payload costs (:data:`CHANNELS`: ``position`` is the
    Morton gaps, lengths and raw bits; ``a, c, b`` the covariance codes, ``b`` its
    off-diagonal; ``green`` and ``blue`` their residuals), as its entropy model's ``bits``
    (:func:`encode` codes with the same models, so the payload is their sum within the
    range coder's few words), and ``header``, the bytes around the payload, in bits. A file
    with carriers adds :data:`CARRIER_CHANNELS`: the flags and each code."""
    streams = coded_streams(data)
    extra = header_bytes(data.height, data.width, streams.codes.shape[0], data.color_classes,
                         data.carriers is not None)
    return {**{c.name: c.model.bits(c.symbols) for c in streams.channels}, "header": 8.0 * extra}


def encode(data: Encoded) -> bytes:
    """Serialises ``data`` (its codes in any order; they are sorted here)."""
    import constriction

    pos_bits, cov_bits, col_bits = data.bits
    streams = coded_streams(data)
    coder = constriction.stream.queue.RangeEncoder()
    for channel in streams.channels:
        channel.model.encode(coder, channel.symbols)
    carriers = streams.carrier_models is not None
    carrier_head = _CARRIERS.pack(*data.carrier_bits, *streams.carrier_models.tolist()) if carriers else b""
    payload = np.asarray(coder.get_compressed(), np.uint32).astype("<u4").tobytes()

    sized = data.color_classes is not None
    head = (_HEAD.pack(MAGIC, VERSION if carriers else PLAIN_VERSION, pos_bits, cov_bits, col_bits)
            + bytes([(FLAG_CORRELATION if data.correlation else 0)
                     | (FLAG_ARCSINE if data.correlation and data.arcsine else 0)
                     | (FLAG_SIZED_COLORS if sized else 0)
                     | (FLAG_CARRIERS if carriers else 0)])
            + _varint(data.height) + _varint(data.width) + _varint(streams.codes.shape[0])
            + (b"".join(_varint(int(v)) for v in data.color_classes) if sized else b"")
            + _QUANT.pack(*_to_f16(data.quantizers).tolist())
            + _MODELS.pack(*streams.models.tolist(), *streams.predictors.tolist())
            + carrier_head
            + payload)
    return head + _CRC.pack(zlib.crc32(head))


def decode(blob: bytes) -> Encoded:
    """Parses a ``.gipp`` file; raises :class:`FormatError` with a one-line reason."""
    if blob[:4] != MAGIC:
        raise FormatError("not a .gipp file")
    if len(blob) < MIN_HEADER_BYTES + _CRC.size:
        raise FormatError("truncated .gipp file")
    body, (crc,) = blob[:-_CRC.size], _CRC.unpack(blob[-_CRC.size:])
    if zlib.crc32(body) != crc:
        raise FormatError("checksum mismatch: the file is corrupted or truncated")
    _, version, pos_bits, cov_bits, col_bits = _HEAD.unpack_from(body, 0)
    if version not in READABLE_VERSIONS:
        raise FormatError(f"unsupported .gipp version {version} (this reader knows "
                          f"{', '.join(map(str, READABLE_VERSIONS))})")
    if not (1 <= pos_bits <= 12 and 1 <= cov_bits <= 16 and 1 <= col_bits <= 16):
        raise FormatError("invalid bit depths")
    offset, flags = _HEAD.size, 0
    if version >= 4:
        flags, offset = body[offset], offset + 1
        known = (FLAG_CORRELATION | (FLAG_ARCSINE if version >= 5 else 0)
                 | (FLAG_SIZED_COLORS if version >= 6 else 0) | (FLAG_CARRIERS if version >= 7 else 0))
        if flags & ~known or (flags & FLAG_ARCSINE and not flags & FLAG_CORRELATION):
            raise FormatError(f"unknown flags {flags:#04x}")
    height, offset = _read_varint(body, offset)
    width, offset = _read_varint(body, offset)
    n, offset = _read_varint(body, offset)
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or n > 16 * height * width + 16:
        raise FormatError("invalid image size or Gaussian count")
    color_classes = None
    if flags & FLAG_SIZED_COLORS:
        ref, offset = _read_varint(body, offset)
        span, offset = _read_varint(body, offset)
        if not (0 <= ref <= 2 * ((1 << cov_bits) - 1) and 1 <= span <= 2 * ((1 << cov_bits) - 1)):
            raise FormatError("invalid sized-color classes")
        color_classes = (ref, span)
    if offset + _QUANT.size + _MODELS.size > len(body):
        raise FormatError("truncated .gipp file")
    quantizers = np.array(_QUANT.unpack_from(body, offset), np.float32)
    offset += _QUANT.size
    fields = _MODELS.unpack_from(body, offset)
    offset += _MODELS.size
    models, predictors = np.array(fields[:12], np.uint8), np.array(fields[12:], np.float16)
    carrier_bits = carrier_models = None
    if flags & FLAG_CARRIERS:
        if offset + _CARRIERS.size > len(body):
            raise FormatError("truncated .gipp file")
        fields = _CARRIERS.unpack_from(body, offset)
        offset += _CARRIERS.size
        carrier_bits, carrier_models = tuple(fields[:2]), np.array(fields[2:], np.uint8)
        if not (1 <= carrier_bits[0] <= MAX_CARRIER_BITS[0] and 1 <= carrier_bits[1] <= MAX_CARRIER_BITS[1]):
            raise FormatError("invalid carrier depths")
    length = len(body) - offset
    if length % 4:
        raise FormatError("payload length does not match the file size")
    # Every Gaussian costs a few bits at least (each symbol's probability stays below
    # 0.99): a count far beyond the payload is a forged header, not a file to decode.
    if n > 64 * length + 64:
        raise FormatError("Gaussian count does not match the payload")
    if not (np.isfinite(quantizers).all() and np.isfinite(predictors).all()):
        raise FormatError("invalid quantizer or model parameters")
    bits = (pos_bits, cov_bits, col_bits)
    try:
        codes, carriers = _decode_payload(body[offset:], n, bits, models, predictors, color_classes is not None,
                                          carrier_bits, carrier_models)
    except FormatError:
        raise
    except Exception as err:  # the entropy decoder's own complaints about garbage
        raise FormatError(f"corrupt payload ({type(err).__name__})") from None
    return Encoded(int(height), int(width), bits, quantizers, codes, bool(flags & FLAG_CORRELATION),
                   bool(flags & FLAG_ARCSINE), color_classes, carriers, carrier_bits)


def _decode_payload(payload: bytes, n: int, bits, models, predictors, sized_colors: bool,
                    carrier_bits=None, carrier_models=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The (N, 8) codes and, with ``carrier_bits``, the (N, 3) carrier codes of a payload."""
    import constriction

    top = code_limits(bits, sized_colors)
    if sized_colors:
        bits = (bits[0], bits[1], bits[2] + SIZED_COLOR_EXTRA_BITS)
    pos_bits, _, col_bits = bits
    coder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4").astype(np.uint32))
    positions, *columns = _gaussian_models(n, bits, models)
    m = positions.decode(coder, n)
    if n and m[-1] >= (1 << (2 * pos_bits)):
        raise FormatError("corrupt payload (positions out of range)")
    codes = np.zeros((n, 8), np.int64)
    codes[:, 0], codes[:, 1] = unmorton(m, pos_bits)
    for j, model in enumerate(columns):
        codes[:, 2 + j] = model.decode(coder, n)
    col_size = 1 << col_bits
    for j in (1, 2):
        codes[:, 5 + j] += entropy.predict_color(codes[:, 5:8], j, predictors, col_size) - (col_size - 1)
    if ((codes[:, 5:8] < 0) | (codes[:, 5:8] > top[5:])).any():
        raise FormatError("corrupt payload (colors out of range)")
    if carrier_bits is None:
        return codes, None
    flag_model, *carrier_columns = _carrier_models(carrier_bits, carrier_models)
    flags = flag_model.decode(coder, n).astype(bool)
    symbols = np.zeros((int(flags.sum()), 3), np.int64)
    for j, model in enumerate(carrier_columns):
        symbols[:, j] = model.decode(coder, symbols.shape[0])
    carriers = np.zeros((n, 3), np.int64)
    carriers[flags] = symbols + carrier_limits(carrier_bits)[0]
    return codes, carriers
