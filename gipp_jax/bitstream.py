"""The ``.gipp`` file format: quantized Gaussians, entropy-coded.

Layout (little-endian)::

    magic "GIPP" | version u8 | reserved u8 | bits (position, covariance, color) 3 x u8
    height u32 | width u32 | count u32
    quantizers: 16 x f32 (position scale[2] offset[2], cov-diagonal scale[2] offset[2],
                          cov-off-diagonal scale offset, color scale[3] offset[3])
    code priors: 6 x (mean f32, std f32)   (a, c, b, r, g, b codes)
    payload length u32 | payload (range-coded 32-bit words) | CRC-32 u32 of all before it

Payload, coded with ``constriction``'s range coder (a well-kept Rust library) in one stream:

* Gaussians sorted by the Morton (Z-order) code of their quantized position; positions as
  the gaps between consecutive Morton codes, each gap as its bit length (an adaptive
  categorical over 0..2b) followed by the bits below its leading one (uniform). Sorting
  removes the order information, about log2(N!) / N bits per Gaussian.
* Covariance and color codes, one channel at a time, with a block-adaptive categorical:
  symbol counts so far plus a discretised-Gaussian prior (mean and std in the header)
  worth :data:`PRIOR_WEIGHT` observations, refreshed every :data:`BLOCK` symbols.

The rate we report is this file's size in bits over the image's pixels.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np

MAGIC = b"GIPP"
VERSION = 1
BLOCK = 64
PRIOR_WEIGHT = 32.0
MAX_SIDE = 1 << 16
_HEAD = struct.Struct("<4sBB3BIII")
_QUANT = struct.Struct("<16f")
_PRIORS = struct.Struct("<12f")
_LEN = struct.Struct("<I")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEAD.size + _QUANT.size + _PRIORS.size + _LEN.size
CODE_CHANNELS = 6  # a, c, b, r, g, b (columns 2..7 of the code matrix)


class FormatError(ValueError):
    """The bytes are not a valid ``.gipp`` file (truncated, corrupted or foreign)."""


@dataclasses.dataclass
class Encoded:
    """A decoded (or to-be-encoded) file: image size, bit depths, quantizer parameters
    (16 float32 in the header's order) and the (N, 8) int codes x, y, a, c, b, r, g, b."""

    height: int
    width: int
    bits: tuple[int, int, int]
    quantizers: np.ndarray
    codes: np.ndarray


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


def _prior(mean: float, std: float, size: int) -> np.ndarray:
    k = np.arange(size, dtype=np.float64)
    std = max(float(std), 0.5)
    p = np.exp(-0.5 * ((k - mean) / std) ** 2)
    p = p / p.sum() if np.isfinite(p).all() and p.sum() > 0 else np.full(size, 1.0 / size)
    return 0.98 * p + 0.02 / size  # heavy enough tails for any symbol


def _adaptive_blocks(size: int, prior: np.ndarray, n: int):
    """Yields ``(start, stop, row, counts)`` per block: the block's probability row, formed
    from ``counts`` (the caller adds each block's symbols to it before the next row). The
    encoder and the decoder walk the same sequence."""
    counts = np.zeros(size, np.float64)
    for start in range(0, n, BLOCK):
        row = (counts + PRIOR_WEIGHT * prior) / (counts.sum() + PRIOR_WEIGHT)
        yield start, min(n, start + BLOCK), row, counts


def _code_adaptive(coder, symbols: np.ndarray | None, size: int, prior: np.ndarray, n: int, decode: bool):
    import constriction

    model = constriction.stream.model.Categorical(perfect=False)
    out = np.zeros(n, np.int32)
    for start, stop, row, counts in _adaptive_blocks(size, prior, n):
        probs = np.tile(row, (stop - start, 1))
        if decode:
            block = np.asarray(coder.decode(model, probs), np.int32)
        else:
            block = symbols[start:stop].astype(np.int32)
            coder.encode(block, model, probs)
        out[start:stop] = block
        np.add.at(counts, block, 1.0)
    return out


def _code_raw(coder, values: np.ndarray | None, sizes: np.ndarray, decode: bool) -> np.ndarray:
    import constriction

    keep = sizes >= 2
    out = np.zeros(sizes.shape, np.int64)
    if not keep.any():
        return out
    model = constriction.stream.model.Uniform()
    if decode:
        out[keep] = np.asarray(coder.decode(model, sizes[keep].astype(np.int32)), np.int64)
    else:
        coder.encode(values[keep].astype(np.int32), model, sizes[keep].astype(np.int32))
        out[keep] = values[keep]
    return out


def encode(data: Encoded) -> bytes:
    """Serialises ``data`` (its codes in any order; they are sorted here)."""
    import constriction

    pos_bits, cov_bits, col_bits = data.bits
    codes = np.asarray(data.codes, np.int64)
    n = codes.shape[0]
    m = morton(codes[:, 0], codes[:, 1], pos_bits)
    order = np.argsort(m, kind="stable")
    codes, m = codes[order], m[order]
    gaps = np.diff(m, prepend=0)
    lengths = np.array([int(g).bit_length() for g in gaps], np.int64)
    sizes = np.where(lengths >= 2, 1 << np.maximum(lengths - 1, 0), 1)
    rest = gaps - np.where(lengths >= 1, 1 << np.maximum(lengths - 1, 0), 0)

    priors = np.zeros((CODE_CHANNELS, 2), np.float32)
    for j in range(CODE_CHANNELS):
        col = codes[:, 2 + j].astype(np.float64)
        priors[j] = (col.mean(), col.std()) if n else (0.0, 1.0)

    coder = constriction.stream.queue.RangeEncoder()
    length_alphabet = 2 * pos_bits + 1
    _code_adaptive(coder, lengths, length_alphabet, np.full(length_alphabet, 1.0 / length_alphabet), n, False)
    _code_raw(coder, rest, sizes, False)
    for j in range(CODE_CHANNELS):
        size = 1 << (cov_bits if j < 3 else col_bits)
        _code_adaptive(coder, codes[:, 2 + j], size, _prior(*priors[j], size), n, False)
    payload = np.asarray(coder.get_compressed(), np.uint32).astype("<u4").tobytes()

    head = (_HEAD.pack(MAGIC, VERSION, 0, pos_bits, cov_bits, col_bits, data.height, data.width, n)
            + _QUANT.pack(*np.asarray(data.quantizers, np.float32).tolist())
            + _PRIORS.pack(*priors.ravel().tolist())
            + _LEN.pack(len(payload)) + payload)
    return head + _CRC.pack(zlib.crc32(head))


def decode(blob: bytes) -> Encoded:
    """Parses a ``.gipp`` file; raises :class:`FormatError` with a one-line reason."""
    if blob[:4] != MAGIC:
        raise FormatError("not a .gipp file")
    if len(blob) < HEADER_BYTES + _CRC.size:
        raise FormatError("truncated .gipp file")
    body, (crc,) = blob[:-_CRC.size], _CRC.unpack(blob[-_CRC.size:])
    if zlib.crc32(body) != crc:
        raise FormatError("checksum mismatch: the file is corrupted or truncated")
    magic, version, _, pos_bits, cov_bits, col_bits, height, width, n = _HEAD.unpack_from(body, 0)
    if version != VERSION:
        raise FormatError(f"unsupported .gipp version {version}")
    if not (1 <= pos_bits <= 12 and 1 <= cov_bits <= 16 and 1 <= col_bits <= 16):
        raise FormatError("invalid bit depths")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or n > 16 * height * width + 16:
        raise FormatError("invalid image size or Gaussian count")
    offset = _HEAD.size
    quantizers = np.array(_QUANT.unpack_from(body, offset), np.float32)
    offset += _QUANT.size
    priors = np.array(_PRIORS.unpack_from(body, offset), np.float32).reshape(CODE_CHANNELS, 2)
    offset += _PRIORS.size
    (length,) = _LEN.unpack_from(body, offset)
    offset += _LEN.size
    if length % 4 or offset + length != len(body):
        raise FormatError("payload length does not match the file size")
    # Every Gaussian costs a few bits at least (each symbol's probability stays below
    # 0.99): a count far beyond the payload is a forged header, not a file to decode.
    if n > 64 * length + 64:
        raise FormatError("Gaussian count does not match the payload")
    if not (np.isfinite(quantizers).all() and np.isfinite(priors).all()):
        raise FormatError("invalid quantizer parameters")
    try:
        codes = _decode_payload(body[offset:], n, (pos_bits, cov_bits, col_bits), priors)
    except FormatError:
        raise
    except Exception as err:  # the entropy decoder's own complaints about garbage
        raise FormatError(f"corrupt payload ({type(err).__name__})") from None
    return Encoded(int(height), int(width), (pos_bits, cov_bits, col_bits), quantizers, codes)


def _decode_payload(payload: bytes, n: int, bits, priors) -> np.ndarray:
    import constriction

    pos_bits, cov_bits, col_bits = bits
    words = np.frombuffer(payload, "<u4").astype(np.uint32)
    coder = constriction.stream.queue.RangeDecoder(words)
    length_alphabet = 2 * pos_bits + 1
    lengths = _code_adaptive(coder, None, length_alphabet,
                             np.full(length_alphabet, 1.0 / length_alphabet), n, True).astype(np.int64)
    sizes = np.where(lengths >= 2, 1 << np.maximum(lengths - 1, 0), 1)
    rest = _code_raw(coder, None, sizes, True)
    gaps = np.where(lengths >= 1, (1 << np.maximum(lengths - 1, 0)) + rest, 0)
    m = np.cumsum(gaps)
    if n and m[-1] >= (1 << (2 * pos_bits)):
        raise FormatError("corrupt payload (positions out of range)")
    codes = np.zeros((n, 8), np.int64)
    codes[:, 0], codes[:, 1] = unmorton(m, pos_bits)
    for j in range(CODE_CHANNELS):
        size = 1 << (cov_bits if j < 3 else col_bits)
        codes[:, 2 + j] = _code_adaptive(coder, None, size, _prior(*priors[j], size), n, True)
    return codes
