"""Carriers in the codec: the quantizer's grid by hand, the straight-through gradient, the
file format (round trip, plain files as before, malformed fields), the decoder's render
against the dense reference, and the refinement of carrier codes."""

import dataclasses
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipp_jax import bitstream
from gipp_jax import quantize as q_lib
from gipp_jax.codec import decode_image, file_carriers, file_gaussians
from gipp_jax.parameterization import triple_to_matrix
from gipp_jax.raster.dense import render_dense
from gipp_jax.refine import refine_codes

H, W = 28, 40
GRID = q_lib.CarrierQuantizer(frequency_bits=6, phase_bits=4)  # steps of 1/64 cycle/px and pi/8


def test_carrier_codes_by_hand():
    carriers = jnp.array([[0.1, 0.2, 1.0],     # kept: 6.4 -> 6, 12.8 -> 13, 1.0 / (pi/8) = 2.55 -> 3
                          [-0.1, 0.2, 1.0],    # the same atom as (0.1, -0.2, -1.0): kx >= 0
                          [0.0, -0.25, 0.5],   # kx = 0: ky >= 0, the phase negated (-1.27 -> -1 = 15)
                          [0.004, -0.25, 0.5],  # kx rounds to 0: made canonical after rounding
                          [0.9, 0.0, 3.3],     # beyond Nyquist: clipped; 3.3 / (pi/8) = 8.4 -> 8 = -pi
                          [0.0, 0.0, 0.0]])    # the plain Gaussian
    codes = np.asarray(q_lib.carrier_codes(GRID, carriers))
    np.testing.assert_array_equal(codes, [[6, 13, 3], [6, -13, 13], [0, 16, 15], [0, 16, 15], [32, 0, 8],
                                          [0, 0, 0]])
    values = np.asarray(q_lib.carriers_from_codes(GRID, codes))
    step = np.pi / 8
    np.testing.assert_allclose(values[:3], [[6 / 64, 13 / 64, 3 * step], [6 / 64, -13 / 64, -3 * step],
                                            [0, 0.25, -step]], rtol=1e-6)
    assert values[4, 2] == pytest.approx(-np.pi) and not values[5].any()


def test_fake_quantized_carriers_pass_the_gradient_through_the_sign():
    carriers = jnp.array([[0.1, 0.2, 1.0], [-0.1, 0.2, 1.0]])
    w = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    grad = jax.grad(lambda c: jnp.sum(w * q_lib.fake_quantize_carriers(GRID, c)))(carriers)
    np.testing.assert_allclose(grad, [[1, 2, 3], [-4, -5, -6]])  # the second row is drawn negated
    np.testing.assert_allclose(q_lib.fake_quantize_carriers(GRID, carriers),
                               q_lib.carriers_from_codes(GRID, q_lib.carrier_codes(GRID, carriers)))


def scene(rng, n, textured):
    """A file of ``n`` Gaussians of 6-13 px^2, the first ``textured`` with a carrier."""
    floats = np.array([W / 1023, H / 1023, 0, 0, 0.02, 0.02, 0, 0, 0.012, -0.75,
                       0.05, 0.05, 0.05, -0.4, -0.4, -0.4], np.float16).astype(np.float32)
    codes = np.stack([rng.integers(100, 900, n), rng.integers(100, 900, n), rng.integers(90, 128, n),
                      rng.integers(90, 128, n), rng.integers(50, 75, n), rng.integers(10, 22, n),
                      rng.integers(10, 22, n), rng.integers(10, 22, n)], 1)
    carriers = np.zeros((n, 3), np.int64)
    carriers[:textured] = np.stack([rng.integers(4, 20, textured), rng.integers(-20, 20, textured),
                                    rng.integers(0, 16, textured)], 1)
    return bitstream.Encoded(H, W, (10, 7, 5), floats, codes, True, True, None, carriers,
                             (GRID.frequency_bits, GRID.phase_bits))


def sort_rows(a):
    return a[np.lexsort(a.T[::-1])]


def test_a_carrier_file_round_trips_and_renders_as_the_dense_reference():
    data = scene(np.random.default_rng(0), 40, 15)
    blob = bitstream.encode(data)
    back = bitstream.decode(blob)
    assert blob[4] == bitstream.VERSION == 7 and back.carrier_bits == (6, 4) and back.num_carriers == 15
    np.testing.assert_array_equal(sort_rows(np.concatenate([back.codes, back.carriers], 1)),
                                  sort_rows(np.concatenate([data.codes, data.carriers], 1)))
    costs = bitstream.cost_breakdown(data)
    assert set(costs) == set(bitstream.CHANNELS) | set(bitstream.CARRIER_CHANNELS) | {"header"}
    # The payload is the channels' sum within the range coder's few words.
    assert abs(sum(costs.values()) - 8 * len(blob)) < 64
    means, cov3, colors = file_gaussians(back)
    carriers = file_carriers(back)
    dense = render_dense(jnp.asarray(means), triple_to_matrix(jnp.asarray(cov3)), jnp.asarray(colors), H, W,
                         carriers=jnp.asarray(carriers))
    np.testing.assert_allclose(decode_image(blob), np.clip(dense, 0, 1), atol=2e-5)
    assert np.abs(decode_image(blob) - decode_image(bitstream.encode(dataclasses.replace(
        data, carriers=None, carrier_bits=None)))).max() > 0.05  # the carriers are drawn


