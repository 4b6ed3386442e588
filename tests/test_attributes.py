"""The table of attribute groups: the layout it gives a file's rows, and the rooms that walk it."""

import numpy as np
import pytest

from gipp_jax import attributes, bitstream, codec, rate
from gipp_jax import quantize as q_lib
from gipp_jax.attributes import ATTRIBUTE_GROUPS, LEARNED_GROUPS, AttributeGroup


def test_the_groups_tile_a_row_of_codes_in_order():
    columns = [c for g in ATTRIBUTE_GROUPS for c in g.columns]
    assert columns == list(range(11))  # x y | a c | b | r g b | kx ky phi
    assert [g.name for g in LEARNED_GROUPS] == ["position", "cov_diag", "cov_off", "color"]
    assert attributes.GAUSSIAN_COLUMNS == 8
    with pytest.raises(ValueError, match="consecutive"):
        AttributeGroup("broken", (0, 2), "position")


def test_code_limits_and_raw_bits_by_hand():
    assert bitstream.code_limits((11, 6, 5)).tolist() == [2047, 2047, 63, 63, 63, 31, 31, 31]
    # Sized colors' codes reach the largest weight (4) times the levels.
    assert bitstream.code_limits((12, 7, 5), sized_colors=True).tolist() == [4095] * 2 + [127] * 3 + [124] * 3
    assert rate.raw_bits((12, 7, 5)) == 2 * 12 + 3 * 7 + 3 * 5


def test_the_header_order_by_hand_and_back():
    """Each learned group's scales then offsets, in column order; read back as the same quantizers."""
    floats = np.arange(1, 17, dtype=np.float32) / 16
    qs = q_lib.quantizers_from_parameters(floats, (12, 7, 5), correlation=True, arcsine=True)
    np.testing.assert_array_equal(qs.position.scale, floats[0:2])
    np.testing.assert_array_equal(qs.position.offset, floats[2:4])
    np.testing.assert_array_equal(qs.cov_diag.offset, floats[6:8])
    np.testing.assert_array_equal(qs.cov_off.scale, floats[8:9])
    np.testing.assert_array_equal(qs.color.offset, floats[13:16])
    assert (qs.position.bits, qs.cov_diag.bits, qs.cov_off.bits, qs.color.bits) == (12, 7, 7, 5)
    assert qs.cov_diag.log and qs.cov_off.arcsine and not qs.position.log and not qs.color.arcsine
    assert q_lib.depths_of(qs) == (12, 7, 5)
    np.testing.assert_array_equal(codec.header_floats(qs), floats)
    np.testing.assert_array_equal(q_lib.quantizer_levels(qs), [4095, 127, 127, 31])
    assert not q_lib.quantizers_from_parameters(floats, (12, 7, 5), correlation=False, arcsine=True).cov_off.arcsine


def test_a_files_rows_carry_the_carrier_columns_after_the_gaussians():
    codes = np.arange(16).reshape(2, 8)
    carriers = np.array([[0, 0, 0], [3, -2, 5]])
    data = bitstream.Encoded(4, 4, (12, 7, 5), np.zeros(16, np.float32), codes, carriers=carriers,
                             carrier_bits=(10, 6))
    rows = data.rows()
    np.testing.assert_array_equal(rows, np.concatenate([codes, carriers], axis=1))
    back = data.with_rows(rows + 1)
    np.testing.assert_array_equal(back.codes, codes + 1)
    np.testing.assert_array_equal(back.carriers, carriers + 1)
    low, high = bitstream.column_limits(data)
    assert low[8:].tolist() == [0, -512, 0] and high[8:].tolist() == [512, 512, 63]
    plain = bitstream.Encoded(4, 4, (12, 7, 5), np.zeros(16, np.float32), codes)
    assert plain.rows().shape == (2, 8) and bitstream.column_limits(plain)[1].shape == (8,)
    rows[0, 0] = -1  # a new array: changing it leaves the file alone
    assert data.codes[0, 0] == 0 and plain.rows() is not plain.codes