def test_a_plain_primitive_costs_a_fraction_of_a_bit_and_plain_files_are_unchanged():
    data = scene(np.random.default_rng(1), 400, 40)
    plain = dataclasses.replace(data, carriers=None, carrier_bits=None)
    costs = bitstream.cost_breakdown(data)
    entropy = 400 * -(0.1 * np.log2(0.1) + 0.9 * np.log2(0.9))  # one in ten with a carrier: 0.47 bits each
    # The first block of 64 is coded at the prior's even odds: 0.09 bits each over the entropy here.
    assert entropy < costs["carrier flag"] < entropy + 0.1 * 400
    assert {k: v for k, v in costs.items() if k in bitstream.CHANNELS} == {
        k: v for k, v in bitstream.cost_breakdown(plain).items() if k in bitstream.CHANNELS}
    blob = bitstream.encode(plain)
    assert blob[4] == bitstream.PLAIN_VERSION and bitstream.decode(blob).carriers is None
    # A file whose primitives all lost their carriers is still a file with carriers' flags.
    assert bitstream.decode(bitstream.encode(dataclasses.replace(data, carriers=0 * data.carriers))).num_carriers == 0


def _forged(blob: bytes, offset: int, value: bytes) -> bytes:
    body = blob[:offset] + value + blob[offset + len(value):-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_malformed_carrier_field_is_a_format_error(tmp_path, capsys):
    from gipp_jax.cli import main
    data = scene(np.random.default_rng(2), 12, 5)
    blob = bitstream.encode(data)
    # The carrier block (frequency bits, phase bits, 6 model bytes) ends the header, before the payload.
    at = bitstream.header_bytes(H, W, 12, carriers=True) - 4 - 8
    assert blob[at:at + 2] == bytes([6, 4])
    for value, message in ((bytes([0]), "invalid carrier depths"), (bytes([17]), "invalid carrier depths"),
                           (bytes([6, 13]), "invalid carrier depths")):
        with pytest.raises(bitstream.FormatError, match=message):
            bitstream.decode(_forged(blob, at, value))
    with pytest.raises(bitstream.FormatError, match="unknown flags"):
        bitstream.decode(_forged(blob, 8, bytes([blob[8] | 16])))
    with pytest.raises(bitstream.FormatError, match="unknown flags"):  # carriers in a version 6 file
        bitstream.decode(_forged(blob, 4, bytes([6])))
    # Payload garbage where the carriers are: a format error, never a crash.
    for cut in range(4, 20, 4):
        body = blob[:-4 - cut]
        try:
            bitstream.decode(body + struct.pack("<I", zlib.crc32(body)))
        except bitstream.FormatError:
            pass
    path = tmp_path / "bad.gipp"
    path.write_bytes(_forged(blob, at, bytes([0])))
    assert main(["decompress", str(path), "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid carrier depths" in err
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(ValueError, match="carrier codes outside"):
        bitstream.encode(dataclasses.replace(data, carriers=data.carriers + [0, 0, 16]))


def test_refinement_recovers_the_carrier_codes_of_the_target():
    truth = scene(np.random.default_rng(3), 2, 1)
    # A textured primitive on a wider, brighter plain one: the image stays within [0, 1].
    truth.codes[:, :2] = [600, 500]
    truth.codes[0, 2:8] = [100, 102, 60, 12, 13, 11]
    truth.codes[1, 2:8] = [124, 124, 62, 21, 21, 21]
    truth.carriers[0] = [8, 5, 3]
    target = decode_image(bitstream.encode(truth))
    means, cov3, colors = file_gaussians(truth)
    raw = render_dense(jnp.asarray(means), triple_to_matrix(jnp.asarray(cov3)), jnp.asarray(colors), H, W,
                       carriers=jnp.asarray(file_carriers(truth)))
    assert np.abs(np.asarray(raw) - target).max() < 1e-5  # nothing clamped
    for column, step in ((0, 1), (0, -1), (1, -1), (1, 1), (2, 1), (2, -1), (2, -5)):  # the phase wraps
        start = truth.carriers.copy()
        start[0, column] = (start[0, column] + step) % 16 if column == 2 else start[0, column] + step
        start_data = dataclasses.replace(truth, carriers=start)
        refined = refine_codes(start_data, target, sweeps=3 if step == -5 else 2)
        assert np.sum(np.square(decode_image(bitstream.encode(refined)) - target)) < np.sum(
            np.square(decode_image(bitstream.encode(start_data)) - target))
        if abs(step) == 1:
            np.testing.assert_array_equal(refined.carriers, truth.carriers)
            np.testing.assert_array_equal(refined.codes, truth.codes)
